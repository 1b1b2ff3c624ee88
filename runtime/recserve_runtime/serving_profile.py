"""Served-path calibration: what one replica spends per request beyond the model.

A compute profile times onnxruntime alone. A replica also parses HTTP, decodes and
validates JSON, builds each batch and hands its results back, and encodes the answer;
for small models that costs more than the model. `recserve profile --serving` therefore
starts the real server (`recserve serve`, as the operator deploys it: same intra-op
threads, one model thread, this node's hardware) on 127.0.0.1, drives it to saturation
with `/v1/rank` requests of two sizes from a closed-loop client, each size once with one
request per batch (batch ceiling = its rows) and once with as many as arrive, and fits

    overhead = perRequest + perRow x r + perBatch / k      (microseconds)

for requests of ``r`` candidates served ``k`` to a batch, where overhead = the server's
time per request minus the model compute for its share of the batch (from the compute
profile, at the batch size the server ran). The per-batch term is the server's own cost
of a batch beside the model (waking the model thread, assembling the batch, handing
results back across threads): a few hundred microseconds on a CPU node, it is what
makes one request per batch dearer than several. The planner adds all of it to compute
(see recserve_operator/planner.py).

The server's time per request is its process CPU time (every thread) per successful
request, read from /proc: it is what the pod's CPU limit rations, and it changes far
less than wall-clock throughput with what else the machine runs (other profile Jobs,
the client, other pods): by 10 to 20% on a busy 2-core machine, where throughput halves
when the server gets half a core. Each setting runs a short
warm-up, then ``repeats`` timed windows, all settings' windows interleaved so that a
change in what else the machine runs weighs on every setting alike; the median window
counts, the spread is kept.

The server runs with a latency target of ``CALIBRATION_SLO_MS``: this measures what
serving costs, not the latency policy, and at the deployed target the admission control
refuses part of a closed loop's requests wherever compute runs slow (a busy node), while
a server that refuses requests, or idles between them, spends more CPU per request
served than one serving at capacity. Where it still refuses, the client halves its
connections.

The client is a few lines of asyncio (raw HTTP/1.1 over keep-alive connections) rather
than a library: the runtime image carries no HTTP client library, the dev kit's load
generator is not part of the product, and this needs only "send back-to-back, count".

numpy and orjson are imported where used: `recserve --help` imports this module for its
defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recserve_runtime.artifacts import (
    FeatureSpec,
    Manifest,
    ProfilePoint,
    ServingOverhead,
    ServingPoint,
    Side,
    call_microseconds,
)

SIZES = (8, 256)
CONCURRENCY = 8
CALIBRATION_SLO_MS = 1000
MANY_PER_BATCH_ROWS = 4096  # the batch ceiling that lets every waiting request in
SECONDS_PER_SIZE = 8.0  # split between the size's two batch settings
REPEATS = 5
WARMUP_S = 0.5
REWARM_S = 0.1
MAX_REJECTED = 0.01  # share of refused requests at which the client backs off
START_TIMEOUT_S = 90.0

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- requests ---------------------------------------------------------------------------


def rank_bodies(spec: FeatureSpec, candidates: int, count: int = 16, seed: int = 0) -> list[bytes]:
    """``count`` valid /v1/rank JSON bodies of ``candidates`` items each (ids in range)."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed)
    u_sparse = [f.vocab_size for f in spec.sparse if f.side == Side.USER]
    i_sparse = np.array([f.vocab_size for f in spec.sparse if f.side == Side.ITEM])
    u_dense = sum(f.width for f in spec.dense if f.side == Side.USER)
    i_dense = sum(f.width for f in spec.dense if f.side == Side.ITEM)
    bodies = []
    for _ in range(count):
        items_sparse = (rng.random((candidates, len(i_sparse))) * i_sparse).astype(np.int64)
        items_dense = np.round(rng.standard_normal((candidates, i_dense)), 4)
        doc = {
            "user": {
                "sparse": [int(rng.integers(0, v)) for v in u_sparse],
                "dense": np.round(rng.standard_normal(u_dense), 4).tolist(),
            },
            "candidates": [
                {"id": f"item-{k}", "sparse": items_sparse[k].tolist(), "dense": d.tolist()}
                for k, d in enumerate(items_dense)
            ],
        }
        bodies.append(orjson.dumps(doc))
    return bodies


def raw_requests(host: str, port: int, path: str, bodies: Sequence[bytes]) -> list[bytes]:
    """HTTP/1.1 keep-alive POSTs of JSON ``bodies``, bytes on the wire."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    return [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


# -- the client ---------------------------------------------------------------------------


@dataclass
class LoopResult:
    """One closed-loop run: answers by kind, and its wall-clock length."""

    ok: int
    rejected: int
    seconds: float


async def closed_loop(
    host: str, port: int, requests: Sequence[bytes], concurrency: int, seconds: float
) -> LoopResult:
    """``concurrency`` keep-alive connections, each sending the next request as soon as
    the last is answered, for ``seconds``; every request sent is awaited."""
    loop = asyncio.get_running_loop()
    ok = rejected = 0
    start = loop.time()
    end = start + seconds

    async def client(first: int) -> None:
        nonlocal ok, rejected
        reader, writer = await asyncio.open_connection(host, port)
        try:
            i = first
            while loop.time() < end:
                writer.write(requests[i % len(requests)])
                i += concurrency
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if match:
                    await reader.readexactly(int(match.group(1)))
                if head[9:12] == b"200":
                    ok += 1
                else:
                    rejected += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return LoopResult(ok, rejected, loop.time() - start)


# -- the server ---------------------------------------------------------------------------


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), ""


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process's live threads so far (Linux /proc), None where it cannot be
    read: each thread's schedstat run time (nanoseconds), else the process's user +
    system time (clock ticks, 10 ms: too coarse for short windows)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        total = 0
    if total > 0:
        return total / 1e9
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A running `recserve serve`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the server printed."""
        return self.log.read_text(errors="replace")[-chars:]

    def cpu_seconds(self) -> float | None:
        """CPU time of the whole process (all threads) so far; None off Linux."""
        return process_cpu_seconds(self.proc.pid)

    def batches(self) -> tuple[float, float, float]:
        """(rows, requests, batches) the server has run so far, from its /metrics."""
        _, text = _get(f"{self.url}/metrics")

        def metric(name: str) -> float:
            found = re.search(rf"^{name} (\S+)", text, re.M)
            return float(found.group(1)) if found else 0.0

        return (
            metric("recserve_batch_size_rows_sum"),
            metric("recserve_batch_size_requests_sum"),
            metric("recserve_batch_size_rows_count"),
        )

    def set_batch_ceiling(self, rows: int) -> None:
        """Change the batch row ceiling at run time (PUT /admin/limits)."""
        doc = f'{{"max_batch_rows": {rows}, "min_batch_rows": {min(rows, 64)}}}'.encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/admin/limits",
            data=doc,
            method="PUT",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


def serve_argv(
    variant_dir: Path, port: int, hardware: str, threads: int, workers: int = 1, admin_port: int = 0
) -> list[str]:
    """`recserve serve` as the operator deploys it, on 127.0.0.1:port (its admin API on
    ``admin_port``), with the calibration's latency target (see the module docstring)."""
    return [sys.executable, "-m", "recserve_runtime.cli", "serve", "--variant", str(variant_dir),
            "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port),
            "--hardware", hardware,
            "--intra-op-threads", str(threads), "--workers", str(workers),
            "--slo-p99-ms", str(CALIBRATION_SLO_MS), "--log-level", "WARNING"]  # fmt: skip


@contextlib.contextmanager
def running_server(
    variant_dir: Path, hardware: str, threads: int, log_dir: Path, workers: int = 1
) -> Iterator[Server]:
    """Start `recserve serve` in its own process group; wait until ready; stop it after."""
    port, admin_port = free_port(), free_port()
    log = log_dir / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_argv(variant_dir, port, hardware, threads, workers, admin_port),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(proc, port, log, admin_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"recserve serve exited with {proc.returncode}:\n{server.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if _get(f"{server.url}/v2/health/ready", 1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"recserve serve not ready within {START_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


# -- measuring and fitting ------------------------------------------------------------------


def fit_overhead(points: Sequence[tuple[int, float, float]]) -> tuple[float, float, float]:
    """Least-squares ``(perRequest, perRow, perBatch)`` of
    ``overhead = perRequest + perRow x rows + perBatch / requestsPerBatch`` over
    (rows, requests per batch, overhead) points; none below zero (a term the data would
    make negative is dropped and the others refitted)."""
    import numpy as np

    design = np.array([[1.0, r, 1.0 / max(k, 1.0)] for r, k, _ in points])
    over = np.array([o for _, _, o in points], dtype=float)
    free = [0, 1, 2]
    coef = np.zeros(3)
    while free:
        sub, *_ = np.linalg.lstsq(design[:, free], over, rcond=None)
        if (sub >= 0).all():
            coef[free] = sub
            break
        free.pop(int(np.argmin(sub)))
    return float(coef[0]), float(coef[1]), float(coef[2])


@dataclass
class _Setting:
    """One request size at one batch ceiling: its requests and what its windows counted."""

    candidates: int
    ceiling: int
    requests: list[bytes]
    concurrency: int
    per_request_us: list[float] = field(default_factory=list)
    ok: int = 0
    rejected: int = 0
    wall_s: float = 0.0
    busy_s: float = 0.0
    rows: float = 0.0
    served: float = 0.0
    batches: float = 0.0


async def _saturate(server: Server, setting: _Setting, seconds: float) -> LoopResult:
    return await closed_loop(
        "127.0.0.1", server.port, setting.requests, setting.concurrency, seconds
    )


async def _find_concurrency(server: Server, setting: _Setting) -> None:
    """Saturate without being refused (refused requests cost CPU but serve nothing):
    halve the connections until the warm-up is (almost) all answered."""
    server.set_batch_ceiling(setting.ceiling)
    while True:
        warm = await _saturate(server, setting, WARMUP_S)
        if setting.concurrency == 1 or warm.rejected <= MAX_REJECTED * (warm.ok + warm.rejected):
            return
        setting.concurrency //= 2


async def _window(server: Server, setting: _Setting, seconds: float) -> None:
    """One timed window (after a short re-warm: the batcher adapts to the setting)."""
    server.set_batch_ceiling(setting.ceiling)
    await _saturate(server, setting, REWARM_S)
    rows0, served0, batches0 = server.batches()
    cpu0 = server.cpu_seconds()
    res = await _saturate(server, setting, seconds)
    cpu1 = server.cpu_seconds()
    rows1, served1, batches1 = server.batches()
    busy = res.seconds if cpu0 is None or cpu1 is None else cpu1 - cpu0
    if res.ok:
        setting.per_request_us.append(busy / res.ok * 1e6)
    setting.ok += res.ok
    setting.rejected += res.rejected
    setting.wall_s += res.seconds
    setting.busy_s += busy
    setting.rows += rows1 - rows0
    setting.served += served1 - served0
    setting.batches += batches1 - batches0


def _point(server: Server, setting: _Setting, compute: Sequence[ProfilePoint]) -> ServingPoint:
    if not setting.per_request_us:
        raise RuntimeError(
            f"the server answered no ranking request of {setting.candidates} candidates "
            f"with 200 ({setting.rejected} refused); its log ends:\n{server.log_tail()}"
        )
    median = statistics.median(setting.per_request_us)
    mean_batch = setting.rows / setting.batches if setting.batches else setting.candidates
    per_batch = setting.served / setting.batches if setting.batches else 1.0
    compute_us = call_microseconds(compute, mean_batch) * setting.candidates / mean_batch
    return ServingPoint(
        candidates=setting.candidates,
        max_batch_rows=setting.ceiling,
        measured_requests_per_second=setting.ok / setting.wall_s,
        server_cores=setting.busy_s / setting.wall_s,
        server_microseconds_per_request=median,
        spread_percent=(max(setting.per_request_us) - min(setting.per_request_us)) / median * 100,
        mean_batch_rows=mean_batch,
        requests_per_batch=per_batch,
        compute_microseconds_per_request=compute_us,
        overhead_microseconds_per_request=median - compute_us,
        rejected=setting.rejected,
        concurrency=setting.concurrency,
    )


async def _measure(
    server: Server,
    manifest: Manifest,
    compute: Sequence[ProfilePoint],
    sizes: Sequence[int],
    concurrency: int,
    seconds: float,
    repeats: int,
) -> list[ServingPoint]:
    """Every size at both batch ceilings, the timed windows interleaved."""
    settings = []
    for candidates in sizes:
        bodies = rank_bodies(manifest.feature_spec, candidates)
        requests = raw_requests("127.0.0.1", server.port, "/v1/rank", bodies)
        for ceiling in (candidates, max(MANY_PER_BATCH_ROWS, candidates)):
            setting = _Setting(candidates, ceiling, requests, concurrency)
            await _find_concurrency(server, setting)
            settings.append(setting)
    window = seconds / 2 / repeats
    for _ in range(repeats):
        for setting in settings:
            await _window(server, setting, window)
    return [_point(server, setting, compute) for setting in settings]


def calibrate(
    variant_dir: Path,
    manifest: Manifest,
    compute: Sequence[ProfilePoint],
    *,
    hardware: str = "cpu",
    threads: int = 1,
    sizes: Sequence[int] = SIZES,
    seconds: float = SECONDS_PER_SIZE,
    concurrency: int = CONCURRENCY,
    repeats: int = REPEATS,
    log: Log = _quiet,
) -> ServingOverhead:
    """Run the real server on ``variant_dir`` and fit its serving overhead (see the
    module docstring); ``compute`` is that variant's compute profile on this node."""
    # the server's log: in the pod's writable cache (Jobs run on a read-only root)
    scratch = os.environ.get("RECSERVE_CACHE")
    with (
        tempfile.TemporaryDirectory(
            prefix="recserve-serving-", dir=scratch if scratch and os.path.isdir(scratch) else None
        ) as tmp,
        running_server(variant_dir, hardware, threads, Path(tmp)) as server,
    ):
        log(f"started recserve serve ({manifest.name}, {threads} intra-op threads) at {server.url}")
        points = asyncio.run(
            _measure(server, manifest, compute, sizes, concurrency, seconds, repeats)
        )
        for point in points:
            log(
                f"{point.candidates} candidates, {point.requests_per_batch:.1f} per batch "
                f"(ceiling {point.max_batch_rows} rows), {point.concurrency} connections: "
                f"{point.measured_requests_per_second:.0f} req/s on "
                f"{point.server_cores:.2f} cores; {point.server_microseconds_per_request:.0f} "
                f"us/request (spread {point.spread_percent:.0f}%), of which model "
                f"{point.compute_microseconds_per_request:.0f} us"
            )
        clock = "wall" if server.cpu_seconds() is None else "cpu"
    a, b, c = fit_overhead(
        [(p.candidates, p.requests_per_batch, p.overhead_microseconds_per_request) for p in points]
    )
    log(
        f"serving overhead: {a:.0f} us per request + {b:.2f} us per candidate + {c:.0f} us "
        f"per batch ({clock} time)"
    )
    return ServingOverhead(
        per_request_microseconds=a,
        per_row_microseconds=b,
        per_batch_microseconds=c,
        variant=manifest.name,
        threads=threads,
        workers=1,
        concurrency=concurrency,
        seconds_per_size=seconds,
        clock=clock,
        points=points,
    )
