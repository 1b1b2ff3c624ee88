"""Latency/throughput profiles of ONNX variants with onnxruntime on this machine.

The execution provider follows the hardware type (cpu: CPU; gpu: TensorRT, then CUDA;
fpga: Vitis AI); when the wanted one is not available the CPU provider is used and the
profile says so in ``fallbackReason``. Threads default to SERVER_INTRA_OP_THREADS, what
one server replica runs each call with, so a profile is one replica's capacity.
Each point: warm-up, then timed calls until both ``min_calls`` and ``seconds`` are
reached; p50/p99 of the per-call (wall-clock) latency, throughput = samples / total timed
seconds. On the CPU provider with one intra-op thread (the server's setting) onnxruntime
runs in the calling thread, and those seconds are that thread's CPU time (the profile's
``clock`` says ``cpu``): the throughput of one core of its own, which is what a pod's CPU
limit buys and what the served-path calibration (:mod:`recserve_runtime.serving_profile`)
measures in, and which other work on the machine (another profile Job, say) does not
change the way it changes wall-clock time. Elsewhere (GPU providers, several threads)
the seconds are wall-clock (``clock: wall``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime.artifacts import FeatureSpec, Profile, ProfilePoint
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS

BATCH_SIZES = (1, 8, 64, 256, 1024)
WANTED = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "fpga": ["VitisAIExecutionProvider"],
}


def cpu_threads() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def choose_provider(hardware: str) -> tuple[str, str | None]:
    """(provider, fallback reason or None) for a hardware type."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = WANTED.get(hardware, ["CPUExecutionProvider"])
    for provider in wanted:
        if provider in available:
            return provider, None
    return "CPUExecutionProvider", (
        f"none of {', '.join(wanted)} is available in this onnxruntime build "
        f"(has {', '.join(available)}); measured on CPU instead"
    )


def make_session(path: Path, threads: int, provider: str = "CPUExecutionProvider") -> Any:
    """An onnxruntime session with full graph optimization and explicit thread counts."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[provider])


def random_feed(spec: FeatureSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of ``batch`` rows that fit the spec."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f.vocab_size for f in spec.sparse])
    n_dense = sum(f.width for f in spec.dense)
    return {
        spec.sparse_input: (rng.random((batch, len(vocab))) * vocab).astype(np.int64),
        spec.dense_input: rng.standard_normal((batch, n_dense)).astype(np.float32),
    }


def time_calls(
    call: Any,
    batch: int,
    seconds: float,
    min_calls: int = 10,
    warmup: int = 3,
    cpu_clock: bool = False,
) -> ProfilePoint:
    """Time a zero-argument callable; ``batch`` samples per call. Throughput is per
    wall-clock second, or per CPU second of this thread with ``cpu_clock`` (for calls
    that run in the calling thread only)."""
    for _ in range(warmup):
        call()
    lat: list[float] = []
    start = time.perf_counter()
    cpu_start = time.thread_time()
    while len(lat) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
        if len(lat) >= 20_000:
            break
    cpu = time.thread_time() - cpu_start
    arr = np.array(lat) * 1e6
    busy = cpu if cpu_clock and cpu > 0 else float(arr.sum()) / 1e6
    return ProfilePoint(
        batch_size=batch,
        p50_us=float(np.percentile(arr, 50)),
        p99_us=float(np.percentile(arr, 99)),
        samples_per_second=batch * len(lat) / busy,
    )


def profile_batch(
    path: Path,
    spec: FeatureSpec,
    batch: int,
    threads: int,
    seconds: float = 0.5,
    session: Any = None,
    cpu_clock: bool = False,
) -> ProfilePoint:
    """One profile point of an ONNX file."""
    sess = session or make_session(path, threads)
    feed = random_feed(spec, batch)
    return time_calls(lambda: sess.run(None, feed), batch, seconds, cpu_clock=cpu_clock)


def profile(
    path: Path,
    spec: FeatureSpec,
    hardware: str = "cpu",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    threads: int = SERVER_INTRA_OP_THREADS,
    seconds: float = 0.5,
) -> Profile:
    """Latency and throughput of one variant at each batch size, on ``threads``
    onnxruntime threads (default: the server's)."""
    provider, reason = choose_provider(hardware)
    sess = make_session(path, threads, provider)
    cpu_clock = provider == "CPUExecutionProvider" and threads == 1
    points = [profile_batch(path, spec, b, threads, seconds, sess, cpu_clock) for b in batch_sizes]
    return Profile(
        hardware=hardware,
        execution_provider=provider,
        fallback_reason=reason,
        threads=threads,
        clock="cpu" if cpu_clock else "wall",
        points=points,
    )
