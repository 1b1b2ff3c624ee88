"""The kind path, as a user meets it (`make test-kind`, after `make kind-up`): the chart's
CRDs refuse bad custom resources, the restricted Pod Security profile is enforced and
the operator's pods pass it, and the examples become a Ready RecModel whose router
answers ranking requests from outside the cluster, with the operator pod killed
mid-build on the way.

Everything here is real: kind nodes (podman containers running kubelet and containerd),
the project's images, the chart, an in-cluster Prometheus. Nothing is skipped: without a
kind cluster these tests fail (`make test-kind` makes one first)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from recserve_dev.kindcluster import STORE_ON_HOST, KindCluster
from recserve_dev.localcluster.access import api_client
from recserve_operator import children
from recserve_operator.api import GROUP, VERSION, HardwarePool, OptimizationPolicy, kind_for
from tests.helpers import OPERATOR_PODS, eventually, restart_operator
from tests.manifests import BAD_CASES, BadCase, example

NAMESPACE = "recserve-kind-e2e"
OPERATOR_NS = "recserve-system"
MODEL = "movielens-dlrm"
POOL_OF_HARDWARE = {"gpu": "gpu-pool", "fpga": "fpga-pool", "cpu": "cpu-pool"}
# Measured on 2 cores (README, "Try it on kind"): build (--quick) plus three profile
# Jobs one after another plus server starts.
READY_S = 1500


@pytest.fixture(scope="module")
def kind() -> KindCluster:
    return KindCluster.attach()


@pytest.fixture(scope="module")
def api(kind: KindCluster) -> client.ApiClient:
    return api_client(kind.kubeconfig)


@pytest.fixture(scope="module")
def model_namespace(api: client.ApiClient) -> Iterator[str]:
    """The namespace the examples run in. It does not enforce the restricted profile:
    this cluster's artifact store is a hostPath (kind-config.yaml's extraMounts), which
    that profile refuses (documented; tests/integration/test_pod_security.py). The next
    test checks the profile's enforcement on this cluster with a PVC store instead."""
    core = client.CoreV1Api(api)
    try:
        core.delete_namespace(NAMESPACE)
        eventually(
            lambda: NAMESPACE not in [n.metadata.name for n in core.list_namespace().items],
            timeout=180,
            what=f"namespace {NAMESPACE} from an earlier run deleted",
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
    # The store is a host folder that outlives clusters, and builds are content-addressed:
    # an earlier run's variants would be reused, with no build Job to kill mid-build.
    shutil.rmtree(STORE_ON_HOST / NAMESPACE, ignore_errors=True)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    yield NAMESPACE
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "recmodels", MODEL)
    core.delete_namespace(NAMESPACE)


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c.server_rejects], ids=lambda c: c.id)
def test_the_crds_refuse_bad_custom_resources(api: client.ApiClient, case: BadCase) -> None:
    """The CRDs the chart installed validate as the local control plane's do."""
    custom = client.CustomObjectsApi(api)
    doc = case.document()
    doc["metadata"]["name"] = f"bad-{case.id}"[:63]
    crd = kind_for(doc["kind"])
    with pytest.raises(ApiException) as caught:
        if crd.namespaced:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, "default", crd.plural, doc, dry_run="All"
            )
        else:
            custom.create_cluster_custom_object(GROUP, VERSION, crd.plural, doc, dry_run="All")
    assert caught.value.status == 422, caught.value.body
    assert case.path in json.loads(caught.value.body)["message"]


def test_restricted_pod_security_is_enforced_and_our_pods_pass_it(api: client.ApiClient) -> None:
    """kind's API server enforces the restricted profile where a namespace asks: a root
    pod is refused, the operator's server, router and build pod templates (PVC store)
    are admitted."""
    from tests.integration.test_pod_security import PVC_STORE, _admitted, _model, _pod

    core = client.CoreV1Api(api)
    name = f"{NAMESPACE}-restricted"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
    try:
        root = {
            "metadata": {"name": "root-pod", "namespace": name},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        }
        refusal = _admitted(api, root)
        assert refusal is not None and "restricted" in refusal
        model = _model(name)
        pool = HardwarePool.model_validate(example("gpu-pool"))
        policy = OptimizationPolicy.model_validate(example("latency-first"))
        for obj in (
            children.server_deployment(model, pool, "/artifacts/v", "int8", 1, 64, 25, PVC_STORE),
            children.router_deployment(model, PVC_STORE),
            children.build_job(model, "0123456789abcdef", policy, PVC_STORE),
        ):
            assert _admitted(api, _pod(obj["spec"]["template"], name)) is None
    finally:
        core.delete_namespace(name)


@pytest.mark.timeout(READY_S + 600)
def test_examples_become_a_served_model_on_kind(
    kind: KindCluster, api: client.ApiClient, model_namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    batch = client.BatchV1Api(api)
    for name in POOL_OF_HARDWARE.values():
        pool = example(name)
        try:
            custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
        except ApiException as exc:
            assert exc.status == 409, exc.body  # the demo's pools, or an earlier run's
    policy = example("latency-first")
    policy["metadata"]["namespace"] = model_namespace
    custom.create_namespaced_custom_object(
        GROUP, VERSION, model_namespace, "optimizationpolicies", policy
    )
    model = example(MODEL)
    model["metadata"]["namespace"] = model_namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, model_namespace, "recmodels", model)

    def build_jobs() -> list[Any]:
        jobs = batch.list_namespaced_job(
            model_namespace, label_selector="app.kubernetes.io/component=build"
        ).items
        return list(jobs)

    eventually(build_jobs, timeout=120, interval=1, what="the operator created the build Job")
    # Killed mid-build: the new operator pod resumes without a second build Job.
    restart_operator(core, OPERATOR_NS, timeout=180)

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, model_namespace, "recmodels", MODEL
        )
        conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
        ready_condition = conditions.get("Ready", {})
        return dict(obj) if ready_condition.get("status") == "True" else None

    started = time.monotonic()
    found = eventually(
        ready,
        timeout=READY_S,
        interval=5,
        what=f"{MODEL} Ready on kind",
        state=lambda: custom.get_namespaced_custom_object(
            GROUP, VERSION, model_namespace, "recmodels", MODEL
        ).get("status"),
    )
    assert found is not None
    obj = found
    print(f"\n{MODEL} Ready {time.monotonic() - started:.0f} s after the operator restart")
    assert len(build_jobs()) == 1

    # Each pool's servers run on that pool's hardware.
    nodes = {n.metadata.name: n.metadata.labels for n in core.list_node().items}
    servers = core.list_namespaced_pod(
        model_namespace, label_selector="app.kubernetes.io/component=server"
    ).items
    assert servers
    for pod in servers:
        hardware = nodes[pod.spec.node_name].get("recserve.io/hardware")
        assert POOL_OF_HARDWARE[hardware] == pod.metadata.labels["recserve.io/pool"], (
            pod.metadata.name
        )
    placed = {p["pool"] for p in obj["status"]["placements"]}
    assert placed == {pod.metadata.labels["recserve.io/pool"] for pod in servers}

    # The router answers a ranking request from this machine (NodePort on a node).
    from recserve_dev.testmodel import rank_bodies
    from recserve_runtime.artifacts import load_manifest

    variant = custom.get_namespaced_custom_object(
        GROUP,
        VERSION,
        model_namespace,
        "modelvariants",
        obj["status"]["placements"][0]["variant"],
    )
    manifest = load_manifest(
        STORE_ON_HOST / variant["spec"]["artifact"]["uri"].removeprefix("/artifacts/")
    )
    body = rank_bodies(manifest, count=1, candidates=32)[0]
    service = {
        "metadata": {"name": f"{MODEL}-router-kind-e2e"},
        "spec": {
            "type": "NodePort",
            "selector": {"recserve.io/model": MODEL, "app.kubernetes.io/component": "router"},
            "ports": [{"port": 8080, "targetPort": 8080}],
        },
    }
    created = core.create_namespaced_service(model_namespace, service)
    url = f"http://{kind.node_address()}:{created.spec.ports[0].node_port}/v1/rank"

    def scores() -> list[float]:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            answer = json.load(resp)
        items = answer["items"] if "items" in answer else answer["scores"]
        return [item["score"] if isinstance(item, dict) else item for item in items]

    ranked = eventually(scores, timeout=60, interval=1, what=f"a ranking from {url}")
    assert len(ranked) == 32 and ranked == sorted(ranked, reverse=True)

    # The operator pod that finished the job is the restarted one, under the chart's
    # ServiceAccount, and it is the only one.
    operators = core.list_namespaced_pod(OPERATOR_NS, label_selector=OPERATOR_PODS).items
    assert len(operators) == 1 and operators[0].spec.service_account_name
