"""Operator and runtime pods are admitted where the `restricted` profile is enforced."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from recserve_operator import children
from recserve_operator.api import HardwarePool, OptimizationPolicy, RecModel
from recserve_operator.config import ArtifactStore, OperatorConfig
from tests.manifests import REPO, example

PVC_STORE = OperatorConfig(store=ArtifactStore.from_uri("pvc://recserve-artifacts"))


@pytest.fixture()
def restricted(k8s: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(k8s)
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    yield name
    core.delete_namespace(name)


def _pod(template: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": template["spec"],
    }


def _admitted(k8s: client.ApiClient, pod: dict[str, Any]) -> str | None:
    """None when a dry-run create is admitted, else the API server's refusal."""
    core, ns = client.CoreV1Api(k8s), pod["metadata"]["namespace"]
    account = pod["spec"].get("serviceAccountName")
    if account:  # the pod's ServiceAccount must exist for admission to get that far
        try:
            core.create_namespaced_service_account(ns, {"metadata": {"name": account}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def attempt() -> str | None:
        try:
            core.create_namespaced_pod(ns, pod, dry_run="All")
        except ApiException as exc:
            return str(exc.body)
        return None

    # admission sees a new ServiceAccount through a cache: retry until it does
    refusal = attempt()
    for _ in range(40):
        if refusal is None or "serviceaccount" not in refusal:
            break
        time.sleep(0.5)
        refusal = attempt()
    return refusal


def _model(namespace: str) -> RecModel:
    doc = example("movielens-dlrm")
    doc["metadata"].update(namespace=namespace, uid="0")
    return RecModel.model_validate(doc)


@pytest.mark.fault(
    "a namespace enforcing the restricted pod security profile", expect="runtime pods admitted"
)
def test_runtime_pods_pass_the_restricted_profile(k8s: client.ApiClient, restricted: str) -> None:
    model = _model(restricted)
    pool = HardwarePool.model_validate(example("gpu-pool"))
    server = children.server_deployment(model, pool, "/artifacts/v", "int8", 1, 64, 25, PVC_STORE)
    router = children.router_deployment(model, PVC_STORE)
    policy = OptimizationPolicy.model_validate(example("latency-first"))
    build = children.build_job(model, "0123456789abcdef", policy, PVC_STORE)
    for obj in (server, router, build):
        template = obj["spec"]["template"]
        assert _admitted(k8s, _pod(template, restricted)) is None, obj["metadata"]["name"]


def test_host_path_store_is_refused_there_as_documented(
    k8s: client.ApiClient, restricted: str
) -> None:
    local = OperatorConfig(store=ArtifactStore.from_uri("/var/lib/recserve-artifacts"))
    pool = HardwarePool.model_validate(example("cpu-pool"))
    server = children.server_deployment(
        _model(restricted), pool, "/artifacts/v", "int8", 1, 64, 25, local
    )
    refusal = _admitted(k8s, _pod(server["spec"]["template"], restricted))
    assert refusal is not None and "hostPath" in refusal


@pytest.mark.fault(
    "the operator in a namespace enforcing the restricted profile", expect="admitted"
)
def test_operator_pod_passes_the_restricted_profile(
    local_cluster: Any, k8s: client.ApiClient, restricted: str
) -> None:
    rendered = subprocess.run(
        [str(local_cluster.tools.helm), "template", "recserve", str(REPO / "charts" / "recserve"),
         "-n", restricted],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    assert _admitted(k8s, _pod(deployment["spec"]["template"], restricted)) is None
