"""`recserve bench serving`: recserve's server and router against baselines, in one run.

Every system serves the same synthetic, Criteo-shaped DLRM (random weights: speed only,
never accuracy) on this machine, and answers /v1/rank requests ranking 64 candidates.
Goodput = requests/s completed in an open-loop run whose p99 (failures counted as
infinitely slow) is within the SLO (25 ms), searched over offered rates.

Compared, each in its own process(es), one after the other:

* recserve (INT8 and FP32 variants) vs the naive server (torch eager FP32, one forward
  per request, same HTTP stack) — goodput, and p50 at light load;
* Ray Serve (``@serve.batch``) and BentoML (adaptive batching) serving the same ONNX
  variant, when their Pythons are available (``--ray-python``, ``--bento-python``);
* raw onnxruntime throughput at the batch size recserve's batcher ran at (engine limit);
* the router (p2c on live latency) vs round-robin over a fast and a slow backend (the
  slow one uses ``--emulate-us-per-row``: it sleeps, emulating slower hardware).

The last stdout line is one JSON object with the headline ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
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
        "--rounds", type=int, default=2,
        help="interleaved rounds for recserve/naive and router/round-robin (best kept)",
    )  # fmt: skip
    p.add_argument("--small", action="store_true", help="a small model (quick checks)")
    p.add_argument("--skip-peers", action="store_true", help="no Ray Serve / BentoML")
    p.add_argument("--ray-python", type=Path, help="Python with ray[serve]")
    p.add_argument("--bento-python", type=Path, help="Python with bentoml")
    p.add_argument(
        "--no-install-peers", action="store_true",
        help="do not create the peers' cached virtualenvs when missing (skip those peers)",
    )  # fmt: skip
    p.add_argument(
        "--slow-us-per-row", type=float, default=100.0,
        help="the slow backend emulates a device taking this long per row (default 100)",
    )  # fmt: skip
    p.add_argument("--details-out", type=Path, help="write all measurements here (JSON)")
    p.add_argument("--workdir", type=Path, help="where to write the variants (default tmp)")
    p.set_defaults(handler=_bench_serving)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class SystemResult:
    """What the bench measured for one system."""

    name: str
    goodput: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    light_p50_ms: float | None = None
    mean_batch_rows: float | None = None
    rounds: list[float] = field(default_factory=list)


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


def engine_limit(variant: Path, batch_rows: int, candidates: int, seconds: float = 2.0) -> float:
    """Raw onnxruntime requests/s (of ``candidates`` rows) at ``batch_rows`` per call."""
    from recserve_dev.testmodel import random_batch
    from recserve_runtime import artifacts
    from recserve_runtime.server.model import load

    model = load(str(variant), "cpu", 1)
    sparse, dense = random_batch(artifacts.load_manifest(variant), batch_rows)
    model.run(sparse, dense)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(sparse, dense)
        n += 1
    rows_per_s = n * batch_rows / (time.perf_counter() - start)
    return rows_per_s / candidates


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
    results: dict[str, SystemResult] = {}
    ready = "/v2/health/ready"

    def keep(res: SystemResult) -> None:
        """Best of the rounds: noise on a shared machine only ever lowers goodput."""
        old = results.get(res.name)
        res.rounds = [*(old.rounds if old else []), res.goodput]
        if old is not None:
            lights = [x for x in (old.light_p50_ms, res.light_p50_ms) if x is not None]
            if old.goodput >= res.goodput:
                old.rounds, old.light_p50_ms = res.rounds, min(lights, default=None)
                return
            res.light_p50_ms = min(lights, default=None)
        results[res.name] = res

    async def run_ours(label: str, variant: Path) -> SystemResult:
        port = free_port()
        with process(_serve_argv(variant, port, args.slo_ms), logs / f"{label}.log") as p:
            wait_http(f"http://127.0.0.1:{port}{ready}", 120, p)
            return await measure(label, port, "/v1/rank", bodies, args, probe_metrics=True)

    async def run_naive() -> SystemResult:
        port = free_port()
        argv = [sys.executable, "-m", "recserve_dev.peers.naive",
                "--variant", str(fp32), "--port", str(port)]  # fmt: skip
        with process(argv, logs / "naive.log") as p:
            wait_http(f"http://127.0.0.1:{port}{ready}", 120, p)
            return await measure("naive_torch_fp32", port, "/v1/rank", bodies, args)

    for round_ in range(args.rounds):  # interleaved, so a busy spell hits both sides
        keep(await run_ours("recserve_int8", int8))
        keep(await run_naive())
        if round_ == 0:
            keep(await run_ours("recserve_fp32", fp32))

    peers: dict[str, SystemResult] = {}
    if not args.skip_peers:
        peers = await _peers(args, int8, bodies, logs)
        results.update(peers)

    ours = results["recserve_int8"]
    batch_rows = max(args.candidates, round(ours.mean_batch_rows or args.candidates))
    # best of two short runs: like the servers' goodput, only ever lowered by noise
    limit = max(engine_limit(int8, batch_rows, args.candidates) for _ in range(2))
    _log(f"[engine] raw onnxruntime at batch {batch_rows} rows: {limit:.0f} requests/s")

    for res in await _router_vs_rr(args, int8, bodies, logs):
        keep(res)

    best_peer = max(peers.values(), key=lambda r: r.goodput, default=None)
    naive = results["naive_torch_fp32"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    headline = {
        "goodput_vs_naive": ratio(ours.goodput, naive.goodput),
        "latency_p50_ratio_vs_naive": ratio(ours.light_p50_ms, naive.light_p50_ms),
        "goodput_vs_best_peer": ratio(ours.goodput, best_peer.goodput if best_peer else None),
        "best_peer": best_peer.name if best_peer else None,
        "goodput_vs_engine_limit": ratio(ours.goodput, limit),
        "router_vs_round_robin": ratio(
            results["router_p2c"].goodput, results["router_round_robin"].goodput
        ),
    }
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
        "engine_limit": {"batch_rows": batch_rows, "requests_per_s": round(limit, 1)},
        "systems": {k: v.__dict__ for k, v in results.items()},
        "headline": headline,
    }


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
    packages still come first: ``.pth`` entries are appended after its site-packages.
    """
    purelib = subprocess.run(
        [str(peer_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "recserve-current-env.pth").write_text("\n".join(sorted(ours)) + "\n")


async def _peers(
    args: argparse.Namespace, variant: Path, bodies: list[bytes], logs: Path
) -> dict[str, SystemResult]:
    import orjson

    out: dict[str, SystemResult] = {}
    ray_python = peer_python("ray_serve", args.ray_python, not args.no_install_peers)
    bento_python = peer_python("bentoml", args.bento_python, not args.no_install_peers)
    if ray_python is not None:
        port = free_port()
        argv = [str(ray_python), "-m", "recserve_dev.peers.ray_peer",
                "--variant", str(variant), "--port", str(port)]  # fmt: skip
        try:
            with process(argv, logs / "ray.log") as p:
                _wait_post(port, "/v1/rank", bodies[0], 180, p)
                out["ray_serve"] = await measure("ray_serve", port, "/v1/rank", bodies, args)
        except (RuntimeError, TimeoutError) as exc:
            _log(f"[ray_serve] could not run: {exc} (see {logs / 'ray.log'})")
    if bento_python is not None:
        port = free_port()
        bento = bento_python.parent / "bentoml"
        argv = [str(bento), "serve", "recserve_dev.peers.bento_peer:Ranker",
                "--host", "127.0.0.1", "-p", str(port)]  # fmt: skip
        wrapped = [orjson.dumps({"requests": [orjson.loads(b)]}) for b in bodies]
        try:
            with process(argv, logs / "bento.log", {"RECSERVE_VARIANT": str(variant)}) as p:
                _wait_post(port, "/rank", wrapped[0], 180, p)
                out["bentoml"] = await measure("bentoml", port, "/rank", wrapped, args)
        except (RuntimeError, TimeoutError) as exc:
            _log(f"[bentoml] could not run: {exc} (see {logs / 'bento.log'})")
    return out


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


async def _router_vs_rr(
    args: argparse.Namespace, variant: Path, bodies: list[bytes], logs: Path
) -> list[SystemResult]:
    fast, slow = free_port(), free_port()
    out: list[SystemResult] = []
    slow_args = ["--emulate-us-per-row", str(args.slow_us_per_row)]
    with (
        process(_serve_argv(variant, fast, args.slo_ms), logs / "backend_fast.log") as pf,
        process(
            _serve_argv(variant, slow, args.slo_ms, slow_args), logs / "backend_slow.log"
        ) as ps,
    ):
        wait_http(f"http://127.0.0.1:{fast}/v2/health/ready", 120, pf)
        wait_http(f"http://127.0.0.1:{slow}/v2/health/ready", 120, ps)
        for _ in range(args.rounds):
            for policy in ("p2c", "round-robin"):
                port = free_port()
                argv = [sys.executable, "-m", "recserve_runtime.cli", "route", "--backends",
                        f"127.0.0.1:{fast}", f"127.0.0.1:{slow}", "--port", str(port),
                        "--policy", policy, "--log-level", "WARNING"]  # fmt: skip
                name = "router_p2c" if policy == "p2c" else "router_round_robin"
                with process(argv, logs / f"{name}.log") as pr:
                    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60, pr)
                    out.append(await measure(name, port, "/v1/rank", bodies, args, light=False))
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
