"""kopf handlers: thin wrappers that call the plain reconcile functions.

Each kind has one idempotent reconcile, run on create/update/resume and on a timer (so
that missed events and drift in the cluster are repaired without a watch event).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from recserve_operator.config import OperatorConfig
from recserve_operator.kube import Kube
from recserve_operator.reconcilers.hardwarepool import reconcile_hardwarepool
from recserve_operator.reconcilers.recmodel import reconcile_recmodel
from recserve_operator.settings import configure

GROUP, VERSION = "recserve.io", "v1alpha1"
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
@kopf.timer(GROUP, VERSION, "hardwarepools", interval=15, initial_delay=1)
def hardwarepool(body: kopf.Body, **_: Any) -> None:
    """Count the pool's nodes and accelerators."""
    reconcile_hardwarepool(_plain(body), _kube())


@kopf.on.resume(GROUP, VERSION, "recmodels")
@kopf.on.create(GROUP, VERSION, "recmodels")
@kopf.on.update(GROUP, VERSION, "recmodels", field="spec")
@kopf.timer(GROUP, VERSION, "recmodels", interval=5, initial_delay=1)
def recmodel(body: kopf.Body, **_: Any) -> None:
    """Move the model through build, profile, plan and serve as far as it can go."""
    model = _plain(body)
    outcome = reconcile_recmodel(model, _kube(), _config())
    if outcome.status != (model.get("status") or {}):
        _kube().patch_status(
            "recmodels", model["metadata"]["name"], model["metadata"]["namespace"], outcome.status
        )
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message)


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
