"""Operator configuration from the environment (set by the Helm chart)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from recserve_runtime.artifacts import StoreLayout

STORE_MOUNT = "/artifacts"


@dataclass(frozen=True)
class ArtifactStore:
    """Where build and profile Jobs write variants, and how pods and the operator see it.

    ``RECSERVE_ARTIFACT_STORE`` is either ``pvc://CLAIM`` (kind and real clusters: Jobs
    and servers mount the claim, the operator mounts it too, at /artifacts) or a local
    path (the local control plane: pods get a hostPath volume).
    """

    volume: dict[str, Any]
    local_root: Path  # the store as the operator process sees it

    @classmethod
    def from_uri(cls, uri: str, local_root: str | None = None) -> ArtifactStore:
        if uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").strip("/")
            return cls(
                {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}},
                Path(local_root or STORE_MOUNT),
            )
        path = Path(uri.removeprefix("file://")).resolve()
        return cls(
            {"name": "artifacts", "hostPath": {"path": str(path), "type": "DirectoryOrCreate"}},
            Path(local_root) if local_root else path,
        )

    def pod_path(self, *parts: str) -> str:
        """A path inside the store as Jobs and servers see it."""
        return str(PurePosixPath(STORE_MOUNT).joinpath(*parts))

    def local_path(self, *parts: str) -> Path:
        """The same path as the operator sees it."""
        return self.local_root.joinpath(*parts)

    def local_build(self, namespace: str, model: str, content_hash: str) -> StoreLayout[Path]:
        """One build's files as the operator sees them (to read what Jobs wrote)."""
        return StoreLayout.of(self.local_root, namespace, model, content_hash)

    def pod_build(
        self, namespace: str, model: str, content_hash: str
    ) -> StoreLayout[PurePosixPath]:
        """The same build's files as Jobs and servers see them (mounted at STORE_MOUNT)."""
        return StoreLayout.of(PurePosixPath(STORE_MOUNT), namespace, model, content_hash)


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the reconcilers need that is not in a custom resource."""

    store: ArtifactStore
    builder_image: str = "recserve/recserve-builder:0.1.0"
    server_image: str = "recserve/recserve-server:0.1.0"
    prometheus_url: str | None = None
    reconcile_interval_seconds: float = 30.0
    # Extra arguments for `recserve optimize` (e.g. --quick in tests and the demo).
    optimize_args: tuple[str, ...] = field(default_factory=tuple)
    # Extra arguments for every server container (RECSERVE_SERVER_ARGS), e.g.
    # --emulate-us-per-row for benchmarks whose replicas share one machine.
    server_args: tuple[str, ...] = field(default_factory=tuple)
    # Most profile Jobs of one RecModel that run at once (0: one per pool, all at once).
    # 1 where the pools share one machine (the local control plane): profiles measure
    # the machine, and concurrent ones would measure each other.
    profile_jobs_at_once: int = 0
    # The autoscaler: its tick (the finest grain of every policy's intervalSeconds), the
    # scrape interval of the Prometheus it reads (its rate windows and staleness follow
    # from it), and the port of the operator's own /metrics (0: none).
    autoscale_tick_seconds: float = 5.0
    scrape_interval_seconds: float = 5.0
    metrics_port: int = 8081
    # Router replicas per model: with two, a crashed or evicted router leaves the other
    # serving (the model's Service sends new connections there) instead of the model.
    router_replicas: int = 2
    # A NetworkPolicy per model in front of its servers (children.network_policies),
    # the namespace the operator runs in (whose pods may reach the servers' admin port),
    # and the labels of the Prometheus pods that scrape them (any namespace).
    network_policies: bool = True
    operator_namespace: str | None = None
    prometheus_pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "prometheus"),)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        store_uri = env.get("RECSERVE_ARTIFACT_STORE", str(Path.home() / ".cache/recserve/store"))
        return cls(
            store=ArtifactStore.from_uri(store_uri, env.get("RECSERVE_ARTIFACT_STORE_LOCAL")),
            builder_image=env.get("RECSERVE_BUILDER_IMAGE", cls.builder_image),
            server_image=env.get("RECSERVE_SERVER_IMAGE", cls.server_image),
            prometheus_url=env.get("RECSERVE_PROMETHEUS_URL") or None,
            reconcile_interval_seconds=float(env.get("RECSERVE_RECONCILE_INTERVAL_SECONDS", 30)),
            optimize_args=tuple(env.get("RECSERVE_OPTIMIZE_ARGS", "").split()),
            server_args=tuple(env.get("RECSERVE_SERVER_ARGS", "").split()),
            profile_jobs_at_once=_count(env, "RECSERVE_PROFILE_JOBS_AT_ONCE"),
            autoscale_tick_seconds=_seconds(env, "RECSERVE_AUTOSCALE_TICK_SECONDS", 5.0),
            scrape_interval_seconds=_seconds(env, "RECSERVE_PROMETHEUS_SCRAPE_SECONDS", 5.0),
            metrics_port=_count(env, "RECSERVE_METRICS_PORT", 8081),
            router_replicas=_at_least_one(env, "RECSERVE_ROUTER_REPLICAS", cls.router_replicas),
            network_policies=env.get("RECSERVE_NETWORK_POLICIES", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            operator_namespace=env.get("RECSERVE_NAMESPACE") or None,
            prometheus_pod_labels=_labels(
                env, "RECSERVE_PROMETHEUS_POD_LABELS", cls.prometheus_pod_labels
            ),
        )


def _labels(
    env: Mapping[str, str], name: str, default: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` (unset: ``default``; empty: no label, i.e. any pod)."""
    raw = env.get(name)
    if raw is None:
        return default
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"{name} must be key=value[,key=value], got {raw!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive duration in seconds (unset or empty: ``default``)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds > 0, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be a number of seconds > 0, got {raw!r}")
    return value


def _at_least_one(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer setting (unset or empty: ``default``)."""
    value = _count(env, name, default)
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, got {value}")
    return value


def _count(env: Mapping[str, str], name: str, default: int = 0) -> int:
    """A non-negative integer setting (unset or empty: ``default``)."""
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number >= 0, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must be a whole number >= 0, got {raw!r}")
    return value
