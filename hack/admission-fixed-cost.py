"""Admission on a device with a fixed cost per call.

One `recserve serve` replica in emulated-device mode (40 ms per batch + 0.15 ms per row,
SLO 500 ms), open-loop /v1/rank load of 64 candidates at 30..70 req/s, 8 s per rate, at
batch ceilings of 128 and 512 rows; prints throughput, p99 and the 429s per rate
(docs/serving.md#batching-and-admission).

    .venv/bin/python hack/admission-fixed-cost.py [port]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from recserve_dev.loadgen import Target, open_loop
from recserve_dev.testmodel import rank_bodies, write_variant
from recserve_runtime.artifacts import load_manifest


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18123
    folder = write_variant(Path(tempfile.mkdtemp(prefix="admission-")))
    bodies = rank_bodies(load_manifest(folder), count=64, candidates=64)
    server = subprocess.Popen(
        [sys.executable, "-m", "recserve_runtime.cli", "serve", f"--variant={folder}",
         f"--port={port}", "--emulate-us-per-batch=40000", "--emulate-us-per-row=150",
         "--max-batch-rows=128", "--slo-p99-ms=500", "--log-level=WARNING"]
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        target = Target("127.0.0.1", port, "/v1/rank", bodies)
        for ceiling in (128, 512):
            body = json.dumps({"max_batch_rows": ceiling}).encode()
            req = urllib.request.Request(f"{base}/admin/limits", data=body, method="PUT")
            urllib.request.urlopen(req, timeout=5).read()
            for rate in (30, 40, 50, 60, 70):
                result = asyncio.run(open_loop(target, rate, 8.0, timeout_s=5))
                print(ceiling, rate, result.summary(), flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
