"""Leader election on a ``coordination.k8s.io/v1`` Lease, as controller-runtime does it.

With two or more operator replicas, exactly one runs the reconcilers and the
autoscaler; the others wait as warm standbys. The leader renews the Lease every
``renew_s``; a standby takes it over once it has not been renewed for
``leaseDurationSeconds`` (the leader was killed or cut off), or at once when the leader
released it on a clean shutdown. Every write carries the Lease's resourceVersion, so of
two standbys taking over at the same moment exactly one succeeds (the other gets 409).
A leader that cannot renew for a whole lease duration stops acting at once (the process
exits) before a standby can have taken over.

Why not kopf's peering: peers of equal priority all freeze (so replicas of one
Deployment, which share their settings, would serve nothing), and peering pauses kopf's
handlers but not the autoscaling loop, which is an asyncio task of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

log = logging.getLogger("recserve.leader")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about who leads."""

    holder: str | None
    renew_time: datetime | None
    duration_s: int
    transitions: int = 0


class Action(StrEnum):
    """What a candidate does about the Lease it read."""

    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE_OVER = "take-over"  # released, or not renewed for a whole duration
    WAIT = "wait"  # somebody else's, and fresh


def decide(record: LeaseRecord | None, identity: str, now: datetime) -> Action:
    """The candidate ``identity``'s move on ``record`` at ``now`` (pure)."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder or record.renew_time is None:
        return Action.TAKE_OVER
    if now >= record.renew_time + timedelta(seconds=record.duration_s):
        return Action.TAKE_OVER
    return Action.WAIT


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or None,
        renew_time=spec.renew_time,
        duration_s=int(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
    )


class LeaderElector:
    """One candidate for the Lease ``namespace/name`` (I/O at the edge of :func:`decide`)."""

    def __init__(
        self,
        api: Any,  # kubernetes.client.CoordinationV1Api
        namespace: str,
        name: str,
        identity: str,
        duration_s: int = 15,
        renew_s: float = 5.0,
        retry_s: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration_s, self.renew_s, self.retry_s = duration_s, renew_s, retry_s
        self.clock = clock
        self.holder: str | None = None  # the leader as last read
        self._stop = threading.Event()

    def try_once(self) -> bool:
        """Read the Lease and act on it once; True when this candidate leads after it.
        A lost race (409) or an unreachable API server is False, never an exception."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        now = self.clock()
        try:
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                lease = None
            record = _record(lease) if lease is not None else None
            action = decide(record, self.identity, now)
            self.holder = record.holder if record else None
            if action == Action.WAIT:
                return False
            spec = client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.duration_s,
                renew_time=now,
                acquire_time=now if action != Action.RENEW else lease.spec.acquire_time,
                lease_transitions=(record.transitions if record else 0)
                + (1 if action == Action.TAKE_OVER else 0),
            )
            if action == Action.CREATE:
                body = client.V1Lease(
                    metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=spec,
                )
                self.api.create_namespaced_lease(self.namespace, body)
            else:
                lease.spec = spec  # resourceVersion kept: a concurrent writer gets 409
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status != 409:
                log.warning("lease %s/%s: API error %s", self.namespace, self.name, exc.status)
            return False
        except Exception as exc:  # the API server is down or unreachable: try again
            log.warning("lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
            return False
        if action == Action.TAKE_OVER:
            log.info("took over lease %s/%s from %s", self.namespace, self.name, self.holder)
        self.holder = self.identity
        return True

    def acquire(self) -> bool:
        """Block until this candidate leads (True) or :meth:`stop` was called (False)."""
        announced: str | None = None
        while not self._stop.is_set():
            if self.try_once():
                log.info(
                    "leading: lease %s/%s held by %s", self.namespace, self.name, self.identity
                )
                return True
            if self.holder != announced:
                announced = self.holder
                log.info(
                    "standing by: lease %s/%s held by %s", self.namespace, self.name, announced
                )
            self._stop.wait(self.retry_s)
        return False

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; call ``on_lost`` once the Lease is somebody else's,
        or has not been renewed for ``duration_s`` minus one renew period (so this leader
        stops before any standby may take over)."""

        def renew() -> None:
            last = time.monotonic()
            while not self._stop.wait(self.renew_s):
                if self.try_once():
                    last = time.monotonic()
                    continue
                taken = self.holder not in (None, self.identity)
                if taken or time.monotonic() - last >= self.duration_s - self.renew_s:
                    log.error(
                        "lost lease %s/%s (held by %s; last renewed %.0f s ago): stopping",
                        self.namespace, self.name, self.holder, time.monotonic() - last,
                    )  # fmt: skip
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop waiting or renewing."""
        self._stop.set()

    def release(self) -> None:
        """Give the Lease up (a clean shutdown): a standby takes over at once."""
        from kubernetes.client.rest import ApiException

        self.stop()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiException, OSError) as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
