"""Helpers to run real server/router processes on 127.0.0.1 (tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; returns (status, lower-case headers, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_http(
    url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, ok: int = 200
) -> None:
    """Poll ``url`` until it answers ``ok`` (raises TimeoutError, or if ``proc`` died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if http("GET", url, timeout=1)[0] == ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {ok} within {timeout_s:.0f}s")


@contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None, stop_timeout_s: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group; SIGTERM (then SIGKILL) the group on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


@dataclass
class Running:
    """A started server or router."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    admin_port: int | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin API (servers only)."""
        assert self.admin_port is not None, "a router has no admin API"
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        """What the process printed so far."""
        return self.log.read_text(errors="replace")


def serve_argv(variant: Path | str, port: int, *extra: str) -> list[str]:
    """Command line of `recserve serve` on 127.0.0.1:port."""
    return [sys.executable, "-m", "recserve_runtime.cli", "serve", "--variant", str(variant),
            "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip


@contextmanager
def run_server(
    variant: Path | str,
    log_dir: Path,
    *extra: str,
    wait_ready: bool = True,
    port: int | None = None,
    **kw: Any,
) -> Iterator[Running]:
    """A `recserve serve` process with its admin API on a free port of its own; waits for
    live (and ready unless ``wait_ready=False``)."""
    port = port or free_port()
    admin = free_port()
    log = log_dir / f"serve-{port}.log"
    argv = serve_argv(variant, port, "--admin-port", str(admin), *extra)
    with process(argv, log, **kw) as proc:
        path = "/v2/health/ready" if wait_ready else "/v2/health/live"
        wait_http(f"http://127.0.0.1:{port}{path}", 60, proc)
        yield Running(port, proc, log, admin)


@contextmanager
def run_router(
    backends: list[str], log_dir: Path, *extra: str, wait_ready: bool = True
) -> Iterator[Running]:
    """A `recserve route` process over static backends; waits for ready (or live)."""
    port = free_port()
    log = log_dir / f"route-{port}.log"
    argv = [sys.executable, "-m", "recserve_runtime.cli", "route", "--backends", *backends,
            "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    with process(argv, log) as proc:
        path = "/v2/health/ready" if wait_ready else "/v2/health/live"
        wait_http(f"http://127.0.0.1:{port}{path}", 60, proc)
        yield Running(port, proc, log)


def track_counts(router: str, metrics_port: int = 8082) -> dict[str, float]:
    """A router's answers so far by the track (stable, canary) of the backend that gave
    them, from its ``recserve_router_track_requests_total`` counters."""
    with urllib.request.urlopen(f"http://{router}:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts = {"stable": 0.0, "canary": 0.0}
    for line in text.splitlines():
        if line.startswith("recserve_router_track_requests_total{"):
            track = line.split('track="', 1)[1].split('"', 1)[0]
            counts[track] = counts.get(track, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts
