"""The router's request handling: pick a backend, forward, learn, retry once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from recserve_runtime.router.balancer import Backend, Balancer, Target
from recserve_runtime.router.metrics import RouterMetrics
from recserve_runtime.router.upstream import UpstreamError, UpstreamPool
from recserve_runtime.server.service import Response, error, json_response

log = logging.getLogger("recserve.router")

FORWARD_REQUEST_HEADERS = ("content-type", "inference-header-content-length", "x-deadline-ms")
FORWARD_RESPONSE_HEADERS = ("inference-header-content-length", "retry-after")
Addr = tuple[str, int]
Watch = Callable[[Callable[[], None], threading.Event], None]
WeightsWatch = Callable[[Callable[[int], None], threading.Event], None]


class Router:
    """Spreads requests over backends by live latency; retries a failure once elsewhere."""

    def __init__(
        self,
        balancer: Balancer,
        discover: Callable[[], Sequence[Addr | Target]],
        *,
        timeout_s: float = 5.0,
        health_interval_s: float = 1.0,
        refresh_interval_s: float = 10.0,
        watch: Watch | None = None,
        read_weights: Callable[[], int] | None = None,
        watch_weights: WeightsWatch | None = None,
    ) -> None:
        self.balancer = balancer
        self.discover = discover
        # backends' changes as they happen (discovery.*Source.watch); the periodic refresh
        # stays as the fallback
        self.watch = watch
        # the canary's share (weights.WeightsSource): read at startup and every refresh,
        # watched in between
        self.read_weights = read_weights
        self.watch_weights = watch_weights
        if read_weights is not None and balancer.canary_percent is None:
            balancer.canary_percent = 0  # split from the start, even if the first read fails
        self._changed: asyncio.Event | None = None
        self._stop_watch = threading.Event()
        self.timeout_s = timeout_s
        self.health_interval_s = health_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.metrics = RouterMetrics()
        self.metrics.canary_percent.set(balancer.canary_percent or 0)
        self.pools: dict[str, UpstreamPool] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def startup(self) -> None:
        """Discover backends and start the health and refresh loops."""
        self._changed = asyncio.Event()
        await self._refresh()
        await self._refresh_weights()
        self._tasks = [
            asyncio.create_task(self._health_loop()),
            asyncio.create_task(self._refresh_loop()),
        ]
        loop, changed = asyncio.get_running_loop(), self._changed
        if self.watch is not None:
            notify = lambda: loop.call_soon_threadsafe(changed.set)  # noqa: E731
            threading.Thread(
                target=self.watch, args=(notify, self._stop_watch), name="watch", daemon=True
            ).start()
        if self.watch_weights is not None:

            def apply(percent: int) -> None:  # from the watch's thread
                loop.call_soon_threadsafe(self.set_canary_percent, percent)

            threading.Thread(
                target=self.watch_weights,
                args=(apply, self._stop_watch),
                name="watch-weights",
                daemon=True,
            ).start()

    async def shutdown(self) -> None:
        """Stop background loops and close connections."""
        self._stop_watch.set()
        for t in self._tasks:
            t.cancel()
        for p in self.pools.values():
            p.close()

    async def _refresh(self) -> None:
        try:
            addrs = await asyncio.to_thread(self.discover)
        except Exception as exc:  # discovery problems keep the last known set
            log.warning("backend discovery failed: %s", exc)
            return
        before = set(self.balancer.backends)
        self.balancer.set_backends(addrs)
        after = set(self.balancer.backends)
        for key in after - before:
            b = self.balancer.backends[key]
            self.pools[key] = UpstreamPool(b.host, b.port)
            log.info("backend added backend=%s track=%s", key, b.track)
        for key in before - after:
            pool = self.pools.pop(key, None)
            if pool:
                pool.close()
            log.info("backend removed backend=%s", key)

    async def _refresh_weights(self) -> None:
        if self.read_weights is None:
            return
        try:
            percent = await asyncio.to_thread(self.read_weights)
        except Exception as exc:  # the API server away: keep the share in force
            log.warning("reading the canary weight failed: %s", exc)
            return
        self.set_canary_percent(percent)

    def set_canary_percent(self, percent: int) -> None:
        """Put a new canary share in force (0..100)."""
        percent = min(100, max(0, percent))
        if percent != self.balancer.canary_percent:
            log.info("canary weight %s%% -> %d%%", self.balancer.canary_percent, percent)
        self.balancer.canary_percent = percent
        self.metrics.canary_percent.set(percent)

    async def _refresh_loop(self) -> None:
        """Refresh on every change the watch reports (several within 0.2 s: once), and at
        least every ``refresh_interval_s``."""
        assert self._changed is not None
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self.refresh_interval_s)
                await asyncio.sleep(0.2)
            except TimeoutError:
                pass
            self._changed.clear()
            await self._refresh()
            await self._refresh_weights()  # the fallback if the weights' watch missed one

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await asyncio.gather(*(self._check(b) for b in list(self.balancer.backends.values())))

    async def _check(self, b: Backend) -> None:
        pool = self.pools.get(b.key)
        if pool is None:
            return
        try:
            resp = await pool.request("GET", "/v2/health/ready", [], b"", min(2.0, self.timeout_s))
            ok = resp.status == 200
        except UpstreamError:
            ok = False
        if ok and not b.healthy:
            self.balancer.readmit(b)
            log.info("backend re-admitted backend=%s", b.key)
        elif not ok and b.healthy:
            self._eject(b, "health check failed")

    def _eject(self, b: Backend, why: str) -> None:
        if b.healthy:
            self.balancer.eject(b)
            self.metrics.ejections.labels(b.key).inc()
            log.warning("backend ejected backend=%s reason=%s", b.key, why)

    # --- requests -----------------------------------------------------------------

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request (never raises)."""
        start = time.perf_counter()
        if path == "/metrics":
            return Response(200, self._render_metrics(), "text/plain; version=0.0.4")
        if path == "/router/backends":
            return json_response(200, self._state())
        if path == "/v2/health/live":
            return json_response(200, {"live": True})
        if path == "/v2/health/ready":
            n = len(self.balancer.healthy())
            doc: dict[str, Any] = {"ready": n > 0, "healthy_backends": n}
            return json_response(200 if n else 503, doc)
        try:
            resp = await self._forward(method, path, headers, body)
        except Exception as exc:  # the router survives any request
            log.exception("forward failed path=%s", path)
            resp = error(502, f"router error: {type(exc).__name__}")
        self.metrics.requests.labels(str(resp.status)).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - start)
        return resp

    async def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        fwd = [(k, headers[k]) for k in FORWARD_REQUEST_HEADERS if k in headers]
        tried: set[str] = set()
        last: Response | None = None
        last_track: str | None = None  # of the backend that sent ``last``, if one did
        for attempt in range(2):
            b = self.balancer.choose(time.monotonic(), tried)
            if b is None:
                break
            if attempt:
                self.metrics.retries.inc()
            tried.add(b.key)
            pool = self.pools[b.key]
            self.balancer.started(b)
            t0 = time.perf_counter()
            try:
                up = await pool.request(method, path, fwd, body, self.timeout_s)
            except UpstreamError as exc:
                self.balancer.finished(b, 0.0, False, time.monotonic())
                self.metrics.upstream.labels(b.key, "error").inc()
                if "Refused" in str(exc) or "Errno 111" in str(exc):
                    self._eject(b, "connection refused")
                elif not b.healthy:
                    self._eject(b, "consecutive failures")
                last, last_track = error(502, f"backend {b.key} failed: {exc}"), None
                continue
            took = time.perf_counter() - t0
            now = time.monotonic()
            ctype = next((v for k, v in up.headers if k == "content-type"), "application/json")
            resp = Response(
                up.status,
                up.body,
                ctype,
                [(k, v) for k, v in up.headers if k in FORWARD_RESPONSE_HEADERS],
            )
            if up.status == 429:
                self.balancer.busy(b, took, now)
                self.metrics.upstream.labels(b.key, "busy").inc()
                last, last_track = resp, b.track
                continue
            if up.status >= 500 and up.status != 504:
                self.balancer.finished(b, took, False, now)
                self.metrics.upstream.labels(b.key, "error").inc()
                if not b.healthy:
                    self._eject(b, "consecutive failures")
                last, last_track = resp, b.track
                continue
            self.balancer.finished(b, took, True, now)
            self.metrics.upstream.labels(b.key, "ok").inc()
            self.metrics.upstream_seconds.labels(b.key).observe(took)
            self.metrics.track_requests.labels(b.track).inc()
            return resp
        if last_track is not None:  # a backend's answer, though not a good one
            self.metrics.track_requests.labels(last_track).inc()
        return last or error(503, "no healthy backend", 1.0)

    def _state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "policy": self.balancer.policy,
            "canaryPercent": self.balancer.canary_percent,
            "backends": [
                {
                    "backend": b.key,
                    "track": b.track,
                    "healthy": b.healthy,
                    "inflight": b.inflight,
                    "ewma_ms": round(self.balancer.expected_s(b, now) * 1000, 3),
                    "samples": b.samples,
                }
                for b in self.balancer.backends.values()
            ],
        }

    def _render_metrics(self) -> bytes:
        now = time.monotonic()
        for b in self.balancer.backends.values():
            self.metrics.ewma.labels(b.key).set(self.balancer.expected_s(b, now))
            self.metrics.inflight.labels(b.key).set(b.inflight)
            self.metrics.healthy.labels(b.key).set(1 if b.healthy else 0)
        return self.metrics.render()
