"""Measure what rate() and irate() read right after Prometheus resumes from a pause.

A counter grows at 100/s on a local /metrics endpoint; the cached Prometheus
(hack/tools.sh) scrapes it every 5 s; after 25 s it is stopped (SIGSTOP) for 25 s, then
resumed, and both functions are queried every 0.5 s for 12 s. This is the measurement
behind the autoscaler's use of irate() for its fast window (docs/autoscaling.md).

    .venv/bin/python hack/prometheus-rate-after-outage.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from recserve_dev.localcluster.tools import find_tools

EXPORTER, PROMETHEUS = 19101, 19090


def main() -> None:
    registry = CollectorRegistry()
    served = Counter("recserve_requests", "requests", ["endpoint", "code"], registry=registry)
    Gauge("recserve_ready", "ready", registry=registry).set(1)
    start_http_server(EXPORTER, addr="127.0.0.1", registry=registry)

    def grow() -> None:
        while True:
            served.labels("rank", "200").inc(10)
            time.sleep(0.1)

    threading.Thread(target=grow, daemon=True).start()
    work = Path(tempfile.mkdtemp())
    (work / "p.yml").write_text(
        "global: {scrape_interval: 5s}\nscrape_configs:\n- job_name: x\n"
        f"  static_configs: [{{targets: ['127.0.0.1:{EXPORTER}']}}]\n"
    )
    prom = subprocess.Popen(
        [str(find_tools().prometheus), f"--config.file={work / 'p.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{PROMETHEUS}",
         "--log.level=error"],
    )  # fmt: skip

    def ask(expr: str) -> list[float]:
        url = f"http://127.0.0.1:{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(expr)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return [round(float(s["value"][1]), 1) for s in json.load(r)["data"]["result"]]

    def show(when: str) -> None:
        print(
            f"{when:6} rate {ask('sum(rate(recserve_requests_total[15s]))')} "
            f"irate {ask('sum(irate(recserve_requests_total[15s]))')} "
            f"scrapes in 15 s {ask('count_over_time(recserve_ready[15s])')}"
        )

    try:
        time.sleep(25)
        show("before")
        prom.send_signal(signal.SIGSTOP)
        time.sleep(25)
        prom.send_signal(signal.SIGCONT)
        for _ in range(24):
            show("after")
            time.sleep(0.5)
    finally:
        prom.terminate()


if __name__ == "__main__":
    main()
