"""`recserve bench variants`: runs the benchmark and checks its headline JSON line.

Speed/size on a SYNTHETIC production-scale DLRM, accuracy on MovieLens-100k. Prints the
whole report (run with `-s`); the assertions check shape and sanity, not the targets,
which are reported (targets: INT8 >= 70% smaller, <= 0.1% AUC drop, >= 3x at batch 256;
combined >= 90%, <= 1%, >= 6x, batch-1 latency <= 30% of baseline).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

KEYS = {
    "int8_size_reduction_pct",
    "int8_auc_drop_rel_pct",
    "int8_speedup_b256",
    "combined_size_reduction_pct",
    "combined_auc_drop_rel_pct",
    "combined_speedup_b256",
    "combined_latency_ratio_b1",
}


def test_bench_variants_prints_headline_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "bench", "variants"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    line = json.loads(last)
    assert set(line) == KEYS
    assert "SYNTHETIC" in done.stdout
    assert 60 < line["int8_size_reduction_pct"] < 80
    assert line["combined_size_reduction_pct"] > line["int8_size_reduction_pct"]
    assert line["int8_speedup_b256"] > 0 and line["combined_speedup_b256"] > 0
    assert abs(line["int8_auc_drop_rel_pct"]) < 1.0
