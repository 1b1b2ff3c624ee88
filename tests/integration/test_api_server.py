"""The generated CRDs on a real API server: examples accepted, bad manifests rejected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from recserve_operator.api import GROUP, VERSION, kind_for
from tests.manifests import BAD_CASES, BadCase, example, examples


def _create(k8s: client.ApiClient, doc: dict[str, Any], namespace: str, dry_run: bool) -> Any:
    api = client.CustomObjectsApi(k8s)
    kind = kind_for(doc["kind"])
    extra = {"dry_run": "All"} if dry_run else {}
    if kind.namespaced:
        doc["metadata"]["namespace"] = namespace
        return api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, kind.plural, doc, **extra
        )
    return api.create_cluster_custom_object(GROUP, VERSION, kind.plural, doc, **extra)


def test_examples_are_accepted_and_defaulted(
    k8s: client.ApiClient, crds: list[str], namespace: str
) -> None:
    for doc in examples().values():
        created = _create(k8s, doc, namespace, dry_run=True)
        assert created["metadata"]["name"] == doc["metadata"]["name"]
    policy = _create(k8s, example("latency-first"), namespace, dry_run=False)
    # defaults from the schema are applied by the server, e.g. a field left out
    del_doc = example("latency-first")
    del_doc["metadata"]["name"] = "defaults-only"
    del_doc["spec"] = {}
    defaulted = _create(k8s, del_doc, namespace, dry_run=False)
    assert defaulted["spec"]["objectives"]["p99LatencyTargetMilliseconds"] == 25
    assert defaulted["spec"]["autoscaling"]["maxReplicas"] == 8
    assert policy["spec"]["autoscaling"]["maxReplicas"] == 6


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c.server_rejects], ids=lambda c: c.id)
@pytest.mark.fault(
    "bad custom resources (float in spec, negative replicas, immutable field changed, ...)",
    expect="refused at admission with the field path",
)
def test_bad_manifest_is_rejected_by_the_api_server(
    k8s: client.ApiClient, crds: list[str], namespace: str, case: BadCase
) -> None:
    doc = case.document()
    doc["metadata"]["name"] = f"bad-{case.id}"[:63]
    with pytest.raises(ApiException) as caught:
        _create(k8s, doc, namespace, dry_run=True)
    assert caught.value.status == 422, caught.value.body
    message = json.loads(caught.value.body)["message"]
    assert case.path in message, message


def test_model_digest_is_immutable_once_set(
    k8s: client.ApiClient, crds: list[str], namespace: str
) -> None:
    doc = example("movielens-dlrm")
    doc["spec"]["source"] = {
        "uri": "/artifacts/models/m.onnx",
        "format": "onnx",
        "featureSpecUri": "/artifacts/models/spec.yaml",
        "sha256": "a" * 64,
    }
    _create(k8s, doc, namespace, dry_run=False)
    api = client.CustomObjectsApi(k8s)
    for new in ("b" * 64, None):
        patch = {"spec": {"source": {"sha256": new}}}
        with pytest.raises(ApiException) as caught:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels", "movielens-dlrm", patch
            )
        assert caught.value.status == 422
        assert "spec.source.sha256" in json.loads(caught.value.body)["message"]
    # other fields stay editable
    api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "recmodels",
        "movielens-dlrm",
        {"spec": {"traffic": {"expectedRequestsPerSecond": 300}}},
    )


def test_printer_columns_show_in_kubectl(
    local_cluster: Any, crds: list[str], namespace: str
) -> None:
    local_cluster.kubectl_apply(
        [{**example("latency-first"), "metadata": {"name": "p", "namespace": namespace}}]
    )
    out = local_cluster.kubectl("get", "optimizationpolicies", "-n", namespace)
    assert out.split()[:4] == ["NAME", "P99TARGET", "ACCURACYBUDGETBP", "AGE"]
    assert out.splitlines()[1].split()[:3] == ["p", "25", "100"]
