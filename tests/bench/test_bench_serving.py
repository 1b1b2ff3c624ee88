"""`recserve bench serving` end to end: runs every comparison, prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1500)]

KEYS = {
    "goodput_vs_naive",
    "latency_p50_ratio_vs_naive",
    "goodput_vs_best_peer",
    "best_peer",
    "goodput_vs_engine_limit",
    "router_vs_round_robin",
}


def test_bench_serving_prints_the_headline_json_line(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "bench", "serving"],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    sys.stderr.write(proc.stderr[-6000:])
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    headline = json.loads(last)
    assert set(headline) == KEYS
    # the comparisons that need nothing beyond this repository must have produced numbers
    for key in ("goodput_vs_naive", "latency_p50_ratio_vs_naive", "goodput_vs_engine_limit",
                "router_vs_round_robin"):  # fmt: skip
        assert isinstance(headline[key], float) and headline[key] > 0, headline
