"""`recserve bench soak`: steady load through the router for a long time, with faults.

On the local control plane (real kube-apiserver, etcd, controller manager, scheduler, the
node agent running pods as local processes, Prometheus), the chart is installed as
`recserve bench autoscale` installs it (its ``Bench`` is reused) and one RecModel serves
the synthetic test model with ``replicas: Static`` (replica counts stay at the plan: the
faults are the only disturbance). Open-loop Poisson load at ``--load-fraction`` (0.7) of
the planned capacity (sum over placements of ``plannedReplicas x
capacityRequestsPerSecond``, from the RecModel's status) goes through the model's router
for ``--minutes`` (30), while a fault injector SIGKILLs the processes of a server pod,
the router pod or the operator pod (a crash: the node agent restarts the container with
back-off, as kubelet would) at random times (exponential gaps, mean ``--fault-every-s``,
seeded, the first after ``--warmup-s``; the kinds cycle through a seeded shuffle).
Router pods: the chart's ``router.replicas`` (default 2), or ``--router-replicas``.

EMULATED: the servers run in emulated-device mode (a batch's time is slept, not
computed: 40 ms + 0.15 ms per row, as in `recserve bench autoscale`), so each replica has
a fixed capacity without using this machine's two cores, which the load generator, the
router, the operator and the control plane share. The real demo model's compute would
compete with the load generator. HTTP, the router, the operator, pod restarts and
readiness are real.

Measured: requests sent, ok and failed by cause (HTTP status, timeout, connection
refused, connection lost mid-request), inside and outside the fault windows (from a kill
until the killed pod is Ready again in the API, plus ``--window-grace-s``; a request is
inside when it was in flight during a window); p99 per minute (of the ok requests, and
with failures counted as infinitely slow); RSS and open file descriptors of every server,
router and operator process every 5 s, and their growth (median of the last minute
against the median of the minute after warm-up, per uninterrupted process: a restarted
process starts a new series, with its own warm-up).

The client follows the router as a Service would: a watcher lists the model's Ready
router pods every 0.5 s and new connections go to one of them (there is no kube-proxy on
the local control plane; clients reach pods by IP). It retries as docs/serving.md
advises clients: a request whose connection was refused or lost is sent once more to
another router pod (``--client-retries``, default 1; 0 never retries).

Progress goes to stderr; the last stdout line is one JSON object; details (per-minute
and per-process series, the faults) go to ``--out``. See docs/bench-soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recserve_dev.bench.autoscale import POOL, US_PER_BATCH, US_PER_ROW, finite, p99_all

FAULT_KINDS = ("server", "router", "operator")
MODEL = "soak"  # the RecModel (and the namespace it lives in)
OPERATOR_NAMESPACE = "recserve-bench"  # where Bench installs the chart
ROUTER_PORT = 8080
SAMPLE_EVERY_S = 5.0
WATCH_EVERY_S = 0.5
MINUTE_S = 60.0
GROWTH_TARGET_PCT = 10.0
END_MARGIN_S = 60.0  # no fault scheduled in the last minute (it is the growth's window)
SEED = 20240601
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What "lost beyond the documented retry budget" means for each fault kind. The budget
# (docs/serving.md, "Retries") has two parts: the router's (`recserve route`: a request
# that fails on a backend with a connection error or a 5xx other than 504, or is
# refused with 429, is retried once on another backend) and the client's (a request
# whose connection to a router was refused or lost is sent once more to another router
# pod: `--client-retries`, default 1; 0 is a client that never retries). A request the
# client sees fail has used that budget (or had none).
RETRY_BUDGET = {
    "server": "the router retries a request that failed on the killed server (connection "
    "error, 5xx, 429) once on another backend, and ejects a refusing backend: every "
    "request the client sees fail is lost beyond the budget (both tries failed)",
    "router": "the client sends a request whose connection to the killed router was "
    "refused (never sent) or lost (in flight; ranking is read-only) once more to another "
    "router pod (--client-retries); what still fails is lost beyond the budget. With "
    "--client-retries 0, or one router pod, every request in flight at the killed router "
    "or sent to it before its pod is seen not Ready is lost",
    "operator": "the operator is not on the request path: any failure while it is down "
    "is lost beyond the budget",
    "outside": "no fault: any failure is lost beyond the budget",
}


def _log(msg: str) -> None:
    print(f"[bench soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- plan and schedule (pure) ---------------------------------------------------------
def planned_capacity(placements: Sequence[dict[str, Any]]) -> float:
    """Requests per second the plan's replicas serve at full load: the sum over
    placements of ``plannedReplicas x capacityRequestsPerSecond`` (RecModel status; a
    placement without either counts 0)."""
    return float(
        sum(
            int(p.get("plannedReplicas") or 0) * float(p.get("capacityRequestsPerSecond") or 0)
            for p in placements
        )
    )


def default_fault_every_s(duration_s: float, warmup_s: float) -> float:
    """180 s for a 30-minute run; shorter runs get a mean that still gives about six
    faults (at least two of each kind) between the warm-up and the last minute."""
    span = max(duration_s - warmup_s - END_MARGIN_S, 0.0)
    return max(10.0, min(180.0, span / 6))


def fault_schedule(
    seed: int,
    start_s: float,
    end_s: float,
    mean_s: float,
    kinds: Sequence[str] = FAULT_KINDS,
) -> list[tuple[float, str]]:
    """Fault times and kinds: the first at ``start_s`` plus an exponential gap of mean
    ``mean_s``, then exponential gaps, all before ``end_s``; the kinds cycle through a
    seeded shuffle of ``kinds`` (every kind once in each run of ``len(kinds)`` faults).
    The same seed gives the same schedule."""
    if mean_s <= 0 or not kinds:
        return []
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    out: list[tuple[float, str]] = []
    t = start_s + rng.expovariate(1.0 / mean_s)
    for kind in itertools.cycle(order):
        if t >= end_s:
            break
        out.append((t, kind))
        t += rng.expovariate(1.0 / mean_s)
    return out


# -- requests (pure) ------------------------------------------------------------------
def failure_cause(status: int, error: str) -> str:
    """What ended a request: ``ok``, ``http_<code>``, ``timeout``, ``connection_refused``
    (nothing listening), ``connection_lost`` (reset or closed before the whole answer:
    in flight when the peer died), ``connection_error`` (any other socket error) or
    ``bad_response``."""
    if status == 200:
        return "ok"
    if status:
        return f"http_{status}"
    if error == "TimeoutError":
        return "timeout"
    if error == "ConnectionRefusedError":
        return "connection_refused"
    if error in ("ConnectionResetError", "BrokenPipeError", "IncompleteReadError"):
        return "connection_lost"
    if error == "ValueError":
        return "bad_response"
    return "connection_error"


def causes(
    status: np.ndarray, errors: Sequence[str], mask: np.ndarray | None = None
) -> dict[str, int]:
    """Failed requests (status not 200) by :func:`failure_cause`, where ``mask`` holds."""
    picked = np.nonzero(status != 200 if mask is None else (status != 200) & mask)[0]
    count = Counter(
        failure_cause(int(status[i]), errors[i] if i < len(errors) else "") for i in picked.tolist()
    )
    return dict(sorted(count.items()))


def fault_windows(
    faults: Sequence[tuple[float, float | None]], grace_s: float, end_s: float
) -> list[tuple[float, float]]:
    """``(start, end)`` of each fault's window from ``(killed at, Ready again at)``: from
    the kill until Ready again plus ``grace_s``; a fault never seen Ready again lasts to
    ``end_s``. Seconds from the start of the load."""
    return [(at, end_s if ready is None else min(ready + grace_s, end_s)) for at, ready in faults]


def window_of(
    send_s: np.ndarray, latency_s: np.ndarray, windows: Sequence[tuple[float, float]]
) -> np.ndarray:
    """For each request, the index of the first window it was in flight during (sent at
    ``send_s``, ended ``latency_s`` later: a request sent before a kill and lost by it is
    inside), or -1. ``latency_s`` must be finite (the time a failure took)."""
    idx = np.full(len(send_s), -1, dtype=np.int64)
    done = send_s + latency_s
    for j, (a, b) in enumerate(windows):
        hit = (idx == -1) & (send_s <= b) & (done >= a)
        idx[hit] = j
    return idx


def per_minute(
    send_s: np.ndarray,
    latency_s: np.ndarray,
    ok: np.ndarray,
    window_idx: np.ndarray,
    duration_s: float,
    bin_s: float = MINUTE_S,
) -> list[dict[str, Any]]:
    """One row per minute of send time: requests sent, ok, failed, p99 of the ok ones,
    p99 of all (failures as infinitely slow), and the same outside the fault windows
    (``window_idx`` -1). Milliseconds; None where no request qualifies."""
    rows: list[dict[str, Any]] = []
    for k in range(max(1, math.ceil(duration_s / bin_s - 1e-9))):
        a, b = k * bin_s, (k + 1) * bin_s
        m = (send_s >= a) & (send_s < b)
        out = m & (window_idx == -1)
        all_lat = np.where(ok, latency_s, np.inf)
        rows.append(
            {
                "minute": k,
                "start_s": a,
                "sent": int(np.count_nonzero(m)),
                "ok": int(np.count_nonzero(m & ok)),
                "failed": int(np.count_nonzero(m & ~ok)),
                "p99_ok_ms": _ms(p99_all(latency_s[m & ok])),
                "p99_all_ms": _ms(p99_all(all_lat[m])),
                "sent_outside": int(np.count_nonzero(out)),
                "failed_outside": int(np.count_nonzero(out & ~ok)),
                "p99_all_outside_ms": _ms(p99_all(all_lat[out])),
            }
        )
    return rows


def _ms(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return math.inf if math.isinf(seconds) else round(seconds * 1000, 1)


# -- processes (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: RSS (MiB) and open file descriptors."""

    t: float  # seconds from the start of the load
    role: str  # server | router | operator
    pod: str
    pid: int
    rss_mb: float
    fds: int


def split_series(samples: Iterable[ProcSample]) -> dict[tuple[str, str, int], list[ProcSample]]:
    """Samples grouped by process (role, pod, pid), in time order: a restarted
    container's process has a new pid, so it starts a new series."""
    out: dict[tuple[str, str, int], list[ProcSample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.t):
        out[(s.role, s.pod, s.pid)].append(s)
    return dict(out)


def series_growth(
    t: Sequence[float],
    v: Sequence[float],
    warmup_end_s: float,
    warmup_s: float,
    window_s: float = MINUTE_S,
) -> dict[str, float] | None:
    """Growth of one uninterrupted process's series: the median of its last
    ``window_s`` against the median of the ``window_s`` after its warm-up, which ends at
    ``warmup_end_s`` or ``warmup_s`` after the series' first sample, whichever is later
    (a restarted process warms up again). None when the series is too short for the two
    windows to be apart, or either is empty."""
    if not t:
        return None
    base_a = max(warmup_end_s, t[0] + warmup_s)
    base_b = base_a + window_s
    last_b = t[-1]
    last_a = last_b - window_s
    if last_a < base_b:
        return None
    ta, va = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
    base = va[(ta >= base_a) & (ta < base_b)]
    last = va[(ta >= last_a) & (ta <= last_b)]
    if len(base) == 0 or len(last) == 0:
        return None
    b, e = float(np.median(base)), float(np.median(last))
    return {
        "baseline": round(b, 2),
        "last": round(e, 2),
        "growth_pct": round(100 * (e - b) / b, 2) if b else (0.0 if e == b else math.inf),
        "baseline_from_s": round(base_a, 1),
        "last_from_s": round(last_a, 1),
    }


def process_report(
    samples: Iterable[ProcSample], warmup_end_s: float, warmup_s: float
) -> list[dict[str, Any]]:
    """Per process: when it was seen, RSS and fds first/last/max, and their growth
    (:func:`series_growth`; None for a series too short to measure)."""
    rows = []
    for (role, pod, pid), series in split_series(samples).items():
        t = [s.t for s in series]
        rss = [s.rss_mb for s in series]
        fds = [float(s.fds) for s in series]
        rows.append(
            {
                "role": role,
                "pod": pod,
                "pid": pid,
                "first_s": round(t[0], 1),
                "last_s": round(t[-1], 1),
                "samples": len(series),
                "rss_mb_first": round(rss[0], 1),
                "rss_mb_last": round(rss[-1], 1),
                "rss_mb_max": round(max(rss), 1),
                "fds_first": int(fds[0]),
                "fds_last": int(fds[-1]),
                "fds_max": int(max(fds)),
                "rss_growth": series_growth(t, rss, warmup_end_s, warmup_s),
                "fds_growth": series_growth(t, fds, warmup_end_s, warmup_s),
            }
        )
    return sorted(rows, key=lambda r: (r["role"], r["pod"], r["first_s"]))


# -- the faults -----------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault. Times in seconds from the start of the load."""

    kind: str  # server | router | operator
    scheduled_s: float
    at_s: float  # when its processes were killed
    namespace: str
    pod: str
    pids: list[int]
    restarts_before: int
    ready_before: int  # Ready pods of its kind just before
    not_ready_s: float | None = None  # first seen not Ready in the API
    ready_s: float | None = None  # Ready again (restarted, or replaced) in the API
    note: str = ""

    @property
    def down_s(self) -> float | None:
        """Seconds from the kill until Ready again (None if never seen)."""
        return None if self.ready_s is None else self.ready_s - self.at_s


def summarize(
    send_s: np.ndarray,
    latency_s: np.ndarray,
    status: np.ndarray,
    errors: Sequence[str],
    faults: Sequence[Fault],
    samples: Sequence[ProcSample],
    *,
    duration_s: float,
    warmup_s: float,
    slo_s: float,
    grace_s: float,
    first_errors: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the report says, from the per-request arrays (send offset, latency
    from the scheduled send, HTTP status, error name, the first try's error where the
    client retried), the faults and the process samples."""
    ok = status == 200
    # no first errors given: a client that never retried
    retried = np.array([bool(e) for e in first_errors] or [False] * len(status))
    saved = retried & ok  # ok only thanks to the client's retry
    windows = fault_windows([(f.at_s, f.ready_s) for f in faults], grace_s, duration_s)
    idx = window_of(send_s, latency_s, windows)
    kinds = np.array([f.kind for f in faults] + ["outside"])  # idx -1 picks "outside"
    kind_of = kinds[idx]
    after = send_s >= warmup_s
    failed = ~ok
    lost = {k: int(np.count_nonzero(failed & after & (kind_of == k))) for k in RETRY_BUDGET}
    lost_warmup = int(np.count_nonzero(failed & ~after))

    per_fault = []
    for j, f in enumerate(faults):
        m = idx == j
        per_fault.append(
            {
                **asdict(f),
                "down_s": None if f.down_s is None else round(f.down_s, 1),
                "window": [round(windows[j][0], 1), round(windows[j][1], 1)],
                "sent": int(np.count_nonzero(m)),
                "failed": int(np.count_nonzero(m & failed)),
                "failed_by_cause": causes(status, errors, m),
                "saved_by_client_retry": int(np.count_nonzero(m & saved)),
                "p99_all_ms": _ms(p99_all(np.where(ok, latency_s, np.inf)[m])),
            }
        )
    minutes = per_minute(send_s, latency_s, ok, idx, duration_s)
    judged = [r for r in minutes if r["start_s"] >= warmup_s and r["sent_outside"]]
    worst = max((r["p99_all_outside_ms"] for r in judged), default=None)
    outside_after = (idx == -1) & after
    procs = process_report(samples, warmup_s, warmup_s)
    growth: dict[str, float | None] = {}
    fd_growth: dict[str, float | None] = {}
    for role in FAULT_KINDS:
        rs = [p["rss_growth"]["growth_pct"] for p in procs if p["role"] == role and p["rss_growth"]]
        fs = [p["fds_growth"]["growth_pct"] for p in procs if p["role"] == role and p["fds_growth"]]
        growth[role] = max(rs) if rs else None
        fd_growth[role] = max(fs) if fs else None
    measured = [g for g in growth.values() if g is not None]
    not_router = lost["server"] + lost["operator"] + lost["outside"]
    return {
        "requests": len(send_s),
        "ok": int(np.count_nonzero(ok)),
        "failed": int(np.count_nonzero(failed)),
        "failed_by_cause": causes(status, errors),
        "failed_inside_windows": int(np.count_nonzero(failed & (idx >= 0))),
        "failed_outside_windows": int(np.count_nonzero(failed & (idx == -1))),
        "failed_during_warmup": lost_warmup,
        "sent_inside_windows": int(np.count_nonzero(idx >= 0)),
        "lost_beyond_retry_budget": {**lost, "total": sum(lost.values())},
        "client_retried": {
            "requests": int(np.count_nonzero(retried)),
            # every first try of a retried request failed: status 0, by its error
            "first_try_by_cause": causes(np.zeros(len(status)), first_errors, retried),
            "saved": int(np.count_nonzero(saved)),
            "by_kind": {k: int(np.count_nonzero(saved & (kind_of == k))) for k in RETRY_BUDGET},
        },
        "faults_by_kind": dict(Counter(f.kind for f in faults)),
        "faults": per_fault,
        "p99_ms_all": _ms(p99_all(np.where(ok, latency_s, np.inf))),
        "p99_ms_outside_windows": _ms(p99_all(np.where(ok, latency_s, np.inf)[outside_after])),
        "p99_ms_outside_windows_worst_minute": worst,
        "per_minute": minutes,
        "processes": procs,
        "rss_growth_pct_max": growth,
        "fd_growth_pct_max": fd_growth,
        "targets": {
            "zero_lost_outside_router_faults": not_router == 0,
            "zero_lost_including_router_faults": not_router + lost["router"] == 0,
            "rss_growth_within_10pct": (
                all(g <= GROWTH_TARGET_PCT for g in measured) if measured else None
            ),
            "p99_within_slo_outside_windows": (
                None if worst is None else bool(worst <= slo_s * 1000)
            ),
        },
    }


# -- the run (I/O) --------------------------------------------------------------------
class Clock:
    """Seconds from the start of the load (set by the load generator's ``on_start``)."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.started = threading.Event()

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.started.set()

    def now(self) -> float:
        return time.monotonic() - self.t0


def pod_of_environ(environ: bytes, state_dir: str) -> tuple[str, str] | None:
    """``(namespace, pod)`` of a process the node agent started for a pod under
    ``state_dir``, from its environment (``/proc/<pid>/environ``: the agent sets its
    marker, ``POD_NAMESPACE`` and ``HOSTNAME``); None for any other process."""
    from recserve_dev.localcluster.agent import POD_MARKER

    env: dict[bytes, bytes] = {}
    for item in environ.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    if env.get(POD_MARKER.encode()) != state_dir.encode():
        return None
    ns, name = env.get(b"POD_NAMESPACE"), env.get(b"HOSTNAME")
    if not ns or not name:
        return None
    return ns.decode(), name.decode()


def pod_processes(state_dir: Path) -> dict[tuple[str, str], list[int]]:
    """``(namespace, pod) -> pids`` of every live process the agent started for pods."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    marker = str(state_dir)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            key = pod_of_environ((proc / "environ").read_bytes(), marker)
        except OSError:
            continue
        if key is not None:
            out[key].append(int(proc.name))
    return dict(out)


def read_proc(pid: int) -> tuple[float, int] | None:
    """RSS (MiB, VmRSS) and the number of open file descriptors of ``pid``."""
    try:
        rss_kb = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None


def _ready(pod: Any) -> bool:
    conds = (pod.status.conditions or []) if pod.status else []
    return bool(
        pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in conds)
    )


def _restarts(pod: Any) -> int:
    return sum(int(c.restart_count or 0) for c in (pod.status.container_statuses or []))


def _selector(kind: str) -> tuple[str, str]:
    """Namespace and label selector of a fault kind's pods."""
    if kind == "operator":
        return OPERATOR_NAMESPACE, "app.kubernetes.io/component=operator"
    return MODEL, f"recserve.io/model={MODEL},app.kubernetes.io/component={kind}"


def _until_routers(bench: Any, model: str) -> int:
    """The number of router pods the operator runs for ``model``, once all are Ready
    (the Deployment's ``spec.replicas``)."""
    from kubernetes import client

    from recserve_dev.waiting import eventually

    apps = client.AppsV1Api(bench.api)

    def ready() -> int:
        dep = apps.read_namespaced_deployment(f"{model}-router", model)
        want = int(dep.spec.replicas or 0)
        return want if want and (dep.status.ready_replicas or 0) >= want else 0

    return int(eventually(ready, 120, 0.5, "the router pods Ready"))


class _Loop:
    """A daemon thread running ``_run`` until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class RouterWatcher(_Loop):
    """The model's Ready router pods, listed every 0.5 s: :meth:`current` is where new
    connections may go (as through the model's Service; with none Ready, the last one
    known, as a Service without endpoints refuses)."""

    def __init__(self, kubeconfig: Path, first: str, clock: Clock) -> None:
        super().__init__("router-watch")
        from kubernetes import client

        from recserve_dev.localcluster.access import api_client

        self.core = client.CoreV1Api(api_client(kubeconfig))
        self.clock = clock
        self.ips: tuple[str, ...] = (first,)
        self.last = first
        self.changes: list[tuple[float, list[str]]] = []

    def current(self) -> tuple[str, ...]:
        return self.ips or (self.last,)

    def _run(self) -> None:
        ns, selector = _selector("router")
        while not self.stopping.wait(WATCH_EVERY_S):
            try:
                pods = self.core.list_namespaced_pod(ns, label_selector=selector).items
            except Exception:
                continue  # keep the last answer
            ips = tuple(sorted(str(p.status.pod_ip) for p in pods if _ready(p) and p.status.pod_ip))
            if ips != self.ips:
                self.ips = ips
                if ips:
                    self.last = ips[0]
                at = self.clock.now() if self.clock.started.is_set() else -1.0
                self.changes.append((round(at, 2), list(ips)))
                _log(f"  ready router pods now: {list(ips) or 'none'}")


class ProcessSampler(_Loop):
    """RSS and open fds of every server, router and operator process every 5 s."""

    def __init__(self, kubeconfig: Path, state_dir: Path, clock: Clock) -> None:
        super().__init__("proc-sampler")
        from kubernetes import client

        from recserve_dev.localcluster.access import api_client

        self.core = client.CoreV1Api(api_client(kubeconfig))
        self.state_dir, self.clock = state_dir, clock
        self.samples: list[ProcSample] = []

    def sample(self) -> None:
        roles: dict[tuple[str, str], str] = {}
        for kind in FAULT_KINDS:
            ns, selector = _selector(kind)
            for pod in self.core.list_namespaced_pod(ns, label_selector=selector).items:
                roles[(ns, pod.metadata.name)] = kind
        t = self.clock.now()
        for key, pids in pod_processes(self.state_dir).items():
            role = roles.get(key)
            if role is None:
                continue
            for pid in pids:
                got = read_proc(pid)
                if got is not None:
                    self.samples.append(ProcSample(round(t, 2), role, key[1], pid, *got))

    def _run(self) -> None:
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a missed sample is a gap, not an end
                _log(f"  process sample failed: {exc}")
            self.stopping.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - began)))


class FaultInjector(_Loop):
    """Kills the schedule's pods (SIGKILL of the pod's processes) one after the other,
    each once the previous one's window is over (Ready again, plus ``grace_s``), so the
    windows do not overlap; a fault due earlier is recorded as late."""

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        clock: Clock,
        schedule: list[tuple[float, str]],
        seed: int,
        last_s: float,
        grace_s: float,
        recover_timeout_s: float = 300.0,
    ) -> None:
        super().__init__("fault-injector")
        from kubernetes import client

        from recserve_dev.localcluster.access import api_client

        self.core = client.CoreV1Api(api_client(kubeconfig))
        self.state_dir, self.clock, self.schedule = state_dir, clock, schedule
        self.rng = random.Random(seed + 1)  # the pick of pods, apart from the schedule
        self.last_s, self.grace_s = last_s, grace_s
        self.recover_timeout_s = recover_timeout_s
        self.faults: list[Fault] = []
        self.skipped: list[dict[str, Any]] = []

    def _run(self) -> None:
        while not self.clock.started.wait(0.5):
            if self.stopping.is_set():
                return
        for at, kind in self.schedule:
            if self.stopping.wait(max(0.0, at - self.clock.now())):
                return
            if self.clock.now() > self.last_s:
                self.skipped.append({"scheduled_s": round(at, 1), "kind": kind, "why": "too late"})
                continue
            try:
                fault = self.inject(kind, at)
            except Exception as exc:
                _log(f"  fault {kind} at {at:.0f}s failed: {exc}")
                self.skipped.append({"scheduled_s": round(at, 1), "kind": kind, "why": str(exc)})
                continue
            if fault is not None:
                self.faults.append(fault)
                self.await_ready(fault)
                if self.stopping.wait(self.grace_s):
                    return

    def inject(self, kind: str, scheduled: float) -> Fault | None:
        ns, selector = _selector(kind)
        pods = [p for p in self.core.list_namespaced_pod(ns, label_selector=selector).items]
        ready = sorted((p for p in pods if _ready(p)), key=lambda p: str(p.metadata.name))
        if not ready:
            self.skipped.append(
                {"scheduled_s": round(scheduled, 1), "kind": kind, "why": "no Ready pod"}
            )
            _log(f"  fault {kind}: no Ready pod to kill, skipped")
            return None
        pod = self.rng.choice(ready)
        name = str(pod.metadata.name)
        pids = pod_processes(self.state_dir).get((ns, name), [])
        if not pids:
            self.skipped.append(
                {"scheduled_s": round(scheduled, 1), "kind": kind, "why": f"no process of {name}"}
            )
            _log(f"  fault {kind}: no process found for {ns}/{name}, skipped")
            return None
        at = self.clock.now()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        fault = Fault(
            kind, round(scheduled, 2), round(at, 2), ns, name, pids, _restarts(pod), len(ready)
        )
        late = f" ({at - scheduled:.0f}s late)" if at - scheduled > 1 else ""
        _log(
            f"FAULT {len(self.faults) + 1}: SIGKILL {kind} {ns}/{name} pids {pids} "
            f"at {at:.1f}s{late}"
        )
        return fault

    def await_ready(self, fault: Fault) -> None:
        """Poll the API every 0.5 s until the killed pod is Ready again with a higher
        restart count (or, replaced, as many Ready pods of its kind as before)."""
        from kubernetes import client

        ns, selector = _selector(fault.kind)
        deadline = time.monotonic() + self.recover_timeout_s
        while not self.stopping.wait(WATCH_EVERY_S):
            now = self.clock.now()
            try:
                pod = self.core.read_namespaced_pod(fault.pod, ns)
                back = _ready(pod) and _restarts(pod) > fault.restarts_before
                if not _ready(pod) and fault.not_ready_s is None:
                    fault.not_ready_s = round(now, 2)
            except client.ApiException as exc:
                if exc.status != 404:
                    continue
                pods = self.core.list_namespaced_pod(ns, label_selector=selector).items
                back = sum(1 for p in pods if _ready(p)) >= fault.ready_before
                fault.note = "pod replaced"
            except Exception:
                continue
            if back:
                fault.ready_s = round(now, 2)
                _log(
                    f"  {fault.kind} {fault.pod} Ready again {now - fault.at_s:.1f}s after the kill"
                )
                return
            if time.monotonic() > deadline:
                fault.note = f"not Ready again within {self.recover_timeout_s:.0f}s"
                _log(f"  {fault.kind} {fault.pod}: {fault.note}")
                return


def set_router_replicas(bench: Any, replicas: int) -> None:
    """Router pods per RecModel: the chart's ``router.replicas``, set on the installed
    release (the operator's pod is replaced with the new setting; waited for)."""
    from recserve_dev.localcluster.tools import repo_root

    cluster = bench.cluster
    subprocess.run(
        [
            str(cluster.tools.helm), f"--kubeconfig={cluster.admin_kubeconfig}",
            "upgrade", "recserve", str(repo_root() / "charts" / "recserve"),
            "-n", OPERATOR_NAMESPACE, "--reuse-values",
            "--set", f"router.replicas={replicas}",
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    cluster.kubectl(
        "rollout", "status", "deployment/recserve", "-n", OPERATOR_NAMESPACE, "--timeout=180s"
    )
    _log(f"router.replicas={replicas}: the operator restarted with it")


def set_spare_replicas(bench: Any, namespace: str, spare: int) -> None:
    """The bench policy's ``autoscaling.spareReplicas`` (before the model is planned)."""
    from kubernetes import client

    from recserve_operator.api import GROUP, VERSION

    client.CustomObjectsApi(bench.api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "optimizationpolicies",
        "bench",
        {"spec": {"autoscaling": {"spareReplicas": spare}}},
    )
    _log(f"spareReplicas={spare}")


def _bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """What ``autoscale.Bench`` reads from its arguments."""
    return argparse.Namespace(
        slo_ms=args.slo_ms, quick=False, root=args.root, out=str(args.out), timeout_s=args.timeout_s
    )


def soak(args: argparse.Namespace, work: Path, out: Path) -> dict[str, Any]:
    """Start the cluster, serve the model, run the load and the faults, stop the
    cluster; the report (everything also written to ``out``)."""
    from recserve_dev.bench.autoscale import Bench, Trace
    from recserve_dev.loadgen import Target, open_loop_trace, thinned_arrivals

    began = time.monotonic()
    duration = args.minutes * 60.0
    warmup = min(float(args.warmup_s), duration)
    every = args.fault_every_s or default_fault_every_s(duration, warmup)
    schedule = fault_schedule(args.seed, warmup, duration - END_MARGIN_S, every)
    bench = Bench(_bench_args(args), work)
    threads: list[_Loop] = []
    watcher: RouterWatcher | None = None
    sampler: ProcessSampler | None = None
    injector: FaultInjector | None = None
    load_start = os.getloadavg()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Bench's progress lines: stderr too
            bench.start(want_keda=False)
            if args.router_replicas is not None:
                set_router_replicas(bench, args.router_replicas)
            bench.namespace(MODEL, "static")
            if args.spare_replicas:
                set_spare_replicas(bench, MODEL, args.spare_replicas)
            trace = Trace(MODEL, "steady", duration, float(args.expected_rps))
            obj = bench.deploy("static", trace, MODEL)
            placements = obj["status"]["placements"]
            for p in placements:
                bench.start_at_plan(MODEL, f"{MODEL}-{p['pool']}", int(p["plannedReplicas"]))
            capacity = planned_capacity(placements)
            if capacity <= 0:
                raise RuntimeError(f"the plan has no capacity: {placements}")
            rate = args.rate_rps or args.load_fraction * capacity
            ip = bench.router(MODEL, MODEL)
            routers = _until_routers(bench, MODEL)
        assert bench.cluster is not None
        kubeconfig, state_dir = bench.cluster.admin_kubeconfig, bench.cluster.root / "pods"
        clock = Clock()
        watcher = RouterWatcher(kubeconfig, ip, clock)
        sampler = ProcessSampler(kubeconfig, state_dir, clock)
        injector = FaultInjector(
            kubeconfig,
            state_dir,
            clock,
            schedule,
            args.seed,
            last_s=duration - 30,
            grace_s=args.window_grace_s,
        )
        threads = [watcher, sampler, injector]
        watcher.start()
        target = Target(ip, ROUTER_PORT, "/v1/rank", bench.bodies, resolve=watcher.current)
        offsets = thinned_arrivals(lambda t: rate, duration, rate, seed=args.seed)
        kinds = sorted({k for _, k in schedule})
        plan = ", ".join(
            "{} {} x {} rps".format(p["pool"], p["plannedReplicas"], p["capacityRequestsPerSecond"])
            for p in placements
        )
        how = "set to" if args.rate_rps else f"{args.load_fraction:g} x ="
        _log(
            f"model {MODEL}: {plan} planned = {capacity:g} rps; load {how} {rate:.1f} rps, "
            f"{len(offsets)} requests over {duration:.0f}s (warm-up {warmup:.0f}s); "
            f"{routers} router pod(s)"
        )
        missing = "" if kinds == sorted(FAULT_KINDS) else f"  (only {kinds}: change --seed)"
        _log(
            f"fault schedule (mean gap {every:.0f}s, seed {args.seed}): "
            + (", ".join(f"{k}@{t:.0f}s" for t, k in schedule) or "none")
            + missing
        )

        def on_start(t0: float) -> None:
            clock.start(t0)
            sampler.start()
            injector.start()

        result = asyncio.run(
            open_loop_trace(
                target,
                offsets,
                timeout_s=args.timeout_s,
                on_start=on_start,
                retries=args.client_retries,
            )
        )
        _log(f"load done: {int(np.count_nonzero(result.ok))}/{len(offsets)} ok")
    finally:
        # a second Ctrl-C or SIGTERM must not cut the clean-up short
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
        try:
            for th in reversed(threads):
                th.stop()
            _log("stopping the cluster")
            with contextlib.redirect_stdout(sys.stderr):
                bench.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    assert injector is not None and sampler is not None and watcher is not None
    summary = summarize(
        result.send_s,
        result.latency_s,
        result.status,
        result.errors,
        injector.faults,
        sampler.samples,
        duration_s=duration,
        warmup_s=warmup,
        slo_s=args.slo_ms / 1000,
        grace_s=args.window_grace_s,
        first_errors=result.first_errors,
    )
    report: dict[str, Any] = {
        "bench": "soak",
        "minutes": args.minutes,
        "warmup_s": warmup,
        "fault_every_s": round(every, 1),
        "seed": args.seed,
        "slo_p99_ms": args.slo_ms,
        "timeout_s": args.timeout_s,
        "window_grace_s": args.window_grace_s,
        "load_fraction": None if args.rate_rps else args.load_fraction,
        "spare_replicas": args.spare_replicas,
        "client_retries": args.client_retries,
        "planned": [
            {
                k: p.get(k)
                for k in (
                    "pool",
                    "variant",
                    "plannedReplicas",
                    "capacityRequestsPerSecond",
                    "batchSize",
                )
            }
            for p in placements
        ],
        "planned_capacity_rps": capacity,
        "router_pods": routers,
        "rate_rps": round(rate, 2),
        "emulated": (
            f"synthetic test model, servers in emulated-device mode ({US_PER_BATCH / 1000:g} ms"
            f" per batch + {US_PER_ROW:g} us per row, slept, not computed) on pool {POOL}: a "
            "fixed capacity per replica on this shared 2-core machine; router, operator, HTTP, "
            "pod restarts and readiness are real"
        ),
        "retry_budget": RETRY_BUDGET,
        **{k: v for k, v in summary.items() if k not in ("per_minute", "processes", "faults")},
        "faults": [
            {
                k: f[k]
                for k in (
                    "kind",
                    "pod",
                    "at_s",
                    "down_s",
                    "sent",
                    "failed",
                    "failed_by_cause",
                    "saved_by_client_retry",
                )
            }
            for f in summary["faults"]
        ],
        "faults_skipped": injector.skipped,
        "router_changes": len(watcher.changes),
        "load_average": {
            "at_start": [round(x, 2) for x in load_start],
            "at_end": [round(x, 2) for x in os.getloadavg()],
            "cores": os.cpu_count(),
        },
        "wall_s": round(time.monotonic() - began, 1),
        "out": str(out),
    }
    (out / "details.json").write_text(
        json.dumps(
            finite(
                {
                    "report": report,
                    "schedule": [[round(t, 2), k] for t, k in schedule],
                    "faults": summary["faults"],
                    "per_minute": summary["per_minute"],
                    "processes": summary["processes"],
                    "process_samples": [asdict(s) for s in sampler.samples],
                    "router_changes": watcher.changes,
                }
            ),
            indent=2,
            default=str,
        )
    )
    np.savez_compressed(
        out / "requests.npz",
        send_s=result.send_s,
        latency_s=result.latency_s,
        status=result.status,
        errors=np.array(result.errors, dtype=str),
        first_errors=np.array(result.first_errors, dtype=str),
    )
    return report


# -- report ---------------------------------------------------------------------------
def human(report: dict[str, Any]) -> str:
    """The report as a few lines for people."""
    r, lost, t = report, report["lost_beyond_retry_budget"], report["targets"]
    lines = [
        f"recserve bench soak: {r['minutes']:g} min, {r['rate_rps']} rps "
        + (
            f"({r['load_fraction']:g} x planned {r['planned_capacity_rps']:g} rps), "
            if r["load_fraction"] is not None
            else f"(set; planned {r['planned_capacity_rps']:g} rps), "
        )
        + f"spare replicas {r['spare_replicas']}, client retries {r['client_retries']}, "
        f"{r['router_pods']} router pod(s), warm-up {r['warmup_s']:g}s, SLO p99 "
        f"{r['slo_p99_ms']:g} ms (EMULATED device)",
        f"requests {r['requests']}: ok {r['ok']}, failed {r['failed']} {r['failed_by_cause']}"
        f" (inside fault windows {r['failed_inside_windows']}, outside "
        f"{r['failed_outside_windows']}, during warm-up {r['failed_during_warmup']})",
        f"faults {r['faults_by_kind']}; lost beyond the retry budget: server "
        f"{lost['server']}, router {lost['router']}, operator {lost['operator']}, outside "
        f"windows {lost['outside']}",
        f"client retries: {r['client_retried']['requests']} requests retried "
        f"{r['client_retried']['first_try_by_cause']}, {r['client_retried']['saved']} saved",
    ]
    for f in r["faults"]:
        lines.append(
            f"  {f['at_s']:7.1f}s {f['kind']:8s} {f['pod']}: Ready again after {f['down_s']} s;"
            f" {f['failed']}/{f['sent']} failed {f['failed_by_cause']}, "
            f"{f['saved_by_client_retry']} saved by the client's retry"
        )
    lines += [
        f"p99 outside fault windows {r['p99_ms_outside_windows']} ms (worst minute "
        f"{r['p99_ms_outside_windows_worst_minute']} ms); all requests {r['p99_ms_all']} ms",
        f"RSS growth, max % by role: {r['rss_growth_pct_max']}; open fds: {r['fd_growth_pct_max']}",
        f"targets: {t}",
        f"details: {r['out']}/details.json",
    ]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve bench soak` (sharing the `bench` group with other benches)."""
    from recserve_runtime.cli import bench_group

    bsub = bench_group(sub)
    p = bsub.add_parser(
        "soak",
        help="steady load through the router for 30 min while server, router and operator "
        "pods are killed (not part of make test)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0, help="load duration (default 30)")
    p.add_argument(
        "--warmup-s", type=float, default=60.0, help="no fault and no target before (default 60)"
    )
    p.add_argument(
        "--fault-every-s",
        type=float,
        default=None,
        help="mean gap between faults (default 180 for 30 min; shorter runs: about 6 faults)",
    )
    p.add_argument(
        "--load-fraction", type=float, default=0.7, help="of the planned capacity (default 0.7)"
    )
    p.add_argument(
        "--rate-rps",
        type=float,
        default=None,
        help="requests per second to send instead of --load-fraction of the plan (to load "
        "a plan with spare replicas as the one without them)",
    )
    p.add_argument(
        "--spare-replicas",
        type=int,
        default=0,
        help="the policy's autoscaling.spareReplicas (default 0): replicas planned so that "
        "this many can crash and the rest carry the load",
    )
    p.add_argument(
        "--expected-rps",
        type=float,
        default=48.0,
        help="the RecModel's spec.traffic.expectedRequestsPerSecond, which sets the plan's "
        "replicas (default 48: 3 emulated replicas)",
    )
    p.add_argument(
        "--router-replicas",
        type=int,
        default=None,
        help="router pods per RecModel (the chart's router.replicas; default: the chart's)",
    )
    p.add_argument(
        "--client-retries",
        type=int,
        default=1,
        help="times the client sends a request again after its connection to a router was "
        "refused or lost, to another router pod (default 1, as docs/serving.md advises "
        "clients; 0: a client that never retries)",
    )
    p.add_argument("--seed", type=int, default=SEED, help="faults, pods picked, arrivals")
    p.add_argument("--slo-ms", type=float, default=500.0, help="p99 target (default 500)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per request (a failure)")
    p.add_argument(
        "--window-grace-s",
        type=float,
        default=5.0,
        help="a fault's window lasts this long after Ready again (default 5)",
    )
    p.add_argument("--out", default="", help="folder for details.json (default: a temp dir)")
    p.add_argument("--root", default="", help="local cluster state folder (default: temp)")
    p.set_defaults(handler=_bench_soak)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: the cluster stopped


def _bench_soak(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recserve-bench-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    _log(f"details go to {out}")
    with tempfile.TemporaryDirectory(prefix="recserve-bench-soak-work-") as tmp:
        report = soak(args, Path(tmp), out)
    print(human(report), flush=True)
    print(json.dumps(finite(report), default=str), flush=True)
    return 0
