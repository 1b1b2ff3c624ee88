"""Shared fixtures: the local control plane (session), a fresh namespace per test.

The cluster is started lazily, only for tests that ask for it. To reuse a cluster
started with `make cluster-up` (faster while developing), set
RECSERVE_TEST_CLUSTER_ROOT=.cluster; the guard still refuses anything that is not a
recserve local cluster.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually
from tests.machine_share import machine_share
from tests.manifests import REPO

# the fault marker and `measured` (docs/reliability.md); pytester for the plugin's tests
pytest_plugins = ["tests.reliability", "pytester"]

# The console scripts under test (recserve, recserve-operator) are the ones installed
# beside this interpreter, even when its venv is not activated (`.venv/bin/python -m
# pytest`): tests and the pods they start find them first on PATH.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])

# The longest test files, longest first (seconds on two cores, stop 30's CI). Under
# pytest-xdist (`make test` runs two workers, a whole file to one worker) a long file
# that started last would run alone at the end; started first, the short ones fill the
# other worker meanwhile.
LONGEST_FIRST = (
    "tests/integration/test_autoscaling.py",  # ~980 s
    "tests/e2e/test_full_loop.py",  # ~330 s
    "tests/integration/test_api_faults.py",  # ~150 s
    "tests/integration/test_serving_capacity.py",  # ~125 s
)


def _pod_ip_blocks_for_this_worker() -> None:
    """Each xdist worker runs its own local cluster: give each a disjoint range of pod
    address blocks, so that two clusters never hand out the same pod IP and port."""
    from recserve_dev.localcluster.agent import IP_BLOCKS_ENV, ip_block_share

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or IP_BLOCKS_ENV in os.environ:
        return
    os.environ[IP_BLOCKS_ENV] = ip_block_share(int(worker.removeprefix("gw")), count)


_pod_ip_blocks_for_this_worker()


@pytest.fixture(autouse=True)
def _machine_share(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, a test marked ``alone`` (it measures this machine's speed) runs
    while no other worker runs a test; the rest share the machine."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    # every worker's base temp is a folder of the run's: their parent is the run's
    with machine_share(tmp_path_factory.getbasetemp().parent, exclusive=alone):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and for the rest, the usual order


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from recserve_dev.localcluster.cluster import LocalCluster
    from recserve_dev.localcluster.tools import find_tools

    existing = os.environ.get("RECSERVE_TEST_CLUSTER_ROOT")
    if existing:
        cluster = LocalCluster.attach(Path(existing))
        cluster.tools = find_tools()
        yield cluster
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), find_tools())
    cluster.start(timeout=180)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def k8s(local_cluster: object) -> object:
    """An ApiClient for the test cluster, after the guard has checked it is one."""
    from recserve_dev.localcluster.access import api_client, assert_test_cluster

    api = api_client(local_cluster.admin_kubeconfig)  # type: ignore[attr-defined]
    expected = local_cluster.state.cluster_id  # type: ignore[attr-defined]
    assert_test_cluster(api, expected)
    return api


@pytest.fixture()
def namespace(k8s: object) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    from kubernetes import client

    core = client.CoreV1Api(k8s)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(lambda: core.read_namespaced_service_account("default", name), timeout=30)
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def crds(local_cluster: Any, k8s: Any) -> list[str]:
    """Apply the generated CRDs and wait until each is Established."""
    local_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    from kubernetes import client

    ext = client.ApiextensionsV1Api(k8s)
    names = [
        "recmodels.recserve.io",
        "hardwarepools.recserve.io",
        "optimizationpolicies.recserve.io",
        "modelvariants.recserve.io",
    ]

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    eventually(established, timeout=30)
    return names
