"""A fault-injecting HTTP proxy in front of the real API server (reliability tests).

A client (the operator, with a kubeconfig whose server is ``http://127.0.0.1:<port>``)
talks plain HTTP to it; it forwards every request to the API server over TLS (checking
the server's CA, passing the client's Authorization header on) and streams the answer
back, watches included. By a seeded plan it answers some requests itself instead: 429
with Retry-After, 500, 503, a connection reset, or, to a watch, a 410 Gone ERROR event
(the API server's answer to a resourceVersion too old to resume from). ``down(seconds)``
closes its listening socket, so clients see connection refused, as when the API server
is down, and opens it again after.

Built on aiohttp (already installed: kopf's HTTP client), not a ready-made chaos proxy
(toxiproxy works at the TCP level and cannot answer 429 or inject a watch event).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}
GONE_EVENT = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": "too old resource version (injected)",
        "reason": "Expired",
        "code": 410,
    },
}


@dataclass(frozen=True)
class FaultPlan:
    """Share of requests (each 0..1) answered with each fault; the rest are forwarded."""

    throttle: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500
    unavailable: float = 0.0  # 503
    reset: float = 0.0  # the connection closed without an answer
    gone: float = 0.0  # a watch answered with a 410 Gone ERROR event
    retry_after_s: int = 1
    seed: int = 0


class FaultProxy:
    """The proxy, run on its own event loop in a daemon thread (tests are synchronous)."""

    def __init__(self, upstream: str, ca_file: str | None, plan: FaultPlan) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.plan = plan
        self.counts: Counter[str] = Counter()  # fault (or "forwarded") -> requests
        self.watch_starts: list[float] = []  # monotonic time of each forwarded watch
        self._rng = random.Random(plan.seed)
        self._faults_on = True
        self._loop = asyncio.new_event_loop()
        self._site: Any = None
        self._runner: Any = None
        self._session: Any = None
        self._reopen: asyncio.Future[None] | None = None
        self._open: set[Any] = set()  # transports of requests in flight (watches too)
        self.port = 0

    # -- control (from the test's thread) -------------------------------------------
    def start(self) -> int:
        """Serve on a free port of 127.0.0.1; returns it."""
        threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.port

    def down(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (returns at once)."""
        asyncio.run_coroutine_threadsafe(self._down(seconds), self._loop).result(30)

    def faults(self, on: bool) -> None:
        """Turn injection on or off (off: a plain proxy)."""
        self._faults_on = on

    def stop(self) -> None:
        """Close everything."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- the server ------------------------------------------------------------------
    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0, reuse_address=True)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]

    async def _down(self, seconds: float) -> None:
        from aiohttp import web

        await self._site.stop()
        # established connections (watch streams, pooled keep-alives) break too, as they
        # would when the API server goes away
        for transport in list(self._open):
            transport.abort()
        self.counts["down"] += 1

        async def up() -> None:
            await asyncio.sleep(seconds)
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

        self._reopen = asyncio.ensure_future(up())  # kept: a task without a reference may vanish

    async def _stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        await self._runner.cleanup()
        await self._session.close()

    def _pick(self, watch: bool) -> str | None:
        if not self._faults_on:
            return None
        p, roll = self.plan, self._rng.random()
        for name, share in (
            ("throttle", p.throttle),
            ("server_error", p.server_error),
            ("unavailable", p.unavailable),
            ("reset", p.reset),
            ("gone", p.gone if watch else 0.0),
        ):
            if roll < share:
                return name
            roll -= share
        return None

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        watch = request.query.get("watch") in ("true", "1")
        fault = self._pick(watch)
        if fault is not None:
            self.counts[fault] += 1
        if fault == "throttle":
            return web.json_response(
                _status(429, "TooManyRequests", "throttled (injected)"),
                status=429,
                headers={"Retry-After": str(self.plan.retry_after_s)},
            )
        if fault in ("server_error", "unavailable"):
            code = 500 if fault == "server_error" else 503
            return web.json_response(_status(code, "InternalError", "injected"), status=code)
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing is sent: the client sees a reset
        if fault == "gone":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(json.dumps(GONE_EVENT).encode() + b"\n")
            await response.write_eof()
            return response
        self.counts["forwarded"] += 1
        if watch:
            self.watch_starts.append(time.monotonic())
        transport = request.transport
        self._open.add(transport)
        try:
            return await self._forward(request)
        finally:
            self._open.discard(transport)

    async def _forward(self, request: Any) -> Any:
        from aiohttp import web

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            if upstream.headers.get("Content-Encoding"):
                out_headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
