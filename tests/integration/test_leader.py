"""Leader election against the real API server: exactly one of several candidates
leads; a leader that stops renewing is replaced after the lease duration, one that
releases at once; concurrent take-overs never make two leaders."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import client

from recserve_operator.leader import LeaderElector
from tests.helpers import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def candidates(k8s: Any, namespace: str, n: int, duration_s: int = 3) -> list[LeaderElector]:
    api = client.CoordinationV1Api(k8s)
    return [
        LeaderElector(api, namespace, "lease", f"c{i}", duration_s, renew_s=1.0, retry_s=0.2)
        for i in range(n)
    ]


def holder(k8s: Any, namespace: str) -> str | None:
    lease = client.CoordinationV1Api(k8s).read_namespaced_lease("lease", namespace)
    return lease.spec.holder_identity  # type: ignore[no-any-return]


@pytest.mark.fault(
    "two operator candidates take an expired Lease at the same moment",
    expect="exactly one leads (the other's write gets 409)",
)
def test_exactly_one_of_concurrent_candidates_leads(k8s: Any, namespace: str) -> None:
    electors = candidates(k8s, namespace, 4)
    barrier = threading.Barrier(len(electors))
    wins: list[str] = []

    def race(e: LeaderElector) -> None:
        barrier.wait()
        if e.try_once():
            wins.append(e.identity)

    threads = [threading.Thread(target=race, args=(e,)) for e in electors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1, wins
    assert holder(k8s, namespace) == wins[0]
    others = [e for e in electors if e.identity != wins[0]]
    assert not any(e.try_once() for e in others), "a fresh lease is nobody else's"


@pytest.mark.fault(
    "the leading operator stops renewing its Lease",
    expect="replaced after the lease duration; the old leader notices and exits",
)
def test_a_silent_leader_is_replaced_after_the_lease_duration(k8s: Any, namespace: str) -> None:
    first, second = candidates(k8s, namespace, 2, duration_s=3)
    assert first.try_once()
    started = time.monotonic()
    assert second.acquire()  # `first` never renews again (killed)
    waited = time.monotonic() - started
    assert 2.0 <= waited <= 6.0, waited
    assert holder(k8s, namespace) == "c1"
    lease = client.CoordinationV1Api(k8s).read_namespaced_lease("lease", namespace)
    assert lease.spec.lease_transitions == 1
    # the old leader learns it lost: its renewal thread gives up at once
    lost = threading.Event()
    first.keep(on_lost=lost.set)
    assert lost.wait(5), "the replaced leader did not notice"


@pytest.mark.fault(
    "the leading operator shuts down (releases its Lease)", expect="taken over at once"
)
def test_a_released_lease_is_taken_over_at_once(k8s: Any, namespace: str) -> None:
    first, second = candidates(k8s, namespace, 2, duration_s=30)
    assert first.try_once()
    assert not second.try_once()
    first.release()
    started = time.monotonic()
    assert second.acquire()
    assert time.monotonic() - started < 2.0
    assert holder(k8s, namespace) == "c1"


def test_a_leader_keeps_the_lease_by_renewing(k8s: Any, namespace: str) -> None:
    first, second = candidates(k8s, namespace, 2, duration_s=3)
    assert first.try_once()
    lost = threading.Event()
    first.keep(on_lost=lost.set)
    deadline = time.monotonic() + 7  # more than two lease durations
    while time.monotonic() < deadline:
        assert not second.try_once()
        time.sleep(0.5)
    assert not lost.is_set()
    first.stop()
    eventually(second.try_once, timeout=10, interval=0.5, what="takeover after renewals stop")
