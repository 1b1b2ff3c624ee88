"""`recserve bench serving`: recserve's server and router against baselines, in one run.

Every system serves the same synthetic, Criteo-shaped DLRM (random weights: speed only,
never accuracy) on this machine, and answers /v1/rank requests ranking 64 candidates.
Goodput = requests/s completed in an open-loop run whose p99 (failures counted as
infinitely slow) is within the SLO (25 ms), searched over offered rates.

Every system is measured once per round, the rounds interleaved (a busy spell of the
machine hits every side), and each figure is the median over the rounds; each headline
ratio is the median of the per-round ratios (paired), with its range over the rounds.

* recserve INT8 vs the naive server (torch eager FP32, one forward per request, same
  HTTP stack): the deployment against the baseline deployment (``goodput_vs_naive``;
  p50 at light load);
* recserve INT8 vs the same server, variant and runtime with its batch ceiling at one
  request (``--max-batch-rows`` = the candidates): what batching alone gives
  (``batching_gain_same_variant``); recserve FP32 against naive shows what the engine
  gives without quantization;
* Ray Serve (``@serve.batch``) and BentoML (adaptive batching) serving the same ONNX
  variant (``--ray-python``, ``--bento-python``, else cached virtualenvs); a peer that
  cannot be installed or run fails the benchmark unless ``--skip-peer NAME`` names it;
* raw onnxruntime with the server's thread count at its best batch size over a sweep
  (the engine's limit; ``goodput_vs_engine_limit``);
* the router's p2c on live latency against least-request (nginx ``least_conn``, Envoy
  ``LEAST_REQUEST``) and round-robin, all with the same retry rule, over two unequal
  backends (an FP32 and an INT8 server: a real difference in compute) and two equal
  ones (two INT8 servers).

The last stdout line is one JSON object with the headline ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recserve_dev.servertesting import free_port, process, wait_http

CACHE = Path.home() / ".cache/recserve"
# each peer in its own virtualenv: their opentelemetry pins conflict with each other
PEER_ENVS = {
    "ray_serve": (CACHE / "ray-venv", "ray[serve]>=2.9", "ray.serve"),
    "bentoml": (CACHE / "bentoml-venv", "bentoml>=1.2", "bentoml"),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve bench serving` (sharing the `bench` group with other benches)."""
    from recserve_runtime.cli import bench_group

    bsub = bench_group(sub)
    p = bsub.add_parser(
        "serving",
        help="recserve server/router vs naive, Ray Serve, BentoML, engine limit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--slo-ms", type=float, default=25.0)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--duration-s", type=float, default=3.0, help="per load run")
    p.add_argument(
        "--rounds", type=int, default=3,
        help="interleaved rounds, every system in each (figures: medians over rounds)",
    )  # fmt: skip
    p.add_argument("--small", action="store_true", help="a small model (quick checks)")
    p.add_argument("--skip-peers", action="store_true", help="no Ray Serve / BentoML")
    p.add_argument(
        "--skip-peer", action="append", default=[], choices=sorted(PEER_ENVS),
        help="leave this peer out (repeatable); a peer not named fails the run if it "
        "cannot be installed or run",
    )  # fmt: skip
    p.add_argument("--ray-python", type=Path, help="Python with ray[serve]")
    p.add_argument("--bento-python", type=Path, help="Python with bentoml")
    p.add_argument(
        "--no-install-peers", action="store_true",
        help="do not create the peers' cached virtualenvs when missing (skip those peers)",
    )  # fmt: skip
    p.add_argument("--details-out", type=Path, help="write all measurements here (JSON)")
    p.add_argument("--workdir", type=Path, help="where to write the variants (default tmp)")
    p.set_defaults(handler=_bench_serving)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class SystemResult:
    """What the bench measured for one system in one round."""

    name: str
    goodput: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    light_p50_ms: float | None = None
    mean_batch_rows: float | None = None


@dataclass
class Rounds:
    """One system over every round: medians are its figures."""

    name: str
    runs: list[SystemResult] = field(default_factory=list)

    @property
    def goodputs(self) -> list[float]:
        return [r.goodput for r in self.runs]

    def summary(self) -> dict[str, Any]:
        """Medians over the rounds, and every round's figures."""
        lights = [r.light_p50_ms for r in self.runs if r.light_p50_ms is not None]
        batches = [r.mean_batch_rows for r in self.runs if r.mean_batch_rows is not None]
        return {
            "goodput": _median(self.goodputs),
            "goodput_rounds": self.goodputs,
            "light_p50_ms": _median(lights) if lights else None,
            "light_p50_ms_rounds": lights,
            "mean_batch_rows": round(_median(batches), 1) if batches else None,
            "at_goodput": [r.best for r in self.runs],
        }


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def spread(ratios: list[float]) -> dict[str, float | list[float] | None]:
    """Median, min, max and the values of per-round ratios (rounded to 3 places)."""
    ratios = [round(r, 3) for r in ratios]
    if not ratios:
        return {"median": None, "min": None, "max": None, "rounds": []}
    return {
        "median": round(_median(ratios), 3),
        "min": min(ratios),
        "max": max(ratios),
        "rounds": ratios,
    }


def paired(a: Rounds, b: Rounds, field_: str = "goodput") -> dict[str, float | list[float] | None]:
    """The :func:`spread` of ``a``/``b`` over the rounds, each round's pair taken together
    (a busy spell lowers both sides of a round)."""
    ratios = []
    for x, y in zip(a.runs, b.runs, strict=False):
        num, den = getattr(x, field_), getattr(y, field_)
        if num is not None and den:
            ratios.append(num / den)
    return spread(ratios)


async def _metrics_probe(port: int) -> dict[str, float]:
    def get() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            for key in ("recserve_batch_size_rows_sum", "recserve_batch_size_rows_count"):
                if line.startswith(key + " "):
                    out[key] = float(line.split()[1])
        return out

    return await asyncio.to_thread(get)


async def measure(
    name: str,
    port: int,
    path: str,
    bodies: list[bytes],
    args: argparse.Namespace,
    *,
    light: bool = True,
    probe_metrics: bool = False,
) -> SystemResult:
    """Light-load p50, then the goodput search."""
    from recserve_dev.loadgen import Target, closed_loop, find_goodput, open_loop

    slo = args.slo_ms / 1000.0
    target = Target("127.0.0.1", port, path, bodies)
    res = SystemResult(name)
    await closed_loop(target, 4, 1.0)  # warm-up
    if light:
        lr = await open_loop(target, 20.0, max(3.0, args.duration_s), seed=7)
        res.light_p50_ms = round(lr.pct(50) * 1000, 3)
    est = await closed_loop(target, 8, 1.5)
    start = max(10.0, 0.5 * est.throughput)
    _log(f"[{name}] light p50={res.light_p50_ms} ms; closed-loop estimate {est.throughput:.0f}/s")
    probe = (lambda: _metrics_probe(port)) if probe_metrics else None
    g = await find_goodput(
        target, slo, start_rate=start, growth=1.25, refine_steps=2,
        duration_s=args.duration_s, log=_log, probe=probe,
    )  # fmt: skip
    res.goodput = round(g.goodput, 1)
    if g.best is not None:
        res.best = g.best.summary()
        cnt = g.best.extra.get("recserve_batch_size_rows_count", 0.0)
        if cnt:
            res.mean_batch_rows = g.best.extra["recserve_batch_size_rows_sum"] / cnt
    _log(f"[{name}] goodput {res.goodput}/s at {res.best}")
    return res


ENGINE_BATCHES = (64, 128, 256, 512, 1024, 2048, 4096)


def engine_sweep(
    variant: Path, candidates: int, threads: int, seconds: float = 2.0
) -> dict[int, float]:
    """Raw onnxruntime requests/s (of ``candidates`` rows) at each batch size of
    :data:`ENGINE_BATCHES`, on ``threads`` threads (the server's own count); best of two
    short runs each (noise only ever lowers it)."""
    from recserve_dev.testmodel import random_batch
    from recserve_runtime import artifacts
    from recserve_runtime.server.model import load

    model = load(str(variant), "cpu", threads)
    manifest = artifacts.load_manifest(variant)

    def rate(rows: int) -> float:
        sparse, dense = random_batch(manifest, rows)
        model.run(sparse, dense)  # warm
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.run(sparse, dense)
            n += 1
        return n * rows / (time.perf_counter() - start) / candidates

    return {
        rows: round(max(rate(rows) for _ in range(2)), 1)
        for rows in ENGINE_BATCHES
        if rows >= candidates
    }


def _serve_argv(
    variant: Path, port: int, slo_ms: float, extra: list[str] | None = None
) -> list[str]:
    return [
        sys.executable, "-m", "recserve_runtime.cli", "serve", "--variant", str(variant),
        "--port", str(port), "--slo-p99-ms", str(slo_ms), "--log-level", "WARNING",
        *(extra or []),
    ]  # fmt: skip


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from recserve_dev import testmodel as tm
    from recserve_runtime import artifacts
    from recserve_runtime.threads import SERVER_INTRA_OP_THREADS

    spec = (
        tm.TestModelSpec(name="synthetic-dlrm-fp32")
        if args.small
        else tm.TestModelSpec(
            vocab_size=20000,
            dim=64,
            bottom_mlp=(256,),
            top_mlp=(1024, 512, 256),
            name="synthetic-criteo-dlrm-fp32",
        )
    )
    t0 = time.perf_counter()
    fp32 = tm.write_variant(work / "store", spec)
    int8 = tm.quantize_variant(fp32, work / "store")
    manifest = artifacts.load_manifest(fp32)
    bodies = tm.rank_bodies(manifest, 64, args.candidates)
    _log(f"variants built in {time.perf_counter() - t0:.1f}s: fp32={fp32.name} int8={int8.name}")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    systems: dict[str, Rounds] = {}
    ready = "/v2/health/ready"

    def keep(res: SystemResult) -> None:
        systems.setdefault(res.name, Rounds(res.name)).runs.append(res)

    async def run_ours(label: str, variant: Path, extra: list[str] | None = None) -> SystemResult:
        port = free_port()
        argv = _serve_argv(variant, port, args.slo_ms, extra)
        with process(argv, logs / f"{label}.log") as p:
            wait_http(f"http://127.0.0.1:{port}{ready}", 120, p)
            return await measure(label, port, "/v1/rank", bodies, args, probe_metrics=True)

    async def run_naive() -> SystemResult:
        port = free_port()
        argv = [sys.executable, "-m", "recserve_dev.peers.naive",
                "--variant", str(fp32), "--port", str(port)]  # fmt: skip
        with process(argv, logs / "naive.log") as p:
            wait_http(f"http://127.0.0.1:{port}{ready}", 120, p)
            return await measure("naive_torch_fp32", port, "/v1/rank", bodies, args)

    skipped = set(PEER_ENVS) if args.skip_peers else set(args.skip_peer)
    peer_pythons = {
        name: _peer_or_fail(
            name, {"ray_serve": args.ray_python, "bentoml": args.bento_python}[name], args
        )
        for name in PEER_ENVS
        if name not in skipped
    }
    one_request = ["--max-batch-rows", str(args.candidates)]  # a batch is one request
    for round_ in range(args.rounds):  # interleaved, so a busy spell hits every side
        _log(f"== round {round_ + 1} of {args.rounds}")
        keep(await run_ours("recserve_int8", int8))
        keep(await run_ours("recserve_int8_one_request_per_batch", int8, one_request))
        keep(await run_ours("recserve_fp32", fp32))
        keep(await run_naive())
        for name, python in peer_pythons.items():
            keep(await _run_peer(name, python, args, int8, bodies, logs))

    threads = SERVER_INTRA_OP_THREADS
    sweep = engine_sweep(int8, args.candidates, threads)
    best_rows = max(sweep, key=lambda rows: sweep[rows])
    limit = sweep[best_rows]
    _log(f"[engine] raw onnxruntime, {threads} thread(s): {sweep} requests/s by batch rows")

    routers = await _routers(args, fp32, int8, bodies, logs)
    systems.update(routers)

    ours, naive = systems["recserve_int8"], systems["naive_torch_fp32"]
    peers = [systems[name] for name in peer_pythons]
    best_peer = max(peers, key=lambda r: _median(r.goodputs), default=None)
    ratios = {
        "goodput_vs_naive": paired(ours, naive),
        "goodput_fp32_vs_naive": paired(systems["recserve_fp32"], naive),
        "latency_p50_ratio_vs_naive": paired(ours, naive, "light_p50_ms"),
        "batching_gain_same_variant": paired(ours, systems["recserve_int8_one_request_per_batch"]),
        "goodput_vs_best_peer": paired(ours, best_peer) if best_peer else None,
        "goodput_vs_engine_limit": spread([g / limit for g in ours.goodputs]),
    }
    for setup in ("unequal", "equal"):
        p2c = systems[f"router_p2c_{setup}"]
        for baseline in ("least_request", "round_robin"):
            ratios[f"router_vs_{baseline}_{setup}"] = paired(
                p2c, systems[f"router_{baseline}_{setup}"]
            )
    headline: dict[str, Any] = {key: (value or {}).get("median") for key, value in ratios.items()}
    headline["best_peer"] = best_peer.name if best_peer else None
    headline["rounds"] = args.rounds
    return {
        "model": {
            "spec": spec.__dict__ | {"synthetic": True},
            "fp32_bytes": (fp32 / "model.onnx").stat().st_size,
            "int8_bytes": (int8 / "model.onnx").stat().st_size,
        },
        "slo_ms": args.slo_ms,
        "candidates": args.candidates,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "peers_skipped": sorted(skipped),
        "engine_limit": {
            "threads": threads,
            "best_batch_rows": best_rows,
            "requests_per_s": limit,
            "by_batch_rows": sweep,
        },
        "systems": {name: r.summary() for name, r in systems.items()},
        "ratios": ratios,
        "headline": headline,
    }


def _peer_or_fail(name: str, given: Path | None, args: argparse.Namespace) -> Path:
    """The peer's Python, or the run stops with the reason (``--skip-peer`` leaves it out)."""
    python = peer_python(name, given, not args.no_install_peers)
    if python is None:
        raise SystemExit(
            f"bench serving: peer {name} cannot run here (see above); "
            f"--skip-peer {name} leaves it out of the comparison"
        )
    return python


def peer_python(name: str, given: Path | None, install: bool) -> Path | None:
    """A Python that can import the peer: ``given``, else its cached venv (created with
    ``--system-site-packages`` and pip-installed on first use when ``install``)."""
    venv, requirement, module = PEER_ENVS[name]
    python = given or venv / "bin" / "python"

    def works() -> bool:
        if given is None and python.exists():
            _link_current_env(python)
        probe = subprocess.run(
            [str(python), "-c", f"import {module}, recserve_dev.peers"], capture_output=True
        )
        return python.exists() and probe.returncode == 0

    if python.exists() and works():
        return python
    if given is not None or not install:
        _log(f"[{name}] skipped: {python} cannot import {module}")
        return None
    _log(f"[{name}] installing {requirement} into {venv} (once; cached)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       check=True)  # fmt: skip
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        requirement], check=True, timeout=1200)  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        _log(f"[{name}] skipped: could not install {requirement}: {exc}")
        return None
    return python if works() else None


def _link_current_env(peer_python: Path) -> None:
    """Let the cached peer venv import recserve from the environment running the bench.

    ``--system-site-packages`` only reaches the base interpreter's packages, not those of
    the (project or CI) venv this bench runs in, and that venv changes between runs; a
    ``.pth`` file rewritten on every use points the peer venv at it. The peer's own
    packages still come first: ``site.addsitedir`` appends after its site-packages.
    """
    purelib = subprocess.run(
        [str(peer_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # site.addsitedir, not a bare path: it also reads that environment's own .pth files,
    # which is where an editable install (the dev kit's) puts itself on the path
    lines = [f"import site; site.addsitedir({path!r})" for path in sorted(ours)]
    (Path(purelib) / "recserve-current-env.pth").write_text("\n".join(lines) + "\n")


async def _run_peer(
    name: str,
    python: Path,
    args: argparse.Namespace,
    variant: Path,
    bodies: list[bytes],
    logs: Path,
) -> SystemResult:
    """One round of a peer serving ``variant``; the run stops if it cannot serve."""
    import orjson

    port = free_port()
    if name == "ray_serve":
        argv = [str(python), "-m", "recserve_dev.peers.ray_peer",
                "--variant", str(variant), "--port", str(port)]  # fmt: skip
        env: dict[str, str] | None = None
        path, sent = "/v1/rank", bodies
    else:
        argv = [str(python.parent / "bentoml"), "serve", "recserve_dev.peers.bento_peer:Ranker",
                "--host", "127.0.0.1", "-p", str(port)]  # fmt: skip
        env = {"RECSERVE_VARIANT": str(variant)}
        path, sent = "/rank", [orjson.dumps({"requests": [orjson.loads(b)]}) for b in bodies]
    log = logs / f"{name}.log"
    try:
        with process(argv, log, env) as p:
            _wait_post(port, path, sent[0], 180, p)
            return await measure(name, port, path, sent, args)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(
            f"bench serving: peer {name} could not serve: {exc} (see {log}); "
            f"--skip-peer {name} leaves it out of the comparison"
        ) from exc


def _wait_post(
    port: int, path: str, body: bytes, timeout_s: float, proc: subprocess.Popen[bytes]
) -> None:
    """Wait until a POST of ``body`` answers 200 (peers have no common health path)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=body, method="POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer on port {port} within {timeout_s:.0f}s")


ROUTER_POLICIES = ("p2c", "least-request", "round-robin")


async def _routers(
    args: argparse.Namespace, fp32: Path, int8: Path, bodies: list[bytes], logs: Path
) -> dict[str, Rounds]:
    """Each policy over two unequal backends (FP32 and INT8: the difference is compute)
    and two equal ones (INT8 twice), every policy in every round."""
    out: dict[str, Rounds] = {}
    for setup, variants in (("unequal", (fp32, int8)), ("equal", (int8, int8))):
        ports = [free_port(), free_port()]
        with (
            process(_serve_argv(variants[0], ports[0], args.slo_ms), logs / f"{setup}_a.log") as a,
            process(_serve_argv(variants[1], ports[1], args.slo_ms), logs / f"{setup}_b.log") as b,
        ):
            for port, proc in zip(ports, (a, b), strict=True):
                wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 120, proc)
            for _ in range(args.rounds):
                for policy in ROUTER_POLICIES:
                    port = free_port()
                    argv = [sys.executable, "-m", "recserve_runtime.cli", "route", "--backends",
                            *(f"127.0.0.1:{p}" for p in ports), "--port", str(port),
                            "--policy", policy, "--log-level", "WARNING"]  # fmt: skip
                    name = f"router_{policy.replace('-', '_')}_{setup}"
                    with process(argv, logs / f"{name}.log") as pr:
                        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60, pr)
                        res = await measure(name, port, "/v1/rank", bodies, args, light=False)
                    out.setdefault(name, Rounds(name)).runs.append(res)
    return out


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so every started process is stopped


def _bench_serving(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recserve-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = runner(_bench(args, work))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.details_out:
        args.details_out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    headline = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in report["headline"].items()
    }
    print(json.dumps(headline))
    return 0
