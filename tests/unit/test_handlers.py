"""The kopf boundary: API errors become kopf errors that match whether they can heal;
one pass per RecModel at a time; children move their owner only when it matters; the
facade reads what kopf's watches saw."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from recserve_operator import children, handlers
from recserve_operator.handlers import api_errors_typed
from recserve_operator.kube import APPLIED_HASH, SHARED, Kube

pytestmark = pytest.mark.unit


def _error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.headers = headers or {}
    return exc


def test_forbidden_fails_at_once() -> None:
    with pytest.raises(kopf.PermanentError, match="not allowed"), api_errors_typed():
        raise _error(403)


@pytest.mark.parametrize("status", [409, 429, 500, 503])
@pytest.mark.fault(
    "a concurrent edit during a status write (409), 429, 5xx",
    expect="re-read and retried; the user's edit survives",
)
def test_conflicts_throttling_and_server_errors_are_retried(status: int) -> None:
    with pytest.raises(kopf.TemporaryError) as caught, api_errors_typed():
        raise _error(status, {"Retry-After": "7"} if status == 429 else None)
    assert caught.value.delay == (7.0 if status == 429 else 5.0)


def test_not_found_and_other_errors_pass_through() -> None:
    with pytest.raises(ApiException), api_errors_typed():
        raise _error(404)


# -- one pass per model at a time ---------------------------------------------------------


class _Models:
    """Stands in for the RecModel reads of a pass (a kopf index, or a GET)."""

    def __init__(self) -> None:
        self.generation = 1

    def get_custom(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        assert plural == "recmodels"
        return {"metadata": {"name": name, "namespace": namespace, "generation": self.generation}}


def test_a_pass_asked_for_while_one_runs_is_folded_into_one_rerun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = _Models()
    monkeypatch.setitem(handlers._state, "kube", models)
    passes = handlers.Passes()
    seen: list[int] = []

    def one_pass(raw: dict[str, Any], _target: Any) -> None:
        seen.append(raw["metadata"]["generation"])
        if len(seen) == 1:  # while the first pass runs, three more are asked for
            models.generation = 2
            for _ in range(3):
                passes.run("ns/m", None, None)

    monkeypatch.setattr(handlers, "_pass", one_pass)
    passes.run("ns/m", {"metadata": {"name": "m", "namespace": "ns", "generation": 1}}, None)
    assert seen == [1, 2]  # one re-run, from a fresh read
    assert (passes.passes, passes.folded) == (2, 3)
    assert passes.seconds_since("ns/m") < 5
    assert passes.seconds_since("ns/other") == float("inf")


def test_a_failed_pass_lets_the_next_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(handlers._state, "kube", _Models())
    passes = handlers.Passes()

    def failing(raw: dict[str, Any], _target: Any) -> None:
        raise kopf.TemporaryError("API answered 503; retrying", delay=5)

    monkeypatch.setattr(handlers, "_pass", failing)
    for _ in range(2):  # not left "running": the second is tried, not folded
        with pytest.raises(kopf.TemporaryError):
            passes.run("ns/m", None, None)
    assert passes.folded == 0


def _model(generation: int) -> kopf.Body:
    return kopf.Body({"metadata": {"name": "m", "namespace": "ns", "generation": generation}})


def test_a_recmodel_passes_when_first_seen_and_when_its_spec_changes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passed: list[int] = []
    monkeypatch.setattr(
        handlers, "recmodel", lambda body, **_: passed.append(body.metadata["generation"])
    )
    memo: dict[str, Any] = {}
    _call(handlers.recmodel_changed, body=_model(1), type=None, memo=memo)  # operator start
    _call(handlers.recmodel_changed, body=_model(1), type="MODIFIED", memo=memo)  # status
    _call(handlers.recmodel_changed, body=_model(2), type="MODIFIED", memo=memo)  # spec
    _call(handlers.recmodel_changed, body=_model(2), type="DELETED", memo=memo)
    assert passed == [1, 2]


def test_a_failed_pass_is_tried_again_after_its_delay_unless_it_cannot_heal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def busy_api(body: kopf.Body, **_: Any) -> None:
        raise kopf.TemporaryError("API answered 429; retrying", delay=3)

    retried: list[tuple[str, Any]] = []
    monkeypatch.setattr(handlers.asyncio, "sleep", sleep)
    monkeypatch.setattr(handlers, "recmodel", busy_api)
    monkeypatch.setattr(handlers.PASSES, "run", lambda key, raw, _t: retried.append((key, raw)))
    _call(handlers.recmodel_changed, body=_model(1), type=None, memo={})
    assert slept == [3] and retried == [("ns/m", None)]  # after the delay, read afresh

    def forbidden(body: kopf.Body, **_: Any) -> None:
        raise kopf.PermanentError("not allowed")

    monkeypatch.setattr(handlers, "recmodel", forbidden)
    _call(handlers.recmodel_changed, body=_model(1), type=None, memo={})
    assert slept == [3]  # not tried again


# -- children: only what a pass reads of them moves their owner ---------------------------


def _call(handler: Any, **kwargs: Any) -> Any:
    """Await an async handler as kopf would (kopf's decorators retype them)."""
    return asyncio.run(handler(**kwargs))


def _deployment(ready: int | None, owner: str = "m") -> kopf.Body:
    status = {} if ready is None else {"readyReplicas": ready, "observedGeneration": 3}
    raw: Any = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{owner}-pool",
            "namespace": "ns",
            "labels": {"recserve.io/model": owner},
            "ownerReferences": [{"kind": "RecModel", "name": owner, "uid": "u"}],
        },
        "status": status,
    }
    return kopf.Body(raw)


def test_child_events_ask_for_a_pass_only_when_readiness_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    async def in_thread(fn: Any, key: str, *_: Any) -> None:
        asked.append(key)

    monkeypatch.setattr(handlers, "_in_thread", in_thread)
    memo = kopf.Memo()

    def event(body: kopf.Body, type_: str | None = "MODIFIED") -> None:
        _call(handlers.child_changed, body=body, type=type_, memo=memo)

    event(_deployment(None), "ADDED")  # first sight: recorded only
    event(_deployment(None))  # the controller's other status writes
    assert asked == []
    event(_deployment(1))  # a replica became ready
    event(_deployment(1))
    assert asked == ["ns/m"]
    event(_deployment(1), "DELETED")  # gone: the owner recreates it
    assert asked == ["ns/m", "ns/m"]


def test_the_child_index_keeps_what_a_pass_reads() -> None:
    body = _deployment(2)
    body["metadata"]["annotations"] = {APPLIED_HASH: "abc", "other": "x"}
    body["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    resource = kopf.Resource("apps", "v1", "deployments", kind="Deployment")
    indexed = _call(handlers.child_index, body=body, resource=resource, namespace="ns")
    assert indexed == {
        ("ns", "m"): {
            "kind": "Deployment",
            "metadata": {
                "name": "m-pool",
                "namespace": "ns",
                "labels": {"recserve.io/model": "m"},
                "annotations": {APPLIED_HASH: "abc"},
                "generation": None,
            },
            # readiness, and the rollout's progress (canary promotion waits for it)
            "status": {"readyReplicas": 2, "observedGeneration": 3},
        }
    }


def test_the_routers_shared_account_is_indexed_under_its_namespace() -> None:
    account, _, binding = children.router_rbac("ns")
    for obj, plural in ((account, "serviceaccounts"), (binding, "rolebindings")):
        group, _, version = obj["apiVersion"].rpartition("/")
        resource = kopf.Resource(group, version, plural, kind=obj["kind"])
        body = kopf.Body(obj)
        indexed = _call(handlers.child_index, body=body, resource=resource, namespace="ns")
        assert list(indexed) == [("ns", SHARED)]
    # a model-less object that is not marked shared is nobody's child
    stray = kopf.Body({"metadata": {"name": "x", "labels": dict(children.MANAGED_BY)}})
    resource = kopf.Resource("", "v1", "serviceaccounts", kind="ServiceAccount")
    assert _call(handlers.child_index, body=stray, resource=resource, namespace="ns") == {}


def test_unused_router_accounts_go_after_two_empty_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "_state", {})
    shared = {("a", SHARED): [{}], ("b", SHARED): [{}], ("b", "m"): [{}]}
    models = {("b", "m"): [{}]}
    indexes = {"child_index": shared, "model_index": models}
    assert handlers._unused_router_accounts(indexes) == set()  # "a" empty once
    models[("a", "new")] = [{}]  # a model came back to "a"
    assert handlers._unused_router_accounts(indexes) == set()
    del models[("a", "new")]
    assert handlers._unused_router_accounts(indexes) == set()
    assert handlers._unused_router_accounts(indexes) == {"a"}  # empty two rounds running


# -- the facade reads what kopf's watches saw ----------------------------------------------


def test_kube_reads_references_and_children_from_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = Kube(client.ApiClient())
    gets: list[str] = []

    def get(group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        gets.append(name)
        return {"metadata": {"name": name}}

    monkeypatch.setattr(kube.custom, "get_namespaced_custom_object", get)
    policies: dict[tuple[str | None, str], dict[str, Any]] = {
        ("ns", "p"): {"metadata": {"name": "p"}, "spec": {}}
    }
    kube.know("optimizationpolicies", lambda name, ns: policies.get((ns, name)))
    assert kube.get_custom("optimizationpolicies", "p", "ns") == policies[("ns", "p")]
    assert gets == []
    assert kube.get_custom("optimizationpolicies", "new", "ns") == {"metadata": {"name": "new"}}
    assert gets == ["new"]  # a miss still asks the API server

    services = [{"kind": "Service", "metadata": {"name": "m-router"}}]
    shared = [{"kind": "Service", "metadata": {"name": "recserve-router"}}]
    by_owner = {("Service", "ns", "m"): services, ("Service", "ns", SHARED): shared}
    kube.know_children(
        "recserve.io/model",
        frozenset({"Service"}),
        lambda kind, ns, owner: by_owner.get((kind, ns, owner), []),
        shared_label="recserve.io/shared",
    )
    assert kube.list("v1", "Service", "ns", "recserve.io/model=m") == services
    assert kube.list("v1", "Service", "ns", "recserve.io/model=other") == []
    assert kube.list("v1", "Service", "ns", "recserve.io/shared=true") == shared
    monkeypatch.setattr(kube, "_dynamic", _NoDiscovery())
    with pytest.raises(_Listed):  # other selectors and kinds are listed
        kube.list("v1", "Service", "ns", "recserve.io/model=m,x=y")
    with pytest.raises(_Listed):
        kube.list("batch/v1", "Job", "ns", "recserve.io/model=m")


class _Listed(Exception):
    pass


class _NoDiscovery:
    @property
    def resources(self) -> Any:
        raise _Listed()


def test_kube_map_writes_side_by_side_in_order() -> None:
    kube = Kube(client.ApiClient(), writers=4)
    assert kube.map(lambda n: n * 2, range(6)) == [0, 2, 4, 6, 8, 10]

    def fail_on_three(n: int) -> int:
        if n == 3:
            raise ApiException(status=500)
        return n

    with pytest.raises(ApiException):
        kube.map(fail_on_three, range(6))
    assert Kube(client.ApiClient()).map(lambda n: n + 1, [1, 2]) == [2, 3]  # one by one


def test_the_child_index_keeps_what_a_canary_rollout_reads() -> None:
    """A pass reads Deployments from the operator's index, not the API server: the
    index must keep the variant a pool's pods serve and its rollout progress, or a
    variant change is never seen as one (found on the local control plane)."""
    import kopf

    from recserve_operator import children
    from recserve_operator.reconcilers.rollout import pool_move, rolled_out

    body = kopf.Body(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "m-cpu-pool", "namespace": "ns", "generation": 3, "labels": {}},
            "spec": {
                "replicas": 2,
                "template": {
                    "metadata": {"labels": {children.VARIANT_LABEL: "fp32", "other": "x"}},
                    "spec": {"containers": [{"name": "server", "args": ["serve"]}]},
                },
            },
            "status": {
                "observedGeneration": 3,
                "replicas": 2,
                "updatedReplicas": 2,
                "readyReplicas": 2,
            },
        }
    )
    seen = handlers._observed_child(body, "Deployment")
    assert seen["spec"]["template"] == {"metadata": {"labels": {children.VARIANT_LABEL: "fp32"}}}
    assert rolled_out(seen)
    move = pool_move("cpu-pool", "int8", seen, None, True, "2026-12-06T10:00:00Z")
    assert move.canary and not move.apply_stable and move.rollout is not None


def test_a_pass_writes_only_the_status_fields_it_changed() -> None:
    old = {"plan": "a", "rollouts": [{"step": 0}], "gone": 1, "conditions": [1]}
    new = {"plan": "b", "rollouts": [{"step": 0}], "conditions": [1]}
    # the rollout it read (maybe older than the tick's write) is not written back
    assert handlers.status_changes(old, new) == {"plan": "b", "gone": None}
    assert handlers.status_changes(old, old) == {}
