"""Planned capacity is what a replica serves: `recserve profile` (with its served-path
calibration) -> the planner's per-replica capacity -> the real server, deployed the way
the operator deploys it, driven to saturation.

No Kubernetes needed: the profile is the real command line, the server a real process
on 127.0.0.1, the client the dev kit's closed-loop load generator (not the profiler's
own client). The calibration runs 8 and 256 candidates per request; the check runs 64,
so it tests the fitted model between its points, not a replay of them.

"What a replica serves" is requests per CPU-second of the server process: a replica's
pod gets its CPU limit (one core on the example cpu-pool), while this machine is shared
(other tests, the client itself), so wall-clock throughput here says more about the
neighbours than about the server. Wall-clock numbers are printed beside it.

How much CPU a request takes still moves with what else the machine runs (caches,
preemption), by up to a fifth from one minute to the next on a busy 2-core machine. So
the served capacity is measured before and after each of three profiles (measure,
profile, measure, profile, ...: four measurements, one server), each plan is compared
with the mean of the two measurements around it, and the median of the three relative
errors is checked. The p99 target is relaxed for the plan and the server alike (a busy
machine's wall-clock latencies would change which batch is planned; the latency policy
is not under test); the batch ceiling (256: the one profiled batch the plan can use),
threads and model threads are the deployed ones.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from recserve_dev import testmodel as tm
from recserve_dev.loadgen import Target, closed_loop
from recserve_dev.servertesting import run_server
from recserve_operator.api import HardwarePool, OptimizationPolicy
from recserve_operator.api.recmodel import Traffic
from recserve_operator.planner import (
    Objectives,
    PoolCapacity,
    VariantProfile,
    best_option,
)
from recserve_runtime import artifacts
from recserve_runtime.serving_profile import CALIBRATION_SLO_MS, process_cpu_seconds
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS
from tests.manifests import example

# alone: with a second test worker on the two cores, the measured capacity fell 18% below
# the plan (tolerance 15%). The timeout counts the wait for the other worker's test.
pytestmark = [pytest.mark.integration, pytest.mark.alone, pytest.mark.timeout(480)]

CANDIDATES = 64
BATCH = 256
TOLERANCE = 0.15
# the median of 5: with 3, one CI run's rounds read +2.8%, +31.1% and +16.9% (the
# serving calibration's per-request overhead read 464, 151 and 194 us on this shared
# machine) and failed, while the next two runs read -6.4% and +10.8%
ROUNDS = 5
WINDOW_S = 1.5
WINDOWS = 3
CONNECTIONS = 16  # enough that batches fill up to the planned ceiling
SPEC = tm.TestModelSpec(vocab_size=500)


def profile(store: Path, out: Path) -> artifacts.ProfileReport:
    """`recserve profile --serving` over the store. Batch sizes: around the calibration's,
    and one (256) that the plan for 64 candidates can use (up to the policy's 512)."""
    done = subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={store}",
         f"--json={out}", "--hardware=cpu", "--batch-sizes=8,256,1024", "--seconds=0.5",
         "--serving", "--serving-seconds=4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    print(done.stderr)
    assert done.returncode == 0, done.stderr
    report = artifacts.ProfileReport.read(out)
    assert report.serving is not None and report.serving.clock == "cpu"
    assert report.serving.threads == SERVER_INTRA_OP_THREADS
    assert [p.candidates for p in report.serving.points] == [8, 8, 256, 256]
    return report


def served_per_cpu_second(target: Target, pid: int) -> tuple[float, float, float]:
    """One saturated run: (requests per server CPU-second, wall req/s, server cores)."""
    cpu0 = process_cpu_seconds(pid)
    result = asyncio.run(closed_loop(target, CONNECTIONS, WINDOW_S))
    cpu1 = process_cpu_seconds(pid)
    assert cpu0 is not None and cpu1 is not None, "needs Linux /proc"
    assert result.ok >= 0.99 * result.sent, result.codes
    cpu = cpu1 - cpu0
    return result.ok / cpu, result.throughput, cpu / WINDOW_S


def measure(target: Target, pid: int) -> tuple[float, list[tuple[float, float, float]]]:
    """Requests per server CPU-second at saturation: the median of WINDOWS runs."""
    asyncio.run(closed_loop(target, CONNECTIONS, 0.5))  # warm-up
    runs = [served_per_cpu_second(target, pid) for _ in range(WINDOWS)]
    return statistics.median(r[0] for r in runs), runs


def test_planned_capacity_matches_what_a_replica_serves(tmp_path: Path) -> None:
    store = tmp_path / "variants"
    variant = tm.write_variant(store, SPEC, keep_weights=False)
    manifest = artifacts.load_manifest(variant)
    bodies = tm.rank_bodies(manifest, 32, CANDIDATES)
    policy = OptimizationPolicy.model_validate(example("latency-first")).spec
    traffic = Traffic(expected_requests_per_second=200, candidates_per_request=CANDIDATES)
    objectives = replace(Objectives.of(policy, traffic), p99_target_ms=CALIBRATION_SLO_MS)
    errors, ignored = [], []
    # the server as the operator deploys it for the plan, saturated with 64 candidates
    with run_server(
        variant,
        tmp_path,
        f"--max-batch-rows={BATCH}",
        f"--slo-p99-ms={CALIBRATION_SLO_MS}",
        f"--intra-op-threads={SERVER_INTRA_OP_THREADS}",
        "--workers=1",
    ) as server:
        target = Target("127.0.0.1", server.port, "/v1/rank", bodies)
        before, _ = measure(target, server.proc.pid)
        for n in range(ROUNDS):
            # the planner's per-replica capacity for 64-candidate requests on this "pool"
            report = profile(store, tmp_path / f"profile-{n}.json")
            profiled = VariantProfile.of(variant.name, manifest, {"cpu-pool": report})
            pool = PoolCapacity.of(HardwarePool.model_validate(example("cpu-pool")), report)
            option = best_option(profiled, pool, objectives)
            compute_only = best_option(profiled, replace(pool, serving=None), objectives)
            assert option is not None and compute_only is not None
            assert option.batch_size == BATCH

            after, next_runs = measure(target, server.proc.pid)
            measured = (before + after) / 2
            errors.append((option.capacity_rps - measured) / measured)
            ignored.append((compute_only.capacity_rps - measured) / measured)
            serving = report.serving
            assert serving is not None
            print(
                f"round {n + 1}: overhead {serving.per_request_microseconds:.0f} us/request + "
                f"{serving.per_row_microseconds:.2f} us/row + "
                f"{serving.per_batch_microseconds:.0f} us/batch; planned "
                f"{option.capacity_rps:.0f} req/s per replica, served {before:.0f} before and "
                f"{after:.0f} after per CPU-second (windows after: "
                + ", ".join(f"{a:.0f} [{w:.0f} wall on {c:.2f} cores]" for a, w, c in next_runs)
                + f"): {errors[-1]:+.1%}; compute only would plan "
                f"{compute_only.capacity_rps:.0f} ({ignored[-1]:+.0%})"
            )
            before = after
    error = statistics.median(errors)
    print(f"median error {error:+.1%} (rounds: {', '.join(f'{e:+.1%}' for e in errors)})")
    assert abs(error) <= TOLERANCE
    # and the check has teeth: without the served-path overhead the plan is far off
    assert abs(statistics.median(ignored)) > TOLERANCE
