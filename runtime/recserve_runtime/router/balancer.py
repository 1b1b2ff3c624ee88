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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

POLICIES = ("p2c", "least-request", "round-robin")


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
    backends: dict[str, Backend] = field(default_factory=dict)
    _rr: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}")
        self._rng = random.Random(self.seed)

    def set_backends(self, addrs: list[tuple[str, int]]) -> None:
        """Replace the backend set, keeping what is known about backends that stay."""
        keep: dict[str, Backend] = {}
        for host, port in addrs:
            key = f"{host}:{port}"
            keep[key] = self.backends.get(key) or Backend(host, port)
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
        if self.policy == "round-robin":
            self._rr += 1
            return pool[self._rr % len(pool)]
        if self.policy == "least-request":
            self._rr += 1
            fewest = min(b.inflight for b in pool)
            tied = [b for b in pool if b.inflight == fewest]
            return tied[self._rr % len(tied)]
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        return a if self.score(a, now) <= self.score(b, now) else b

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
