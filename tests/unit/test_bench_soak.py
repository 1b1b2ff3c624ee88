"""The pure parts of `recserve bench soak`: the plan's capacity, the fault schedule,
failure causes, fault windows and which requests fall in them, p99 per minute, process
series and their growth, the pod a process belongs to, the summary's targets; and the
load generator's moving target (``Target.resolve``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recserve_dev.bench.soak import (
    FAULT_KINDS,
    Fault,
    ProcSample,
    causes,
    default_fault_every_s,
    failure_cause,
    fault_schedule,
    fault_windows,
    per_minute,
    planned_capacity,
    pod_of_environ,
    process_report,
    series_growth,
    split_series,
    summarize,
    window_of,
)
from recserve_dev.loadgen import Target
from recserve_dev.localcluster.agent import POD_MARKER

pytestmark = pytest.mark.unit


def test_planned_capacity_sums_replicas_times_capacity_over_placements() -> None:
    placements = [
        {"pool": "a", "plannedReplicas": 3, "capacityRequestsPerSecond": 33},
        {"pool": "b", "plannedReplicas": 2, "capacityRequestsPerSecond": 10},
        {"pool": "c", "plannedReplicas": None, "capacityRequestsPerSecond": 50},  # unplanned
        {"pool": "d", "plannedReplicas": 4},  # no capacity yet
    ]
    assert planned_capacity(placements) == 3 * 33 + 2 * 10
    assert planned_capacity([]) == 0


def test_default_fault_gap_is_180s_for_the_full_run_and_shorter_for_short_runs() -> None:
    assert default_fault_every_s(30 * 60, 60) == 180
    assert default_fault_every_s(12 * 60, 60) == pytest.approx((720 - 60 - 60) / 6)
    assert default_fault_every_s(4 * 60, 60) == pytest.approx(20)
    assert default_fault_every_s(60, 60) == 10  # never zero


def test_fault_schedule_is_seeded_after_the_warmup_and_before_the_end() -> None:
    a = fault_schedule(7, 60, 600, 50)
    assert a == fault_schedule(7, 60, 600, 50)
    assert a != fault_schedule(8, 60, 600, 50)
    times = [t for t, _ in a]
    assert times == sorted(times)
    assert all(60 < t < 600 for t in times)
    assert len(a) >= 3
    assert fault_schedule(7, 60, 600, 0) == []
    assert fault_schedule(7, 60, 60, 50) == []


def test_fault_kinds_cycle_so_every_kind_comes_once_in_each_run_of_three() -> None:
    faults = fault_schedule(3, 0, 100_000, 20)
    kinds = [k for _, k in faults]
    for i in range(0, len(kinds) - 2, 3):
        assert sorted(kinds[i : i + 3]) == sorted(FAULT_KINDS)
    orders = {tuple(k for _, k in fault_schedule(s, 0, 1000, 10)[:3]) for s in range(30)}
    assert len(orders) > 1  # the cycle's order is shuffled by the seed


def test_fault_gaps_are_exponential_with_the_given_mean() -> None:
    faults = fault_schedule(11, 0, 200_000, 100)
    gaps = np.diff([0.0] + [t for t, _ in faults])
    assert np.mean(gaps) == pytest.approx(100, rel=0.1)
    # exponential: the standard deviation equals the mean, and short gaps are common
    assert np.std(gaps) == pytest.approx(100, rel=0.15)
    assert np.mean(gaps < 100 * math.log(2)) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("status", "error", "cause"),
    [
        (200, "", "ok"),
        (503, "", "http_503"),
        (429, "", "http_429"),
        (0, "TimeoutError", "timeout"),
        (0, "ConnectionRefusedError", "connection_refused"),
        (0, "ConnectionResetError", "connection_lost"),
        (0, "IncompleteReadError", "connection_lost"),
        (0, "BrokenPipeError", "connection_lost"),
        (0, "OSError", "connection_error"),
        (0, "ValueError", "bad_response"),
    ],
)
def test_failure_causes(status: int, error: str, cause: str) -> None:
    assert failure_cause(status, error) == cause


def test_causes_count_failures_only_and_honour_the_mask() -> None:
    status = np.array([200, 503, 0, 0, 0, 200])
    errors = ["", "", "TimeoutError", "ConnectionRefusedError", "ConnectionRefusedError", ""]
    assert causes(status, errors) == {"connection_refused": 2, "http_503": 1, "timeout": 1}
    mask = np.array([True, True, True, False, False, True])
    assert causes(status, errors, mask) == {"http_503": 1, "timeout": 1}


def test_fault_windows_last_until_ready_plus_grace_or_the_end() -> None:
    windows = fault_windows([(100.0, 110.0), (200.0, None), (290.0, 298.0)], 5.0, 300.0)
    assert windows == [(100.0, 115.0), (200.0, 300.0), (290.0, 300.0)]


def test_a_request_in_flight_during_a_window_is_inside_it() -> None:
    windows = [(100.0, 110.0), (105.0, 130.0)]
    send = np.array([50.0, 99.0, 99.0, 104.0, 112.0, 131.0, 110.0])
    lat = np.array([0.1, 0.5, 2.0, 0.1, 0.1, 0.1, 0.0])
    idx = window_of(send, lat, windows)
    # 50 s: long before; 99 + 0.5: done before the kill; 99 + 2: lost to it (inside);
    # 104: the first window; 112: only the second; 131: after both; 110: at the edge
    assert idx.tolist() == [-1, -1, 0, 0, 1, -1, 0]
    assert window_of(send, lat, []).tolist() == [-1] * len(send)


def test_p99_per_minute_counts_failures_as_infinite_and_splits_out_the_windows() -> None:
    # minute 0: 200 ok at 10 ms; minute 1: 200 requests at 20 ms of which 3 failed,
    # 2 of those inside a fault window
    send = np.concatenate([np.linspace(0, 59, 200), np.linspace(60, 119, 200)])
    lat = np.concatenate([np.full(200, 0.010), np.full(200, 0.020)])
    ok = np.ones(400, dtype=bool)
    ok[[250, 251, 390]] = False
    idx = np.full(400, -1)
    idx[[250, 251]] = 0
    rows = per_minute(send, lat, ok, idx, 120.0)
    assert [r["minute"] for r in rows] == [0, 1]
    assert rows[0] == {
        "minute": 0,
        "start_s": 0.0,
        "sent": 200,
        "ok": 200,
        "failed": 0,
        "p99_ok_ms": 10.0,
        "p99_all_ms": 10.0,
        "sent_outside": 200,
        "failed_outside": 0,
        "p99_all_outside_ms": 10.0,
    }
    m1 = rows[1]
    assert (m1["sent"], m1["ok"], m1["failed"]) == (200, 197, 3)
    assert m1["p99_ok_ms"] == 20.0
    assert m1["p99_all_ms"] == math.inf  # 3 of 200 failed: more than 1%
    assert (m1["sent_outside"], m1["failed_outside"]) == (198, 1)
    assert m1["p99_all_outside_ms"] == 20.0  # 1 of 198: within the 1%


def test_a_minute_without_requests_has_no_p99() -> None:
    rows = per_minute(np.array([1.0]), np.array([0.1]), np.array([True]), np.array([-1]), 150.0)
    assert len(rows) == 3
    assert rows[1]["sent"] == 0 and rows[1]["p99_all_ms"] is None and rows[1]["p99_ok_ms"] is None


def _samples(pid: int, t: np.ndarray, rss: np.ndarray, role: str = "server") -> list[ProcSample]:
    pairs = zip(t, rss, strict=True)
    return [ProcSample(float(a), role, "pod-a", pid, float(b), 20) for a, b in pairs]


def test_a_restarted_process_starts_a_new_series() -> None:
    t = np.arange(0, 100, 5.0)
    first = _samples(10, t[t < 50], np.full(10, 100.0))
    second = _samples(11, t[t >= 50], np.full(10, 40.0))
    series = split_series(second + first)  # any order in
    assert set(series) == {("server", "pod-a", 10), ("server", "pod-a", 11)}
    assert [s.t for s in series[("server", "pod-a", 10)]] == list(t[t < 50])


def test_growth_compares_the_last_minute_with_the_minute_after_warmup() -> None:
    t = np.arange(0, 600, 5.0)
    flat = series_growth(list(t), [100.0] * len(t), 60, 60)
    assert flat is not None and flat["growth_pct"] == 0.0
    rising = series_growth(list(t), list(100 + t / 10), 60, 60)  # +0.1 MiB/s
    assert rising is not None
    # baseline: median over [60, 120) = 100 + 8.75; last minute [535, 595] = 100 + 56.5
    assert rising["baseline"] == pytest.approx(108.75)
    assert rising["last"] == pytest.approx(156.5)
    assert rising["growth_pct"] == pytest.approx(100 * (156.5 - 108.75) / 108.75, abs=0.01)
    # the warm-up itself (a big start-up allocation) is not growth
    startup = series_growth(list(t), [500.0 if x < 60 else 100.0 for x in t], 60, 60)
    assert startup is not None and startup["growth_pct"] == 0.0


def test_growth_of_a_restarted_process_waits_for_its_own_warmup_and_needs_two_minutes() -> None:
    t = np.arange(300, 600, 5.0)  # started at 300 s (after a kill)
    g = series_growth(list(t), list(t), 60, 60)
    assert g is not None and g["baseline_from_s"] == 360.0
    assert g["baseline"] == pytest.approx(387.5)  # median over [360, 420)
    assert series_growth(list(np.arange(300, 470, 5.0)), [1.0] * 34, 60, 60) is None
    assert series_growth([], [], 60, 60) is None


def test_process_report_has_growth_per_series() -> None:
    t = np.arange(0, 400, 5.0)
    rows = process_report(
        _samples(10, t, 100 + t / 100) + _samples(20, t[t > 300], np.full(19, 50.0), "router"),
        60,
        60,
    )
    assert [(r["role"], r["pid"]) for r in rows] == [("router", 20), ("server", 10)]
    router, server = rows
    assert router["rss_growth"] is None  # 100 s long: too short
    assert server["rss_growth"]["growth_pct"] > 0
    assert server["fds_growth"]["growth_pct"] == 0.0
    assert server["rss_mb_max"] == pytest.approx(100 + 395 / 100, abs=0.05)


def test_the_pod_of_a_process_comes_from_the_agents_environment() -> None:
    env = f"PATH=/bin\0{POD_MARKER}=/c/pods\0POD_NAMESPACE=soak\0HOSTNAME=soak-router-x\0"
    assert pod_of_environ(env.encode(), "/c/pods") == ("soak", "soak-router-x")
    assert pod_of_environ(env.encode(), "/c/pods2") is None  # another cluster's pod
    assert pod_of_environ(env.encode(), "/c") is None
    assert pod_of_environ(b"PATH=/bin\0HOSTNAME=x\0POD_NAMESPACE=y", "/c/pods") is None
    no_name = f"{POD_MARKER}=/c/pods\0POD_NAMESPACE=soak\0".encode()
    assert pod_of_environ(no_name, "/c/pods") is None


def _fault(kind: str, at: float, ready: float | None) -> Fault:
    return Fault(kind, at, at, "ns", f"{kind}-pod", [1], 0, 1, ready_s=ready)


def test_summary_attributes_losses_to_fault_kinds_and_judges_the_targets() -> None:
    duration, warmup = 300.0, 60.0
    send = np.arange(0, duration, 0.1)
    lat = np.full(len(send), 0.05)
    status = np.full(len(send), 200)
    errors = [""] * len(send)
    faults = [_fault("router", 100, 104), _fault("server", 150, 160), _fault("operator", 200, 205)]

    def fail(t: float, code: int = 0, error: str = "ConnectionRefusedError") -> None:
        i = round(t * 10)
        status[i], errors[i] = code, error

    for t in (100.0, 101.0, 102.5):  # refused while the router is down
        fail(t)
    fail(99.9, error="IncompleteReadError")  # sent before the kill, in flight at it
    lat[999] = 0.2
    fail(99.8, error="IncompleteReadError")  # sent and ended before the kill: outside
    lat[998] = 0.05
    fail(30.0, 503, "")  # during warm-up: not judged
    s = summarize(
        send, lat, status, errors, faults, [], duration_s=duration, warmup_s=warmup,
        slo_s=0.5, grace_s=5.0,
    )  # fmt: skip
    assert s["failed"] == 6
    assert s["lost_beyond_retry_budget"] == {
        "server": 0, "router": 4, "operator": 0, "outside": 1, "total": 5,
    }  # fmt: skip
    assert s["failed_during_warmup"] == 1
    assert s["faults_by_kind"] == {"router": 1, "server": 1, "operator": 1}
    router = s["faults"][0]
    assert router["window"] == [100.0, 109.0] and router["down_s"] == 4.0
    assert router["failed_by_cause"] == {"connection_lost": 1, "connection_refused": 3}
    assert s["failed_outside_windows"] == 2  # with the warm-up's
    assert s["targets"]["zero_lost_outside_router_faults"] is False
    assert s["targets"]["zero_lost_including_router_faults"] is False
    assert s["targets"]["p99_within_slo_outside_windows"] is True
    assert s["targets"]["rss_growth_within_10pct"] is None  # no process sampled

    status[998], errors[998] = 200, ""  # without the failure outside the windows
    s = summarize(
        send, lat, status, errors, faults, [], duration_s=duration, warmup_s=warmup,
        slo_s=0.5, grace_s=5.0,
    )  # fmt: skip
    assert s["lost_beyond_retry_budget"]["outside"] == 0
    assert s["targets"]["zero_lost_outside_router_faults"] is True
    assert s["targets"]["zero_lost_including_router_faults"] is False


def test_summary_counts_the_requests_the_clients_retry_saved_per_fault() -> None:
    """A request whose first try was refused or lost and whose retry succeeded is ok
    (not lost) and counted as saved, in its fault's window."""
    send = np.arange(0, 200, 0.1)
    lat = np.full(len(send), 0.05)
    status = np.full(len(send), 200)
    errors = [""] * len(send)
    first = [""] * len(send)
    faults = [_fault("router", 100, 104)]
    for t, e in ((100.0, "ConnectionRefusedError"), (100.5, "IncompleteReadError")):
        first[round(t * 10)] = e  # retried, then ok
    status[1010], errors[1010], first[1010] = 0, "ConnectionRefusedError", "ConnectionRefusedError"
    s = summarize(
        send, lat, status, errors, faults, [], duration_s=200, warmup_s=60, slo_s=0.5,
        grace_s=5.0, first_errors=first,
    )  # fmt: skip
    assert s["lost_beyond_retry_budget"]["router"] == 1
    assert s["client_retried"] == {
        "requests": 3,
        "first_try_by_cause": {"connection_lost": 1, "connection_refused": 2},
        "saved": 2,
        "by_kind": {"server": 0, "router": 2, "operator": 0, "outside": 0},
    }
    assert s["faults"][0]["saved_by_client_retry"] == 2
    # no client retries (an empty list): nothing counted as saved
    s0 = summarize(
        send, lat, status, errors, faults, [], duration_s=200, warmup_s=60, slo_s=0.5,
        grace_s=5.0,
    )  # fmt: skip
    assert s0["client_retried"]["requests"] == 0 and s0["faults"][0]["saved_by_client_retry"] == 0


def test_summary_p99_target_fails_on_a_slow_minute_outside_the_windows() -> None:
    send = np.arange(0, 240, 0.1)
    lat = np.where((send >= 180) & (send < 200), 0.9, 0.05)  # 20 s slow in minute 3
    status = np.full(len(send), 200)
    faults = [_fault("server", 100, 110)]
    samples = [
        ProcSample(float(t), "server", "p", 1, 100.0 + (30.0 if t > 170 else 0.0), 10)
        for t in np.arange(0, 240, 5.0)
    ]
    s = summarize(
        send, lat, status, [""] * len(send), faults, samples, duration_s=240, warmup_s=60,
        slo_s=0.5, grace_s=5,
    )  # fmt: skip
    assert s["p99_ms_outside_windows_worst_minute"] == 900.0
    assert s["targets"]["p99_within_slo_outside_windows"] is False
    assert s["rss_growth_pct_max"]["server"] == 30.0
    assert s["targets"]["rss_growth_within_10pct"] is False
    # slow only inside the fault's window: not judged by the p99 target
    lat2 = np.where((send >= 100) & (send < 112), 0.9, 0.05)
    s2 = summarize(
        send, lat2, status, [""] * len(send), faults, [], duration_s=240, warmup_s=60,
        slo_s=0.5, grace_s=5,
    )  # fmt: skip
    assert s2["targets"]["p99_within_slo_outside_windows"] is True
    assert s2["per_minute"][1]["p99_all_ms"] == 900.0


def test_a_target_that_moves_connects_where_resolve_says() -> None:
    answers = iter([("127.0.0.2",), ("127.0.0.2", "127.0.0.3"), ()])
    target = Target("127.0.0.1", 8080, "/v1/rank", [b"{}"], resolve=lambda: next(answers))
    assert target.current_hosts() == ("127.0.0.2",)
    assert target.current_hosts() == ("127.0.0.2", "127.0.0.3")
    assert target.current_hosts() == ("127.0.0.1",)  # none: the first address
    assert Target("127.0.0.1", 8080, "/", [b"{}"]).current_hosts() == ("127.0.0.1",)
    away = Target("127.0.0.1", 8080, "/", [b"{}"], resolve=lambda: ("127.0.0.2", "10.0.0.1"))
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        away.current_hosts()
