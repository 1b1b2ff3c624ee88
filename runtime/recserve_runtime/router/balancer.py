"""Backend choice: power-of-two-choices weighted by live latency (pure logic, no I/O).

Each backend keeps an EWMA of its observed request latency and its in-flight count. A
request goes to the better of two randomly drawn healthy backends, scored by
``ewma * (inflight + 1)`` — the expected wait if it joined that backend. An EWMA that
has not been refreshed decays toward zero (``decay_s``), so a backend that was slow once
is probed again later instead of starving forever. Backends that fail
``eject_after`` times in a row are ejected and come back after a successful health
check. The baselines of the serving benchmark are policies here too, under the same
retry rule: round-robin, and least-request (the backend with the fewest requests in
flight, ties in turn: nginx's ``least_conn``; Envoy's ``LEAST_REQUEST`` draws two
backends and takes the one with fewer, the same choice when there are two).

Canary rollouts: each backend is on a track, ``stable`` or ``canary`` (the pod label
``recserve.io/track``). While both tracks have backends that may take a request, a
request first picks its track — the canary with probability ``canary_percent / 100``,
drawn from the balancer's RNG — and the policy then chooses within that track. With
``canary_percent`` None (the router without ``--weights-config-map``) tracks play no part.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

POLICIES = ("p2c", "least-request", "round-robin")
TRACK_LABEL = "recserve.io/track"
STABLE = "stable"
CANARY = "canary"


class Target(NamedTuple):
    """A backend address as discovery finds it, with the track of its pod."""

    host: str
    port: int
    track: str = STABLE


@dataclass
class Backend:
    """One upstream server and what the router has learned about it."""

    host: str
    port: int
    ewma_s: float = 0.0
    samples: int = 0
    inflight: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    last_seen: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    track: str = STABLE

    @property
    def key(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


@dataclass
class Balancer:
    """Chooses backends and learns from the outcome of each request."""

    policy: str = "p2c"  # one of POLICIES
    alpha: float = 0.2
    decay_s: float = 2.0
    eject_after: int = 3
    seed: int | None = None
    # share of requests for the canary track, 0..100; None: no split, tracks play no part
    canary_percent: int | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    _turns: dict[str, int] = field(default_factory=dict)  # round-robin position per track

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}")
        self._rng = random.Random(self.seed)

    def set_backends(self, addrs: Iterable[tuple[str, int] | Target]) -> None:
        """Replace the backend set, keeping what is known about backends that stay
        (a plain ``(host, port)`` is on the stable track; a backend whose track changed
        keeps its latency, which belongs to the pod, not to the track)."""
        keep: dict[str, Backend] = {}
        for addr in addrs:
            t = addr if isinstance(addr, Target) else Target(*addr)
            key = f"{t.host}:{t.port}"
            b = keep[key] = self.backends.get(key) or Backend(t.host, t.port)
            b.track = t.track
        self.backends = keep

    def healthy(self) -> list[Backend]:
        """Backends that may receive traffic."""
        return [b for b in self.backends.values() if b.healthy]

    def expected_s(self, b: Backend, now: float) -> float:
        """Latency estimate with decay toward zero when stale."""
        if b.samples == 0:  # unknown: assume the average of the known ones
            known = [o.ewma_s for o in self.backends.values() if o.samples and o.healthy]
            return sum(known) / len(known) if known else 0.001
        age = max(0.0, now - b.last_seen)
        return b.ewma_s * math.exp(-age / self.decay_s)

    def score(self, b: Backend, now: float) -> float:
        """Expected wait if a request joined ``b``."""
        return self.expected_s(b, now) * (b.inflight + 1) + 1e-6 * b.inflight

    def choose(self, now: float, exclude: set[str] | None = None) -> Backend | None:
        """A backend for the next request (None when none is healthy)."""
        pool = [b for b in self.healthy() if not exclude or b.key not in exclude]
        if not pool:
            return None
        pool = self._track_pool(pool)
        if self.policy in ("round-robin", "least-request"):
            turn = self._turns[pool[0].track] = self._turns.get(pool[0].track, 0) + 1
            if self.policy == "least-request":
                fewest = min(b.inflight for b in pool)
                pool = [b for b in pool if b.inflight == fewest]
            return pool[turn % len(pool)]
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        return a if self.score(a, now) <= self.score(b, now) else b

    def _track_pool(self, pool: list[Backend]) -> list[Backend]:
        """The backends of ``pool`` on the track this request goes to.

        The split is drawn only when both tracks have a backend in ``pool`` (healthy and
        not excluded). When only one track does, it serves whatever the weight says:
        availability first — a request is better answered by the other track than
        refused. So at 0 % the canary takes requests only when no stable backend can,
        and a retry (its failed backend excluded) follows the same rule."""
        if self.canary_percent is None:
            return pool
        canary = [b for b in pool if b.track == CANARY]
        if not canary or len(canary) == len(pool):
            return pool
        if self._rng.random() * 100 < self.canary_percent:
            return canary
        return [b for b in pool if b.track != CANARY]

    def started(self, b: Backend) -> None:
        """A request was sent to ``b``."""
        b.inflight += 1

    def finished(self, b: Backend, latency_s: float, ok: bool, now: float) -> None:
        """Record the outcome; ejects ``b`` after ``eject_after`` failures in a row."""
        b.inflight = max(0, b.inflight - 1)
        if ok:
            b.consecutive_failures = 0
            b.ewma_s = (
                latency_s if b.samples == 0 else b.ewma_s + self.alpha * (latency_s - b.ewma_s)
            )
            b.samples += 1
            b.last_seen = now
            return
        b.consecutive_failures += 1
        if b.consecutive_failures >= self.eject_after:
            b.healthy = False

    def busy(self, b: Backend, latency_s: float, now: float) -> None:
        """The backend refused with 429: count it as slow, but not as broken."""
        b.inflight = max(0, b.inflight - 1)
        penalty = max(latency_s, b.ewma_s * 2, 0.001)
        b.ewma_s = penalty if b.samples == 0 else b.ewma_s + self.alpha * (penalty - b.ewma_s)
        b.samples += 1
        b.last_seen = now

    def eject(self, b: Backend) -> None:
        """Take ``b`` out at once (connection refused, health check failed)."""
        b.healthy = False

    def readmit(self, b: Backend) -> None:
        """Back in service after a good health check; its old latency is forgotten."""
        b.healthy = True
        b.consecutive_failures = 0
        b.samples = 0
        b.ewma_s = 0.0
