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
from tests.manifests import REPO

pytest_plugins = ["tests.reliability"]  # the fault marker and `measured` (docs/reliability.md)

# The console scripts under test (recserve, recserve-operator) are the ones installed
# beside this interpreter, even when its venv is not activated (`.venv/bin/python -m
# pytest`): tests and the pods they start find them first on PATH.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])


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
