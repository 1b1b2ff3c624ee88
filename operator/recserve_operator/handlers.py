"""kopf handlers: thin wrappers that call the plain reconcile functions.

Each kind has one idempotent reconcile, run on create/update/resume and on a timer (so
that missed events and drift in the cluster are repaired without a watch event).

This is the typed boundary: a body is validated into its API type here, once, and the
reconcilers only ever see the types. A body the types refuse (e.g. one written under an
older schema) is reported in status (Ready=False, reason InvalidSpec, each bad field
path) and logged; the handler then returns normally, so kopf does not retry it in a
loop. The next spec change, or the timer, looks again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from recserve_operator.api.common import GROUP, VERSION
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.recmodel import RecModel
from recserve_operator.api.validation import ManifestError, parse_object
from recserve_operator.config import OperatorConfig
from recserve_operator.kube import Kube
from recserve_operator.reconcilers.hardwarepool import reconcile_hardwarepool, reject_hardwarepool
from recserve_operator.reconcilers.recmodel import Outcome, reconcile_recmodel, rejected
from recserve_operator.settings import configure

# Timers repair what events missed; at scale every pass costs API calls, so the
# interval is a setting (the chart's extraEnv), read once at import by the decorators.
INTERVAL = float(os.environ.get("RECSERVE_RECONCILE_INTERVAL_SECONDS", "30"))
log = logging.getLogger("recserve.handlers")
_state: dict[str, Any] = {}


def _kube() -> Kube:
    if "kube" not in _state:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _state["kube"] = Kube(client.ApiClient())
    kube: Kube = _state["kube"]
    return kube


def _config() -> OperatorConfig:
    if "config" not in _state:
        _state["config"] = OperatorConfig.from_env()
    config: OperatorConfig = _state["config"]
    return config


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply recserve's kopf settings before any watch starts."""
    configure(settings)
    cfg = _config()
    log.info("operator configured store=%s builder=%s", cfg.store.local_root, cfg.builder_image)


@kopf.on.probe(id="api")
def api_reachable(**_: Any) -> str:
    """Liveness detail: the API server answers (kopf also checks its own loop)."""
    return str(_kube().core.get_api_resources().group_version)


@kopf.on.resume(GROUP, VERSION, "hardwarepools")
@kopf.on.create(GROUP, VERSION, "hardwarepools")
@kopf.on.update(GROUP, VERSION, "hardwarepools", field="spec")
@kopf.timer(GROUP, VERSION, "hardwarepools", interval=max(INTERVAL, 15), initial_delay=1)
def hardwarepool(body: kopf.Body, **_: Any) -> None:
    """Count the pool's nodes and accelerators."""
    raw = _plain(body)
    with api_errors_typed():
        try:
            pool = parse_object(HardwarePool, raw)
        except ManifestError as exc:
            log.warning("%s", exc)
            reject_hardwarepool(raw, exc, _kube())
            return
        reconcile_hardwarepool(pool, _kube())


@kopf.on.resume(GROUP, VERSION, "recmodels")
@kopf.on.create(GROUP, VERSION, "recmodels")
@kopf.on.update(GROUP, VERSION, "recmodels", field="spec")
@kopf.timer(GROUP, VERSION, "recmodels", interval=INTERVAL, initial_delay=1)
def recmodel(body: kopf.Body, **_: Any) -> None:
    """Move the model through build, profile, plan and serve as far as it can go."""
    _pass(_plain(body), body)


OWNED = {"app.kubernetes.io/managed-by": "recserve-operator"}
MIN_SECONDS_BETWEEN_PASSES = 1.0


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
def child_changed(body: kopf.Body, **_: Any) -> None:
    """A Job finished or replicas became ready: move the owning RecModel on now,
    instead of at its next timer tick."""
    owner = next(
        (o for o in body.metadata.get("ownerReferences", []) if o.get("kind") == "RecModel"), None
    )
    namespace = body.metadata.get("namespace")
    if owner is None or namespace is None:
        return
    key = f"{namespace}/{owner['name']}"
    if time.monotonic() - _last_pass.get(key, 0.0) < MIN_SECONDS_BETWEEN_PASSES:
        return
    model = _kube().get_custom("recmodels", owner["name"], namespace)
    if model is not None:
        _pass(model, model)


_last_pass: dict[str, float] = {}


def _pass(raw: dict[str, Any], event_target: Any) -> None:
    meta = raw["metadata"]
    _last_pass[f"{meta['namespace']}/{meta['name']}"] = time.monotonic()
    with api_errors_typed():
        outcome = recmodel_pass(raw, _kube(), _config())
        if outcome.status != (raw.get("status") or {}):
            _kube().patch_status("recmodels", meta["name"], meta["namespace"], outcome.status)
    post_events(event_target, outcome.events)


def recmodel_pass(raw: dict[str, Any], kube: Kube, config: OperatorConfig) -> Outcome:
    """Validate a RecModel body into its type and reconcile it, or say why it is refused."""
    try:
        model = parse_object(RecModel, raw)
    except ManifestError as exc:
        log.warning("%s", exc)
        return rejected(raw, exc)
    return reconcile_recmodel(model, kube, config)


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
    """A plain dict copy of a kopf body (reconcilers never see kopf types)."""
    import copy

    return copy.deepcopy(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": dict(body.get("metadata", {})),
            "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {})),
        }
    )
