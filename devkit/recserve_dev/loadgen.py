"""An open-loop HTTP/1.1 load generator on asyncio (no coordinated omission).

Arrivals follow a Poisson process (or a constant rate) fixed in advance; each request's
latency is measured from its *scheduled* send time, so a slow server cannot slow the
generator down and hide its own queueing. Requests go over keep-alive connections from
a pool that grows as needed (up to ``max_connections``; beyond that requests wait for a
connection, and that wait counts in their latency). Only 127.0.0.0/8 targets are allowed.

Goodput at a rate is the successful completions per second of a run whose p99 latency,
counting every failed or timed-out request as infinitely slow, is within the SLO.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Target:
    """Where requests go: host, port, path and pre-encoded bodies (cycled).

    ``resolve`` (optional) gives the hosts that may be connected to now, for a target
    that moves or has several addresses (the ready pods behind a Service): a new
    connection goes to the next of them in turn, an idle connection is reused only while
    its host is among them. ``host`` is then the Host header, and the address while
    ``resolve`` gives none.
    """

    host: str
    port: int
    path: str
    bodies: Sequence[bytes]
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    resolve: Callable[[], Sequence[str]] | None = None
    # Also private addresses (RFC 1918): a kind cluster's nodes on this machine's
    # container network. Off by default: load goes to this machine only.
    private_ok: bool = False

    def _allowed(self, host: str) -> bool:
        address = ipaddress.ip_address(host)
        return address.is_loopback or (self.private_ok and address.is_private)

    def __post_init__(self) -> None:
        if not self._allowed(self.host):
            raise ValueError(f"load tests only target 127.0.0.0/8, not {self.host}")
        self._checked: Sequence[str] = ()  # the last resolve() answer found loopback-only
        self.set_bodies(self.bodies)

    def set_bodies(self, bodies: Sequence[bytes]) -> None:
        """Send these bodies from now on (a load whose inputs change mid-run)."""
        self.bodies = bodies
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self._raw = [
            (
                f"{self.method} {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n{extra}\r\n"
            ).encode()
            + b
            for b in self.bodies
        ]

    def raw(self, i: int) -> bytes:
        """The i-th request, bytes on the wire."""
        return self._raw[i % len(self._raw)]

    def current_hosts(self) -> Sequence[str]:
        """The hosts that may be connected to now: ``resolve()`` when given and not
        empty, else ``host``."""
        if self.resolve is None:
            return (self.host,)
        hosts = self.resolve()
        if hosts != self._checked:  # asked per request: check an answer once, when it changes
            for host in hosts:
                if not self._allowed(host):
                    raise ValueError(f"load tests only target 127.0.0.0/8, not {host}")
            self._checked = hosts
        return hosts or (self.host,)


@dataclass
class RunResult:
    """What one load run measured (latencies in seconds)."""

    rate: float
    duration_s: float
    sent: int
    ok: int
    codes: dict[str, int]
    latencies_ok: np.ndarray
    p99_all_s: float  # failures count as infinite
    extra: dict[str, float] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        """Percentile of successful latencies (seconds; inf when none)."""
        return float(np.percentile(self.latencies_ok, q)) if len(self.latencies_ok) else math.inf

    @property
    def throughput(self) -> float:
        """Successful completions per second."""
        return self.ok / self.duration_s

    def passes(self, slo_s: float) -> bool:
        """p99 over all requests within the SLO."""
        return self.p99_all_s <= slo_s

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        """Numbers for reports (milliseconds)."""
        return {
            "rate": round(self.rate, 1),
            "throughput": round(self.throughput, 1),
            "sent": self.sent,
            "ok": self.ok,
            "p50_ms": round(self.pct(50) * 1000, 3),
            "p99_ms": round(self.pct(99) * 1000, 3),
            "p999_ms": round(self.pct(99.9) * 1000, 3),
            "p99_all_ms": round(self.p99_all_s * 1000, 3),
            "codes": self.codes,
        }


# Servers close idle keep-alive connections (uvicorn after 5 s); like HTTP client
# libraries, never reuse one idle for longer than this, or a request races the close.
MAX_IDLE_S = 3.0


class _Conn:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str = ""
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.idle_since = time.monotonic()

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status


class _Pool:
    def __init__(self, target: Target, max_connections: int) -> None:
        self.target = target
        self.idle: list[_Conn] = []
        self.total = 0
        self.max = max_connections
        self.waiters: asyncio.Queue[_Conn] = asyncio.Queue()
        self.opened = 0

    async def get(self, avoid: str = "") -> _Conn:
        """A connection: an idle one to a listed host (not ``avoid``, while another is
        listed), else a new one to the next such host, else the next one returned."""
        listed = self.target.current_hosts()
        hosts = [h for h in listed if h != avoid] or listed
        kept: list[_Conn] = []
        conn: _Conn | None = None
        while self.idle:
            c = self.idle.pop()
            if c.host not in listed or time.monotonic() - c.idle_since >= MAX_IDLE_S:
                self.drop(c)
            elif c.host in hosts:
                conn = c
                break
            else:  # listed, only avoided by this request
                kept.append(c)
        self.idle.extend(kept)
        if conn is not None:
            return conn
        if self.total < self.max:
            self.total += 1
            host = hosts[self.opened % len(hosts)]
            self.opened += 1
            try:
                r, w = await asyncio.open_connection(host, self.target.port)
            except OSError as exc:
                self.total -= 1
                raise _ConnectFailed(host) from exc
            return _Conn(r, w, host)
        return await self.waiters.get()

    def put(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        if self.waiters._getters:  # type: ignore[attr-defined]  # hand over to a waiter
            self.waiters.put_nowait(conn)
        else:
            self.idle.append(conn)

    def drop(self, conn: _Conn) -> None:
        self.total -= 1
        conn.writer.close()

    def close(self) -> None:
        for c in self.idle:
            c.writer.close()
        self.idle.clear()


class _ConnectFailed(OSError):
    """Opening a connection to ``host`` failed (the cause is the socket error)."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


# Errors after which a request may be sent again: the connection was refused (nothing
# was sent) or lost before the whole answer came (the peer died; safe to repeat for a
# read-only request such as ranking). A timeout is not one: the request may still be
# running, and retrying it would add load exactly when the server is slow.
RETRYABLE_ERRORS = frozenset(
    {
        "ConnectionRefusedError",
        "ConnectionResetError",
        "BrokenPipeError",
        "IncompleteReadError",
        "ConnectionAbortedError",
    }
)


async def _send(
    pool: _Pool, target: Target, i: int, timeout_s: float, avoid: str = ""
) -> tuple[int | str, str]:
    """Request ``i`` over a pooled connection (preferring hosts other than ``avoid``):
    its HTTP status, or the name of the error that ended it (timeout, refused, reset,
    bad answer; the connection is then dropped), and the host it went to."""
    conn: _Conn | None = None
    host = ""
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.get(avoid)
            host = conn.host
            status = await conn.request(target.raw(i))
        pool.put(conn)
        return status, host
    except _ConnectFailed as exc:
        cause = exc.__cause__
        return type(cause if cause is not None else exc).__name__, exc.host
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        if conn is not None:
            pool.drop(conn)
        return type(exc).__name__, host


async def _send_with_retries(
    pool: _Pool, target: Target, i: int, deadline: float, retries: int
) -> tuple[int | str, str]:
    """:func:`_send`, then up to ``retries`` more tries while the error is one of
    :data:`RETRYABLE_ERRORS` and time is left before ``deadline`` (``perf_counter``),
    each to another host than the last where one is listed: what a client that retries
    an idempotent request on a connection error does. The outcome of the last try and
    the first try's error ("" when it succeeded)."""
    first = ""
    avoid = ""
    for attempt in range(retries + 1):
        left = deadline - time.perf_counter()
        if left <= 0:
            return "TimeoutError", first
        outcome, avoid = await _send(pool, target, i, left, avoid)
        if attempt == 0 and not isinstance(outcome, int):
            first = outcome
        if isinstance(outcome, int) or outcome not in RETRYABLE_ERRORS:
            return outcome, first
    return outcome, first


async def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    *,
    poisson: bool = True,
    timeout_s: float = 2.0,
    max_connections: int = 512,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> RunResult:
    """Send at ``rate`` req/s for ``duration_s`` (or until ``stop`` is set, from another
    thread); latency from scheduled send time. The result's duration is the time sent."""
    rng = random.Random(seed)
    pool = _Pool(target, max_connections)
    latencies: list[float] = []
    failed = 0
    codes: Counter[str] = Counter()

    async def one(i: int, scheduled: float) -> None:
        nonlocal failed
        outcome, _ = await _send(pool, target, i, timeout_s)
        codes[str(outcome)] += 1
        if outcome == 200:
            latencies.append(time.perf_counter() - scheduled)
        else:
            failed += 1

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    t = 0.0
    i = 0
    while t < duration_s and not (stop is not None and stop.is_set()):
        now = time.perf_counter() - start
        if t > now:
            await asyncio.sleep(t - now)
        tasks.append(asyncio.create_task(one(i, start + t)))
        i += 1
        t += rng.expovariate(rate) if poisson else 1.0 / rate
    await asyncio.gather(*tasks)
    pool.close()
    lat = np.array(latencies)
    n = i
    # p99 counting failures as infinite
    k = math.ceil(0.99 * n) - 1 if n else 0
    srt = np.sort(lat)
    p99_all = float(srt[k]) if n and k < len(srt) else math.inf
    return RunResult(rate, min(t, duration_s), n, len(latencies), dict(codes), lat, p99_all)


def thinned_arrivals(
    rate: Callable[[float], float], duration_s: float, max_rate: float, seed: int = 0
) -> np.ndarray:
    """Send offsets (seconds) of a Poisson process whose rate varies as ``rate(t)``.

    Thinning (Lewis and Shedler): candidates of a homogeneous process at ``max_rate``,
    each kept with probability ``rate(t) / max_rate``. ``rate(t)`` must never exceed
    ``max_rate``. The same seed and rate give the same offsets (systems compared on a
    trace get identical arrivals).
    """
    if max_rate <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    # enough candidates for the duration with a wide margin, drawn in one go
    n = int(max_rate * duration_s + 10 * math.sqrt(max_rate * duration_s + 1) + 10)
    times = np.cumsum(rng.exponential(1.0 / max_rate, size=n))
    times = times[times < duration_s]
    keep = rng.random(len(times)) * max_rate < np.array([rate(float(t)) for t in times])
    return times[keep]


@dataclass
class TraceResult:
    """Per request of a trace run: scheduled send offset (s from the start), latency
    from that scheduled time (s; the time it failed for a failure) and HTTP status (0
    for a timeout or a connection error)."""

    started_at: float  # time.time() of offset 0
    send_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray
    codes: dict[str, int]
    # per request: the name of the error that ended it (TimeoutError, ConnectionRefusedError,
    # IncompleteReadError, ...) where status is 0; "" where there was an HTTP answer
    errors: list[str] = field(default_factory=list)
    # per request: the error of its first try where that failed ("" where it did not);
    # with retries, a request whose first try failed may still have succeeded
    first_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Mask of successful requests."""
        return np.asarray(self.status == 200)


async def open_loop_trace(
    target: Target,
    offsets: np.ndarray,
    *,
    timeout_s: float = 5.0,
    max_connections: int = 1024,
    on_start: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
    retries: int = 0,
) -> TraceResult:
    """Send one request at each offset (seconds, e.g. :func:`thinned_arrivals`), open loop.

    Latency is measured from each request's scheduled send time, as :func:`open_loop`
    does; every request is recorded. ``on_start`` gets the ``time.monotonic()`` of offset
    0 (to align other samplers with the trace). ``stop``, once set, ends the trace early:
    no more is sent, requests in flight finish, and the result holds the ones sent.
    ``retries`` (default 0): a request whose connection was refused or lost is sent again
    up to this many times, to another host where ``target`` lists several, within the
    same ``timeout_s`` (:func:`_send_with_retries`); the result's ``first_errors`` says
    which requests needed it.
    """
    pool = _Pool(target, max_connections)
    n = len(offsets)
    latency = np.full(n, math.inf)
    status = np.zeros(n, dtype=np.int32)
    errors = [""] * n
    first_errors = [""] * n
    codes: Counter[str] = Counter()

    async def one(i: int, scheduled: float) -> None:
        deadline = time.perf_counter() + timeout_s
        outcome, first_errors[i] = await _send_with_retries(pool, target, i, deadline, retries)
        codes[str(outcome)] += 1
        if isinstance(outcome, int):
            status[i] = outcome
        else:
            errors[i] = outcome
        latency[i] = time.perf_counter() - scheduled

    tasks: list[asyncio.Task[None]] = []
    started_at = time.time()
    start = time.perf_counter()
    if on_start is not None:
        on_start(time.monotonic())
    for i, t in enumerate(offsets):
        now = time.perf_counter() - start
        if t > now:
            await asyncio.sleep(t - now)
        if stop is not None and stop.is_set():
            break
        tasks.append(asyncio.create_task(one(i, start + float(t))))
    await asyncio.gather(*tasks)
    pool.close()
    sent = len(tasks)
    return TraceResult(
        started_at,
        np.asarray(offsets[:sent], dtype=float),
        latency[:sent],
        status[:sent],
        dict(codes),
        errors[:sent],
        first_errors[:sent],
    )


async def closed_loop(
    target: Target, concurrency: int, duration_s: float, timeout_s: float = 5.0
) -> RunResult:
    """``concurrency`` clients sending back-to-back (for saturation throughput only)."""
    pool = _Pool(target, concurrency)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    sent = 0
    end = time.perf_counter() + duration_s

    async def client(c: int) -> None:
        nonlocal sent
        conn = await pool.get()
        i = c
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            sent += 1
            status = await asyncio.wait_for(conn.request(target.raw(i)), timeout_s)
            codes[str(status)] += 1
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            i += concurrency
        conn.writer.close()

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    lat = np.array(latencies)
    p99 = float(np.percentile(lat, 99)) if len(lat) else math.inf
    return RunResult(math.nan, duration_s, sent, len(lat), dict(codes), lat, p99)


@dataclass
class Goodput:
    """Result of a goodput search."""

    goodput: float
    best: RunResult | None
    runs: list[RunResult]


async def find_goodput(
    target: Target,
    slo_s: float,
    *,
    start_rate: float = 100.0,
    growth: float = 1.6,
    refine_steps: int = 3,
    duration_s: float = 3.0,
    max_rate: float = 20000.0,
    log: Callable[[str], None] | None = None,
    probe: Callable[[], Awaitable[dict[str, float]]] | None = None,
    confirm_failures: int = 1,
) -> Goodput:
    """Highest goodput over rates: grow geometrically until a run fails, then bisect.

    ``probe`` (optional) is called before and after each run; the difference of what it
    returns (e.g. server counters) is stored in the run's ``extra``. A failing rate is
    run again ``confirm_failures`` times before it counts as failed (noise on a shared
    machine); every run is kept in ``runs``.
    """
    runs: list[RunResult] = []

    async def once(rate: float) -> RunResult:
        before = await probe() if probe else {}
        res = await open_loop(target, rate, duration_s, timeout_s=max(1.0, slo_s * 40))
        if probe:
            after = await probe()
            res.extra = {k: after[k] - before.get(k, 0.0) for k in after}
        runs.append(res)
        if log:
            ok = "pass" if res.passes(slo_s) else "FAIL"
            log(f"  rate={rate:8.1f}/s {ok} {res.summary()}")
        await asyncio.sleep(0.3)  # let queues empty between runs
        return res

    async def trial(rate: float) -> RunResult:
        res = await once(rate)
        for _ in range(confirm_failures):  # a failure on a shared machine may be noise
            if res.passes(slo_s):
                break
            res = await once(rate)
        return res

    lo: RunResult | None = None
    rate = start_rate
    hi_rate = None
    while rate <= max_rate:
        res = await trial(rate)
        if res.passes(slo_s):
            lo = res
            rate *= growth
        else:
            hi_rate = rate
            break
    if lo is None:  # even the start rate fails: search downward
        rate = start_rate
        for _ in range(4):
            rate /= 2
            res = await trial(rate)
            if res.passes(slo_s):
                lo = res
                hi_rate = rate * 2
                break
    if lo is not None and hi_rate is not None:
        lo_rate = lo.rate
        for _ in range(refine_steps):
            mid = (lo_rate + hi_rate) / 2
            res = await trial(mid)
            if res.passes(slo_s):
                lo, lo_rate = res, mid
            else:
                hi_rate = mid
    passing = [r for r in runs if r.passes(slo_s)]
    best = max(passing, key=lambda r: r.throughput, default=None)
    return Goodput(best.throughput if best else 0.0, best, runs)
