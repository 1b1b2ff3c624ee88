"""recserve_operator.diffbase: kopf's essence, built without copying what it drops."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from recserve_operator.diffbase import LeanDiffBaseStorage

pytestmark = pytest.mark.unit

PREFIX = "recserve.io"


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "m-cpu",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 3,
            "labels": {"recserve.io/model": "m"},
            "annotations": {
                "recserve.io/applied-hash": "abc",
                f"{PREFIX}/last-handled-configuration": '{"spec": {}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "other.io/note": "kept",
            },
            "ownerReferences": [{"kind": "RecModel", "name": "m", "uid": "u-0"}],
            "managedFields": [{"manager": "recserve", "fieldsV1": {"f:spec": {"f:x": {}}}}] * 20,
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "server"}]}}},
        "status": {"readyReplicas": 2, "conditions": [{"type": "Available"}] * 5},
    }


def _replica_set() -> dict[str, Any]:
    body = _deployment()
    body["kind"] = "ReplicaSet"
    body["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "m-cpu", "uid": "u"}]
    body["metadata"]["annotations"][f"{PREFIX}/last-handled-configuration-ofDRS"] = "{}"
    return body


@pytest.mark.parametrize("raw", [_deployment(), _replica_set(), {"spec": {"a": 1}}, {}])
def test_the_essence_is_kopfs(raw: dict[str, Any]) -> None:
    """Same essence as kopf's own storage, for a child, a Deployment's ReplicaSet (kopf
    marks its key there), a body with no metadata, and an empty one."""
    ours = LeanDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(copy.deepcopy(raw)))
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(raw))
    assert ours == theirs
    assert "status" not in ours


def test_the_essence_is_a_copy() -> None:
    """Changing the body afterwards does not change the essence (kopf compares them)."""
    raw = _deployment()
    essence = LeanDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(raw))
    raw["spec"]["template"]["spec"]["containers"][0]["name"] = "changed"
    raw["metadata"]["labels"]["recserve.io/model"] = "changed"
    assert essence["spec"]["template"]["spec"]["containers"][0]["name"] == "server"
    assert essence["metadata"]["labels"]["recserve.io/model"] == "m"


def test_extra_fields_are_kept_from_the_whole_body() -> None:
    """A handler that asks for a status field gets it, as with kopf's storage."""
    raw = _deployment()
    fields = [("status", "readyReplicas")]
    ours = LeanDiffBaseStorage(prefix=PREFIX).build(body=kopf.Body(raw), extra_fields=fields)
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX).build(
        body=kopf.Body(raw), extra_fields=fields
    )
    assert ours == theirs and ours["status"] == {"readyReplicas": 2}


def test_the_operator_uses_it() -> None:
    """The operator's kopf settings install it, under the operator's own prefix."""
    from recserve_operator.settings import PROGRESS_ANNOTATION_PREFIX, configure

    settings = kopf.OperatorSettings()
    configure(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, LeanDiffBaseStorage)
    assert storage.prefix == PROGRESS_ANNOTATION_PREFIX
