"""Router backend choice, ejection and discovery parsing (pure logic)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from recserve_runtime.router.balancer import CANARY, POLICIES, STABLE, Balancer, Target
from recserve_runtime.router.discovery import endpoints_from_slices, parse_static

pytestmark = pytest.mark.unit


def _balancer(policy: str = "p2c") -> Balancer:
    b = Balancer(policy=policy, seed=1)
    b.set_backends([("127.0.0.1", 1), ("127.0.0.1", 2)])
    return b


def _teach(bal: Balancer, key: str, latency_s: float, n: int = 10, now: float = 0.0) -> None:
    backend = bal.backends[key]
    for _ in range(n):
        bal.started(backend)
        bal.finished(backend, latency_s, True, now)


def test_p2c_prefers_the_faster_backend() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.002)
    _teach(bal, "127.0.0.1:2", 0.010)
    picks = Counter(bal.choose(0.0).key for _ in range(100))  # type: ignore[union-attr]
    assert picks["127.0.0.1:1"] == 100


def test_p2c_spills_to_the_slow_backend_when_the_fast_one_is_deep() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.002)
    _teach(bal, "127.0.0.1:2", 0.010)
    fast = bal.backends["127.0.0.1:1"]
    for _ in range(6):  # 7 x 2 ms > 1 x 10 ms
        bal.started(fast)
    assert bal.choose(0.0).key == "127.0.0.1:2"  # type: ignore[union-attr]


def test_stale_latency_decays_so_a_slow_backend_is_probed_again() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.002, now=100.0)
    _teach(bal, "127.0.0.1:2", 0.050, now=90.0)
    slow = bal.backends["127.0.0.1:2"]
    assert bal.expected_s(slow, 90.0) == pytest.approx(0.050)
    assert bal.expected_s(slow, 100.0) < 0.050 * 0.01  # 10 s stale with decay_s=2
    assert bal.choose(100.0).key == "127.0.0.1:2"  # type: ignore[union-attr]


def test_unknown_backend_assumes_the_average_not_zero() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.004)
    assert bal.expected_s(bal.backends["127.0.0.1:2"], 0.0) == pytest.approx(0.004)


def test_round_robin_alternates_regardless_of_latency() -> None:
    bal = _balancer("round-robin")
    _teach(bal, "127.0.0.1:1", 0.001)
    _teach(bal, "127.0.0.1:2", 0.100)
    picks = Counter(bal.choose(0.0).key for _ in range(100))  # type: ignore[union-attr]
    assert picks["127.0.0.1:1"] == picks["127.0.0.1:2"] == 50


def test_least_request_takes_the_fewest_in_flight_and_alternates_ties() -> None:
    bal = _balancer("least-request")
    _teach(bal, "127.0.0.1:1", 0.001)  # latency plays no part
    _teach(bal, "127.0.0.1:2", 0.100)
    busy = bal.backends["127.0.0.1:1"]
    bal.started(busy)
    assert all(bal.choose(0.0).key == "127.0.0.1:2" for _ in range(10))  # type: ignore[union-attr]
    bal.finished(busy, 0.001, True, 0.0)
    picks = Counter(bal.choose(0.0).key for _ in range(100))  # type: ignore[union-attr]
    assert picks["127.0.0.1:1"] == picks["127.0.0.1:2"] == 50


def test_consecutive_failures_eject_and_readmit_restores() -> None:
    bal = _balancer()
    bad = bal.backends["127.0.0.1:2"]
    for _ in range(2):
        bal.started(bad)
        bal.finished(bad, 0.0, False, 0.0)
    assert bad.healthy
    bal.started(bad)
    bal.finished(bad, 0.0, False, 0.0)
    assert not bad.healthy
    assert all(bal.choose(0.0).key == "127.0.0.1:1" for _ in range(20))  # type: ignore[union-attr]
    bal.readmit(bad)
    assert bad.healthy and bad.consecutive_failures == 0


def test_a_success_resets_the_failure_count() -> None:
    bal = _balancer()
    b = bal.backends["127.0.0.1:1"]
    for ok in (False, False, True, False, False):
        bal.started(b)
        bal.finished(b, 0.001, ok, 0.0)
    assert b.healthy


def test_exclude_and_no_healthy_backend() -> None:
    bal = _balancer()
    assert bal.choose(0.0, {"127.0.0.1:1"}).key == "127.0.0.1:2"  # type: ignore[union-attr]
    for b in bal.backends.values():
        bal.eject(b)
    assert bal.choose(0.0) is None


def test_busy_backend_is_penalized_not_ejected() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.002)
    b = bal.backends["127.0.0.1:1"]
    bal.started(b)
    bal.busy(b, 0.0005, 0.0)
    assert b.healthy and b.ewma_s > 0.002


def test_set_backends_keeps_learned_state() -> None:
    bal = _balancer()
    _teach(bal, "127.0.0.1:1", 0.003)
    bal.set_backends([("127.0.0.1", 1), ("127.0.0.1", 3)])
    assert set(bal.backends) == {"127.0.0.1:1", "127.0.0.1:3"}
    assert bal.backends["127.0.0.1:1"].samples == 10


def _tracked(percent: int | None, policy: str = "p2c") -> Balancer:
    """Ports 1, 2 stable; 3, 4 canary."""
    bal = Balancer(policy=policy, seed=7, canary_percent=percent)
    bal.set_backends(
        [Target("127.0.0.1", 1), ("127.0.0.1", 2),
         Target("127.0.0.1", 3, CANARY), Target("127.0.0.1", 4, CANARY)]
    )  # fmt: skip
    return bal


def _canary_picks(bal: Balancer, n: int, exclude: set[str] | None = None) -> int:
    picks = [bal.choose(0.0, exclude) for _ in range(n)]
    assert all(p is not None for p in picks)
    return sum(p.track == CANARY for p in picks if p is not None)


@pytest.mark.parametrize("policy", POLICIES)
def test_canary_gets_its_weighted_share_under_every_policy(policy: str) -> None:
    bal = _tracked(10, policy)
    assert 0.085 <= _canary_picks(bal, 10_000) / 10_000 <= 0.115


@pytest.mark.parametrize("policy", POLICIES)
def test_the_policy_still_chooses_within_the_track(policy: str) -> None:
    bal = _tracked(50, policy)
    _teach(bal, "127.0.0.1:1", 0.002)
    _teach(bal, "127.0.0.1:2", 0.020)
    picks = Counter(bal.choose(0.0).key for _ in range(2_000))  # type: ignore[union-attr]
    stable = (picks["127.0.0.1:1"], picks["127.0.0.1:2"])
    if policy == "p2c":  # the faster stable backend takes every stable request
        assert stable[1] == 0 and stable[0] > 800
    else:  # a turn of its own per track: the stable ones alternate exactly
        assert abs(stable[0] - stable[1]) <= 1 and sum(stable) > 800


def test_canary_at_0_percent_gets_nothing_and_at_100_everything() -> None:
    assert _canary_picks(_tracked(0), 2_000) == 0
    assert _canary_picks(_tracked(100), 2_000) == 2_000


def test_without_a_weight_tracks_play_no_part() -> None:
    """No --weights-config-map: canary pods are ordinary backends, as before canaries."""
    assert 0.45 <= _canary_picks(_tracked(None, "round-robin"), 2_000) / 2_000 <= 0.55


def test_an_unhealthy_track_leaves_its_requests_to_the_other() -> None:
    bal = _tracked(100)
    for key in ("127.0.0.1:3", "127.0.0.1:4"):
        bal.eject(bal.backends[key])
    assert _canary_picks(bal, 500) == 0
    bal = _tracked(0)
    for key in ("127.0.0.1:1", "127.0.0.1:2"):
        bal.eject(bal.backends[key])
    assert _canary_picks(bal, 500) == 500  # availability first


def test_the_retry_of_a_failed_canary_request_lands_on_stable() -> None:
    bal = _tracked(10)
    bal.set_backends([("127.0.0.1", 1), ("127.0.0.1", 2), Target("127.0.0.1", 3, CANARY)])
    assert _canary_picks(bal, 500, exclude={"127.0.0.1:3"}) == 0
    bal.canary_percent = 100  # even at 100 %: the only canary has failed this request
    assert _canary_picks(bal, 500, exclude={"127.0.0.1:3"}) == 0
    assert _canary_picks(bal, 500, exclude={"127.0.0.1:1"}) == 500


def test_set_backends_updates_the_track_and_keeps_learned_state() -> None:
    bal = _tracked(0)
    _teach(bal, "127.0.0.1:3", 0.003)
    bal.set_backends([Target("127.0.0.1", 3, STABLE), Target("127.0.0.1", 1, CANARY)])
    assert bal.backends["127.0.0.1:3"].track == STABLE
    assert bal.backends["127.0.0.1:3"].samples == 10
    assert bal.backends["127.0.0.1:1"].track == CANARY
    assert all(bal.choose(0.0).key == "127.0.0.1:3" for _ in range(50))  # type: ignore[union-attr]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        Balancer(policy="random")


def test_parse_static() -> None:
    assert parse_static(["127.0.0.1:80,http://localhost:81/", "[::1]:82"]) == [
        ("127.0.0.1", 80), ("localhost", 81), ("[::1]", 82),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        parse_static(["nohost"])


def test_endpoints_from_slices_keeps_ready_addresses_and_named_port() -> None:
    ep = SimpleNamespace
    slices = [
        ep(
            ports=[ep(name="metrics", port=9090), ep(name="http", port=8080)],
            endpoints=[
                ep(addresses=["10.0.0.1"], conditions=ep(ready=True)),
                ep(addresses=["10.0.0.2"], conditions=ep(ready=False)),
                ep(addresses=["10.0.0.3"], conditions=None),
            ],
        ),
        ep(ports=None, endpoints=None),
    ]
    assert endpoints_from_slices(slices, "http", 1) == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]
    assert endpoints_from_slices(slices[:1], None, 1)[0] == ("10.0.0.1", 9090)
