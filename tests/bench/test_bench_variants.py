"""`recserve bench variants`: runs the benchmark (quick) and checks its headline targets.

Speed/size on a SYNTHETIC production-scale DLRM (and the trained MovieLens variants),
accuracy on MovieLens-100k. Prints the whole report (run with `-s`). Every target is
asserted: a missed one, or a key that is missing or not a number, fails the test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

# key -> (comparison, target); speed ratios are medians of per-round paired ratios
TARGETS = {
    "int8_size_reduction_pct": (">=", 70.0),
    "int8_auc_drop_rel_pct": ("<=", 0.1),
    "int8_speedup_b256": (">=", 3.0),
    "combined_size_reduction_pct": (">=", 90.0),
    "combined_auc_drop_rel_pct": ("<=", 1.0),
    "combined_speedup_b256": (">=", 6.0),
    "combined_latency_ratio_b1": ("<=", 0.30),
    "combined_speedup_vs_ort_fp32_b256": (">=", 5.0),
}
REPORTED = {
    "int8_speedup_vs_ort_fp32_b256",
    "int8_speedup_vs_ort_fp32_b256_movielens",
    "combined_speedup_vs_ort_fp32_b256_movielens",
}


def test_bench_variants_meets_its_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "bench", "variants", "--quick"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert "SYNTHETIC" in done.stdout
    for key in (*TARGETS, *REPORTED):
        value = line.get(key)
        assert isinstance(value, int | float) and math.isfinite(value), f"{key}: {value!r}"
    for key, (lo, hi) in line["spread"].items():  # a median lies within its rounds
        assert lo <= line[key] <= hi, f"{key} = {line[key]} outside its rounds' [{lo}, {hi}]"
    missed = [
        f"{key} = {line[key]} (target {op} {target})"
        for key, (op, target) in TARGETS.items()
        if not (line[key] >= target if op == ">=" else line[key] <= target)
    ]
    assert not missed, "missed: " + "; ".join(missed)
