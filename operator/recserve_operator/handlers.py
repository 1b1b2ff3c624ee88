"""kopf handlers: thin wrappers that call the plain reconcile functions.

Each kind has one idempotent reconcile, run when an object is first seen or its spec
changes (a RecModel: by its generation, see recmodel_changed) and by a repair loop every
interval (so that missed events and drift in the cluster are repaired without
a watch event; not kopf timers, which would put a finalizer on every object).

This is the typed boundary: a body is validated into its API type here, once, and the
reconcilers only ever see the types. A body the types refuse (e.g. one written under an
older schema) is reported in status (Ready=False, reason InvalidSpec, each bad field
path) and logged; the handler then returns normally, so kopf does not retry it in a
loop. The next spec change, or the repair loop, looks again.

At scale (docs/operator-scale.md) a pass costs only the writes it must make: what it
reads (its model, policy and pools, the children it compares with) comes from kopf
indexes that kopf's watches keep current; one pass per model runs at a time (Passes);
a child's event asks for a pass only when what a pass reads of it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from recserve_operator import children
from recserve_operator.api.common import GROUP, VERSION
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.recmodel import RecModel
from recserve_operator.api.validation import ManifestError, parse_object
from recserve_operator.config import OperatorConfig
from recserve_operator.failover import stalled
from recserve_operator.kube import APPLIED_HASH, SHARED, ChildrenLookup, Kube, Lookup
from recserve_operator.observe import MetricsCache, Windows, prometheus_query
from recserve_operator.operator_metrics import RECONCILE_SECONDS
from recserve_operator.operator_metrics import serve as serve_metrics
from recserve_operator.reconcilers.hardwarepool import reconcile_hardwarepool, reject_hardwarepool
from recserve_operator.reconcilers.recmodel import Outcome, reconcile_recmodel, rejected
from recserve_operator.scaling_loop import ScalingLoop
from recserve_operator.settings import configure, max_workers

# The repair loop mends what events missed; at scale every pass costs API calls, so the
# interval is a setting (the chart's extraEnv), read once at import. Its first round is
# one interval after start: the resume and create handlers have just run the first pass
# (a round at once would double every model's startup pass).
INTERVAL = float(os.environ.get("RECSERVE_RECONCILE_INTERVAL_SECONDS", "30"))
log = logging.getLogger("recserve.handlers")
_state: dict[str, Any] = {}
OWNED = dict(children.MANAGED_BY)  # the label every child of ours carries
_kube_lock = threading.Lock()


def _kube() -> Kube:
    with _kube_lock:
        if "kube" not in _state:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            configuration = client.Configuration.get_default_copy()
            # A pass's independent writes go side by side on as many more threads; one
            # kept-alive connection per thread: urllib3 keeps 4 by default and opens (TLS
            # handshake and all) a new connection for each request beyond them.
            configuration.connection_pool_maxsize = 2 * max_workers()
            _state["kube"] = Kube(client.ApiClient(configuration), writers=max_workers())
    kube: Kube = _state["kube"]
    return kube


def _loop() -> ScalingLoop:
    """The autoscaling loop (made once, from the operator's configuration)."""
    with _kube_lock:
        if "loop" not in _state:
            cfg = _config()
            query = prometheus_query(cfg.prometheus_url) if cfg.prometheus_url else None
            windows = Windows(scrape_seconds=cfg.scrape_interval_seconds)
            # one refresh serves every model due in the same round of ticks
            cache = MetricsCache(query, windows, refresh_seconds=cfg.autoscale_tick_seconds / 2)
            _state["loop"] = ScalingLoop(cache, cfg.autoscale_tick_seconds)
    loop: ScalingLoop = _state["loop"]
    return loop


def _config() -> OperatorConfig:
    if "config" not in _state:
        _state["config"] = OperatorConfig.from_env()
    config: OperatorConfig = _state["config"]
    return config


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply recserve's kopf settings before any watch starts."""
    configure(settings)
    _state["executor"] = settings.execution.executor
    cfg = _config()
    _kube()  # before the first handlers: they would all build it at once
    if cfg.metrics_port:
        serve_metrics(cfg.metrics_port)
    log.info(
        "operator configured store=%s builder=%s workers=%d",
        cfg.store.local_root,
        cfg.builder_image,
        max_workers(),
    )


@kopf.on.probe(id="api")
def api_reachable(**_: Any) -> str:
    """Liveness detail: the API server answers (kopf also checks its own loop)."""
    return str(_kube().core.get_api_resources().group_version)


# -- references, from kopf's watch -------------------------------------------------------
# A pass reads its RecModel's OptimizationPolicy and HardwarePools. kopf indexes keep
# every one as last seen by its watch (async: kept up to date in the event loop, not
# queued behind passes for a handler thread), so a pass reads them without a GET; kopf
# starts no handler before its indexes are filled. A miss still asks the API server.
@kopf.index(GROUP, VERSION, "optimizationpolicies")
async def policy_index(
    body: kopf.Body, name: str, namespace: str | None, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): _plain(body)}


@kopf.index(GROUP, VERSION, "recmodels")
async def model_index(
    body: kopf.Body, name: str, namespace: str | None, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """RecModels as last seen: a pass that a child's event asks for reads its model
    here, not with a GET."""
    return {(namespace, name): _plain(body)}


@kopf.index(GROUP, VERSION, "hardwarepools")
async def pool_index(
    body: kopf.Body, name: str, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(None, name): _plain(body)}


# The children a pass compares with what it would apply (Deployments, Services, the
# routers' ServiceAccount/Role/RoleBinding, ModelVariants), indexed by owner (the
# routers' account, shared by a namespace's models, under SHARED): a pass
# used to LIST each of these six kinds by label, O(objects in the namespace) on the API
# server every time. The index keeps what a pass reads: names, labels, the applied-hash
# annotation, generation, a Deployment's replicas, its pods' variant and rollout
# progress, a ModelVariant and a pool's limits ConfigMap whole (the autoscaler reads
# them every tick).
CHILD_KINDS = frozenset(
    {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ModelVariant",
        "ConfigMap",
        "NetworkPolicy",
    }
)


@kopf.index("apps", "v1", "deployments", labels=OWNED)
@kopf.index("v1", "configmaps", labels=OWNED)
@kopf.index("v1", "services", labels=OWNED)
@kopf.index("v1", "serviceaccounts", labels=OWNED)
@kopf.index("rbac.authorization.k8s.io", "v1", "roles", labels=OWNED)
@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=OWNED)
@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=OWNED)
@kopf.index(GROUP, VERSION, "modelvariants", labels=OWNED)
async def child_index(
    body: kopf.Body, resource: kopf.Resource, namespace: str | None, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    labels = body.metadata.labels
    owner = labels.get(children.MODEL_LABEL)
    if owner is None and labels.get(children.SHARED_LABEL) == "true":
        owner = SHARED  # shared by the namespace's models (the router's account)
    if owner is None or namespace is None:
        return {}
    return {(namespace, owner): _observed_child(body, resource.kind or str(body.get("kind")))}


def _observed_child(body: kopf.Body, kind: str) -> dict[str, Any]:
    meta = body.metadata
    if kind == "ModelVariant":  # read whole (its status is compared field by field)
        whole = _plain(body)
        return {**whole, "apiVersion": f"{GROUP}/{VERSION}", "kind": kind}
    applied = meta.annotations.get(APPLIED_HASH)
    observed: dict[str, Any] = {
        "kind": kind,
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "labels": dict(meta.labels),
            "annotations": {APPLIED_HASH: applied} if applied else {},
            "generation": meta.get("generation"),
        },
    }
    if kind == "ConfigMap":
        observed["data"] = dict(body.get("data") or {})
    spec = body.get("spec") or {}
    replicas = spec.get("replicas")
    if kind == "Deployment" and replicas is not None:
        observed["spec"] = {"replicas": replicas}
    status = body.get("status") or {}
    ready = status.get("readyReplicas")
    if ready is not None:
        observed["status"] = {"readyReplicas": ready}
    if kind == "Deployment":
        # canary rollouts (reconcilers/rollout.py): the variant a pool's pods serve, and
        # whether the Deployment's last change is rolled out
        template = (spec.get("template") or {}).get("metadata") or {}
        variant = (template.get("labels") or {}).get(children.VARIANT_LABEL)
        if variant:
            labels = {children.VARIANT_LABEL: variant}
            observed.setdefault("spec", {})["template"] = {"metadata": {"labels": labels}}
        for key in ("observedGeneration", "updatedReplicas", "replicas"):
            if status.get(key) is not None:
                observed.setdefault("status", {})[key] = status[key]
    progressing = [c for c in status.get("conditions") or [] if c.get("type") == "Progressing"]
    if kind == "Deployment" and progressing:  # failover reads its progress deadline
        observed.setdefault("status", {})["conditions"] = progressing
    return observed


def _children_lookup(index: kopf.Index[Any, Any]) -> ChildrenLookup:
    def lookup(kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        try:
            seen = list(index.get((namespace, owner)) or ())
        except RuntimeError:  # changed while read: read again
            seen = list(index.get((namespace, owner)) or ())
        return [copy.deepcopy(child) for child in seen if child.get("kind") == kind]

    return lookup


def _lookup(index: kopf.Index[Any, Any]) -> Lookup:
    def lookup(name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            seen = list(index.get((namespace, name)) or ())
        except RuntimeError:  # changed while read (the watch is another thread): ask
            return None
        return copy.deepcopy(seen[0]) if seen else None

    return lookup


def _use_indexes(kube: Kube, indexes: dict[str, Any]) -> Kube:
    """Let ``kube`` read from kopf's indexes (handlers receive them as arguments; they
    are the same live objects for the operator's lifetime)."""
    if "indexed" not in _state and indexes.get("child_index") is not None:
        kube.know("recmodels", _lookup(indexes["model_index"]))
        kube.know("optimizationpolicies", _lookup(indexes["policy_index"]))
        kube.know("hardwarepools", _lookup(indexes["pool_index"]))
        kube.know_children(
            children.MODEL_LABEL,
            CHILD_KINDS,
            _children_lookup(indexes["child_index"]),
            shared_label=children.SHARED_LABEL,
        )
        _state["indexed"] = True
        _state["indexes"] = {k: indexes[k] for k in ("model_index", "pool_index", "child_index")}
    return kube


@kopf.on.resume(GROUP, VERSION, "hardwarepools")
@kopf.on.create(GROUP, VERSION, "hardwarepools")
@kopf.on.update(GROUP, VERSION, "hardwarepools", field="spec")
def hardwarepool(body: kopf.Body, **kwargs: Any) -> None:
    """Count the pool's nodes and accelerators."""
    _use_indexes(_kube(), kwargs)  # the repair loop recounts pools from the index
    raw = _plain(body)
    with api_errors_typed():
        try:
            pool = parse_object(HardwarePool, raw)
        except ManifestError as exc:
            log.warning("%s", exc)
            reject_hardwarepool(raw, exc, _kube())
            return
        reconcile_hardwarepool(pool, _kube())


READY_NODES_MEMO = "recserve_ready_nodes"


@kopf.on.event(GROUP, VERSION, "hardwarepools")
async def pool_changed(body: kopf.Body, name: str, memo: Any, **kwargs: Any) -> None:
    """A pool's Ready, schedulable nodes went to 0 or came back: re-plan every RecModel
    that may use it now (failover), not at its next repair round."""
    ready = (body.get("status") or {}).get("readyNodeCount")
    seen = memo.get(READY_NODES_MEMO, "unseen")
    memo[READY_NODES_MEMO] = ready
    if seen == "unseen" or (seen == 0) == (ready == 0) or ready is None:
        return
    index = kwargs.get("model_index")
    if index is None:
        return
    for model in _index_items(index):  # empty if it changed while read: the repair loop
        refs = {r.get("name") for r in (model.get("spec") or {}).get("hardwarePoolRefs") or []}
        if name in refs:
            meta = model["metadata"]
            log.info("pool %s: %s ready nodes: re-planning %s", name, ready, meta["name"])
            await _in_thread(PASSES.run, _key(meta["namespace"], meta["name"]), None, None)


GENERATION_MEMO = "recserve_generation"
RETRY_SECONDS = 10.0  # a failed pass whose error names no delay is tried again after this


@kopf.on.event(GROUP, VERSION, "recmodels")
async def recmodel_changed(body: kopf.Body, type: str | None, memo: Any, **kwargs: Any) -> None:
    """A RecModel first seen (created, or found at the operator's start) or whose spec
    changed (its generation, which the API server bumps on every spec change): one pass.
    Its other events (status writes, most of them the operator's own, labels) do nothing.

    Not kopf's change handlers (resume/create/update): they record the handled spec in
    an annotation (one PATCH per change, whose event is then processed in turn) and
    deep-copy the whole body, managedFields and status included, on every event to find
    out whether the spec changed: 11% of the operator's CPU time under the GIL in a burst
    of 200 models (py-spy --gil), for what the generation says. A pass that fails for a
    reason that can heal (the API's 409/429/5xx) is tried again after the delay its error
    names, as kopf would; one that cannot (403) is logged; the repair loop still passes
    every model each interval.
    """
    if type == "DELETED" or memo.get(GENERATION_MEMO) == body.metadata.get("generation"):
        return
    memo[GENERATION_MEMO] = body.metadata.get("generation")
    key = _key(str(body.metadata.namespace), str(body.metadata.name))
    call: Callable[..., None] = functools.partial(recmodel, body, **kwargs)
    while True:
        try:
            await _in_thread(call)
            return
        except kopf.TemporaryError as exc:
            delay = exc.delay if exc.delay is not None else RETRY_SECONDS
            log.warning("pass of %s failed, trying again in %.0f s: %s", key, delay, exc)
            await asyncio.sleep(delay)
            call = functools.partial(PASSES.run, key, None, None)  # read afresh
        except kopf.PermanentError as exc:
            log.error("pass of %s failed: %s", key, exc)
            return


def recmodel(body: kopf.Body, **kwargs: Any) -> None:
    """Move the model through build, profile, plan and serve as far as it can go."""
    _use_indexes(_kube(), kwargs)
    # kopf's context as its handlers see it (kopf.event needs it): autoscaling ticks,
    # which no kopf handler runs, post their Events in a copy of it
    _state.setdefault("handler_context", contextvars.copy_context())
    raw = _plain(body)
    meta = raw["metadata"]
    PASSES.run(_key(meta["namespace"], meta["name"]), raw, body)


# Repairs: what events missed. Not kopf timers: kopf puts its finalizer on every object
# a timer or daemon watches, so once the operator was uninstalled (or down) a RecModel or
# HardwarePool could not be deleted: it stayed Terminating until someone removed the
# finalizer by hand. One loop of our own needs none (kopf takes an old one off).
POOL_REPAIR_SECONDS = max(INTERVAL, 15)


@kopf.on.startup()
async def start_repairs(**_: Any) -> None:
    _state["repairs"] = asyncio.create_task(_repair_forever())


@kopf.on.cleanup()
async def stop_repairs(**_: Any) -> None:
    task = _state.pop("repairs", None)
    if task is not None:
        task.cancel()


async def _repair_forever() -> None:
    """Every interval, a pass of each RecModel that no pass looked at in the last half
    interval, and a recount of every HardwarePool (each ``POOL_REPAIR_SECONDS``), on the
    handler threads; a failure is logged and tried again at the next round."""
    pools_due = time.monotonic() + POOL_REPAIR_SECONDS
    while True:
        await asyncio.sleep(INTERVAL)
        indexes = _state.get("indexes")
        if indexes is None:  # no handler ran yet: nothing is known
            continue
        models = _index_items(indexes["model_index"])
        due = [
            (key, raw)
            for raw in models
            if PASSES.seconds_since(
                key := _key(raw["metadata"]["namespace"], raw["metadata"]["name"])
            )
            >= INTERVAL / 2
        ]
        work = [_repair(PASSES.run, key, raw, raw) for key, raw in due]
        work += [_repair(_remove_router_account, ns) for ns in _unused_router_accounts(indexes)]
        if time.monotonic() >= pools_due:
            pools_due = time.monotonic() + POOL_REPAIR_SECONDS
            work += [_repair(_recount_pool, raw) for raw in _index_items(indexes["pool_index"])]
        await asyncio.gather(*work)


def _unused_router_accounts(indexes: dict[str, Any]) -> set[str]:
    """Namespaces whose shared router account no RecModel has needed for two repair
    rounds running (none while an index changes under the read: the next round)."""
    try:
        shared = {ns for ns, owner in list(indexes["child_index"]) if owner == SHARED}
        with_models = {ns for ns, _ in list(indexes["model_index"])}
    except RuntimeError:
        return set()
    remove, empty = children.namespaces_without_models(
        shared, with_models, _state.get("empty_namespaces", set())
    )
    _state["empty_namespaces"] = empty
    return remove


def _remove_router_account(namespace: str) -> None:
    log.info("%s: no RecModel left, deleting the routers' account", namespace)
    with api_errors_typed():
        for obj in children.router_rbac(namespace):
            _kube().delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], namespace)


def _index_items(index: Any) -> list[dict[str, Any]]:
    """Every object of a kopf index, as last seen (an empty list while it changes)."""
    try:
        return [obj for key in list(index) for obj in list(index.get(key) or ())]
    except RuntimeError:  # changed while read: the next round
        return []


async def _repair(fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` on a handler thread, in kopf's handler context (kopf.event needs it);
    a failure is logged, never raised into the loop."""
    context = _state.get("handler_context") or contextvars.copy_context()
    call = functools.partial(context.copy().run, fn, *args)
    try:
        await asyncio.get_running_loop().run_in_executor(_state.get("executor"), call)
    except Exception as exc:
        log.warning("repair of %s failed, tried again next round: %s", args[0], exc)


def _recount_pool(raw: dict[str, Any]) -> None:
    with api_errors_typed():
        try:
            pool = parse_object(HardwarePool, raw)
        except ManifestError:
            return  # reported by the change handler; nothing to count
        reconcile_hardwarepool(pool, _kube())


PROGRESS_MEMO = "recserve_progress"


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def child_changed(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A Job finished or a Deployment's ready replicas changed (or a child was deleted):
    move the owning RecModel on now, instead of at its next repair round.

    Every other event of a child is ignored: the Deployment controller writes a
    Deployment's status several times while it rolls out, and each used to cost the
    owner a whole pass. What a pass reads of a child is kept in kopf's memo of that
    child; the first sight of a child (its creation, or the operator's start, when the
    owner's first sight runs its pass anyway) only records it. The check runs in
    the event loop; only a pass takes a handler thread.
    """
    owner = next(
        (o for o in body.metadata.get("ownerReferences", []) if o.get("kind") == "RecModel"), None
    )
    namespace = body.metadata.get("namespace")
    if owner is None or namespace is None:
        return
    progress = _progress(body)
    seen = memo.get(PROGRESS_MEMO)
    memo[PROGRESS_MEMO] = progress
    if type != "DELETED" and (seen is None or seen == progress):
        return
    name = str(owner["name"])
    await _in_thread(PASSES.run, _key(namespace, name), None, None)


def _progress(body: kopf.Body) -> tuple[Any, ...]:
    """What a pass reads of a child: a Job's outcome, a Deployment's ready replicas and
    whether it passed its progress deadline (failover)."""
    status = body.get("status") or {}
    if body.get("kind") == "Job":
        return tuple(
            sorted(
                str(c.get("type"))
                for c in status.get("conditions") or []
                if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            )
        )
    return (int(status.get("readyReplicas") or 0), stalled(body) is not None)


async def _in_thread(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn`` on kopf's handler threads, with kopf's context (as kopf runs sync
    handlers: kopf.event needs it)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    await asyncio.get_running_loop().run_in_executor(_state.get("executor"), call)


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class Passes:
    """At most one reconcile pass per RecModel at a time, and at most one more queued.

    kopf serialises the handlers of one object, but the repair loop, a RecModel's own change
    handlers and its children's events are separate streams: without this, several
    threads ran the same model's pass at once (each issuing the same API calls) while
    other models waited for a thread. A pass asked for while one runs is folded into a
    single re-run from a fresh read when that one ends (a work queue's semantics, as in
    controller-runtime); the asking handler returns at once and frees its thread. kopf
    has no such queue across resources, hence this small one. The re-run reads the
    model from kopf's index (which kopf updates before it runs the asking handler). If
    the running pass fails, a folded ask is dropped: the failed pass is tried again
    (:func:`recmodel_changed`), and the repair loop covers the rest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._finished: dict[str, float] = {}
        self.passes = 0  # passes run
        self.folded = 0  # asks folded into a running pass's re-run

    def seconds_since(self, key: str) -> float:
        """Seconds since the last pass of ``key`` ended (infinite if none did)."""
        with self._lock:
            if key in self._running:
                return 0.0
            ended = self._finished.get(key)
        return float("inf") if ended is None else time.monotonic() - ended

    def run(self, key: str, raw: dict[str, Any] | None, event_target: Any) -> None:
        """Pass over ``raw`` (None: read the RecModel first), or queue one re-run."""
        with self._lock:
            if key in self._running:
                self._again.add(key)
                self.folded += 1
                return
            self._running.add(key)
        try:
            while True:
                if raw is None:
                    namespace, name = key.split("/", 1)
                    with api_errors_typed():
                        raw = _kube().get_custom("recmodels", name, namespace)
                    event_target = raw
                if raw is not None:
                    _pass(raw, event_target)
                with self._lock:
                    self.passes += raw is not None
                    if key not in self._again:
                        self._running.discard(key)
                        if raw is None:  # deleted
                            self._finished.pop(key, None)
                            for told in [k for k in ANNOUNCED if k.startswith(f"{key}/")]:
                                ANNOUNCED.pop(told, None)
                        else:
                            self._finished[key] = time.monotonic()
                        return
                    self._again.discard(key)
                raw = None
        except BaseException:
            with self._lock:
                self._running.discard(key)
                self._again.discard(key)  # the failed pass is tried again
            raise


PASSES = Passes()


@kopf.on.cleanup()
async def report_passes(**_: Any) -> None:
    """Say at exit how many passes ran (the scale benchmark reads API calls per pass)."""
    log.info("reconcile passes: %d (asks folded into a re-run: %d)", PASSES.passes, PASSES.folded)


def status_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from ``old`` to ``new``: only the fields a pass changed. A pass
    may read a body older than the autoscaling tick's last write (kopf's copy lags it);
    writing its whole status back would undo the tick's newer fields (a canary's step,
    measured: a step analysed and passed twice)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def _pass(raw: dict[str, Any], event_target: Any) -> None:
    meta = raw["metadata"]
    key = _key(meta["namespace"], meta["name"])
    loop = _loop()
    started = time.perf_counter()
    with loop.locks.held(key), api_errors_typed():
        outcome = recmodel_pass(raw, _kube(), _config(), loop.live_demand(key))
        changed = status_changes(raw.get("status") or {}, outcome.status)
        if changed:
            _kube().patch_status("recmodels", meta["name"], meta["namespace"], changed)
        loop.planned(key, outcome.planned)
    RECONCILE_SECONDS.labels("reconcile").observe(time.perf_counter() - started)
    post_events(event_target, outcome.events)


@kopf.on.startup()
async def start_autoscaler(**_: Any) -> None:
    """Run the autoscaling loop in kopf's event loop (ticks run on handler threads)."""
    _state["autoscaler"] = asyncio.create_task(_autoscale_forever())


@kopf.on.cleanup()
async def stop_autoscaler(**_: Any) -> None:
    task = _state.pop("autoscaler", None)
    if task is not None:
        task.cancel()


async def _tick_in_thread(context: contextvars.Context, loop: ScalingLoop, key: str) -> None:
    call = functools.partial(context.copy().run, loop.tick, key, _kube(), post_events, _replan)
    await asyncio.get_running_loop().run_in_executor(_state.get("executor"), call)


def _replan(key: str, written: dict[str, Any] | None) -> None:
    """Ask for a pass of ``key`` now (from a tick's thread, once its lock is released),
    over ``written`` when the tick just wrote the model (the index may not have it yet)."""
    executor = _state.get("executor")
    if executor is not None:
        executor.submit(contextvars.copy_context().run, PASSES.run, key, written, written)


async def _autoscale_forever() -> None:
    loop = _loop()
    while True:
        await asyncio.sleep(loop.tick_seconds)
        due = loop.due(time.monotonic())
        if not due:
            continue
        context = _state.get("handler_context")
        if context is None:  # no reconcile pass has run yet: nothing is planned either
            continue
        results = await asyncio.gather(
            *(_tick_in_thread(context, loop, key) for key in due), return_exceptions=True
        )
        for key, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("autoscaling tick of %s failed: %s", key, result)


# per RecModel, the (status, reason) of each phase this process last announced in an
# Event: a pass that reads a body older than its predecessor's status write (kopf's copy
# lags the API server by a watch event) must not announce the same change again
ANNOUNCED: dict[str, dict[str, tuple[str, str]]] = {}


def recmodel_pass(
    raw: dict[str, Any], kube: Kube, config: OperatorConfig, live_demand_rps: float | None = None
) -> Outcome:
    """Validate a RecModel body into its type and reconcile it, or say why it is refused."""
    try:
        model = parse_object(RecModel, raw)
    except ManifestError as exc:
        log.warning("%s", exc)
        return rejected(raw, exc)
    key = _key(str(model.namespace), model.name)
    uid = model.metadata.get("uid", "")
    announced = ANNOUNCED.setdefault(f"{key}/{uid}", {})  # a re-created model: anew
    return reconcile_recmodel(model, kube, config, live_demand_rps, announced)


def post_events(target: Any, events: list[tuple[str, str, str]]) -> None:
    """Post a pass's Events on the object (kopf batches and rate-limits them)."""
    for type_, reason, message in events:
        kopf.event(target, type=type_, reason=reason, message=message)


@contextlib.contextmanager
def api_errors_typed() -> Iterator[None]:
    """API errors as kopf errors: 401/403 will not heal (fail now, say why); 409, 429
    and 5xx will (retry after the server's Retry-After, or a few seconds)."""
    try:
        yield
    except ApiException as exc:
        if exc.status in (401, 403):
            raise kopf.PermanentError(f"not allowed: {exc.reason}: {exc.body}") from exc
        if exc.status in (409, 429) or (exc.status or 0) >= 500:
            retry_after = (exc.headers or {}).get("Retry-After", "5")
            delay = float(retry_after) if str(retry_after).isdigit() else 5.0
            raise kopf.TemporaryError(f"API answered {exc.status}; retrying", delay=delay) from exc
        raise


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A plain dict copy of a kopf body (reconcilers never see kopf types), without
    managedFields (nothing reads them, and they are most of a body's size)."""
    metadata = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
    return copy.deepcopy(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": metadata,
            "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {})),
        }
    )
