"""ASGI adapter and uvicorn runner for :class:`InferenceServer` (chosen by measurement,
see docs/serving.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from recserve_runtime.httplimits import MAX_BODY_BYTES, MAX_HEAD_BYTES, READ_TIMEOUT_S
from recserve_runtime.server.service import InferenceServer, Response

log = logging.getLogger("recserve.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[Response]]


def split_off(handle: Handler, paths: frozenset[str], flag: str) -> tuple[Handler, Handler]:
    """``handle`` split in two: one answering every path but ``paths`` (those get a 404
    that names ``flag``), one answering only ``paths`` (for a port of their own, e.g. a
    metrics port only Prometheus may reach)."""

    async def rest(method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if path.split("?", 1)[0] in paths:
            return _not_here(f"{path} is served on its own port ({flag})")
        return await handle(method, path, headers, body)

    async def only(method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if path.split("?", 1)[0] not in paths:
            return _not_here(f"this port serves only {', '.join(sorted(paths))}")
        return await handle(method, path, headers, body)

    return rest, only


def _not_here(message: str) -> Response:
    body = ('{"error": "' + message.replace('"', "'") + '"}').encode()
    return Response(404, body, "application/json")


class ASGIApp:
    """A minimal ASGI app: lifespan hooks plus one handler for every HTTP request, and
    optionally others for the requests that arrive on the admin port and on the metrics
    port."""

    def __init__(
        self,
        handle: Handler,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        admin: tuple[int, Handler] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        metrics: tuple[int, Handler] | None = None,
    ) -> None:
        self.handle = handle
        self.max_body_bytes = max_body_bytes
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.admin_port: int | None = admin[0] if admin else None
        self.admin_handle: Handler | None = admin[1] if admin else None
        self.metrics_port: int | None = metrics[0] if metrics else None
        self.metrics_handle: Handler | None = metrics[1] if metrics else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        too_large = Response(
            413,
            f'{{"error": "request body over {self.max_body_bytes} bytes"}}'.encode(),
            "application/json",
            [("connection", "close")],
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._send(send, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked, or longer than it said
                await self._send(send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        handle = self.handle
        port = (scope.get("server") or (None, None))[1]
        if self.admin_handle is not None and port == self.admin_port:
            handle = self.admin_handle
        elif self.metrics_handle is not None and port == self.metrics_port:
            handle = self.metrics_handle
        await self._send(send, await handle(scope["method"], scope["path"], headers, body))

    @staticmethod
    async def _send(send: Send, resp: Response) -> None:
        raw_headers = [
            (b"content-type", resp.content_type.encode()),
            (b"content-length", str(len(resp.body)).encode()),
        ] + [(k.encode(), v.encode()) for k, v in resp.headers]
        await send({"type": "http.response.start", "status": resp.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.on_startup is not None:
                    await self.on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_shutdown is not None:
                    await self.on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), for uvicorn to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _plain(status: str, text: str) -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def bounded_head_protocol(read_timeout_s: float = READ_TIMEOUT_S) -> type:
    """uvicorn's httptools protocol, answering 431 and closing when a request's line and
    headers pass ``MAX_HEAD_BYTES`` (measured when they are complete, and cut off as
    bytes arrive while they are not, so the parser's own buffer, which one endless header
    would fill, never holds more than that plus one read), and answering 408 and closing
    when a request has not fully arrived ``read_timeout_s`` after the connection was
    made or its first byte came (a connection that sent nothing is closed)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    answer = _plain(
        "431 Request Header Fields Too Large",
        f"request line and headers over {MAX_HEAD_BYTES} bytes",
    )
    too_slow = _plain("408 Request Timeout", f"request not received within {read_timeout_s:g} s")

    class BoundedHead(HttpToolsProtocol):
        _chunk = 0  # bytes of the read being parsed
        _received = 0  # bytes that arrived while the head was incomplete, this one too
        _in_head = True
        _over = False
        _deadline: asyncio.TimerHandle | None = None
        _begun = False  # a request's first byte came and its last has not

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(read_timeout_s, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._begun:  # part of a request came: say why it is cut off
                self.transport.write(too_slow)
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._received, self._in_head, self._over = self._chunk, True, False
            self._begun = True
            self._arm()

        def on_message_complete(self) -> None:
            self._begun = False
            self._disarm()  # the request is in; how long the answer takes is the app's
            super().on_message_complete()

        def on_headers_complete(self) -> None:
            self._in_head = False
            # a head over the limit must have come with that many bytes: only then is it
            # measured (a per-header count cost 2.5% of a server's saturated throughput)
            if self._received > MAX_HEAD_BYTES:
                size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
                if size > MAX_HEAD_BYTES:
                    self._over = True
                    raise ValueError("head too large")  # the parser stops: send_400_response
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._over:
                super().send_400_response(msg)
                return
            self.transport.write(answer)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._chunk = len(data)
            if self._in_head:
                self._received += self._chunk
            super().data_received(data)
            over = self._in_head and self._received > MAX_HEAD_BYTES
            if over and not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return BoundedHead


def run_uvicorn(
    app: ASGIApp,
    host: str,
    port: int,
    graceful_timeout_s: float = 30.0,
    admin_host: str | None = None,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> None:
    """Serve ``app`` with uvicorn (httptools parser, uvloop when installed); blocks.
    With an admin handler, the app's admin port is listened on too (at ``admin_host``,
    default ``host``). A request must arrive within ``read_timeout_s``
    (:func:`bounded_head_protocol`).

    On SIGTERM/SIGINT uvicorn stops accepting, waits for in-flight requests (which
    drains the batch queue), then runs the lifespan shutdown hook.
    """
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # like uvicorn's, minus re-raising the signal afterwards: a drained server exits 0
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http=bounded_head_protocol(read_timeout_s),
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(graceful_timeout_s),
        backlog=4096,
        proxy_headers=False,  # no proxy-headers middleware on the hot path
        server_header=False,
        date_header=False,
    )
    sockets = [bind(host, port)]
    if app.admin_port is not None:
        sockets.append(bind(admin_host or host, app.admin_port))
    if app.metrics_port is not None:
        sockets.append(bind(host, app.metrics_port))
    _Server(config).run(sockets=sockets)


def make_app(
    server: InferenceServer, admin_port: int | None = None, metrics_port: int | None = None
) -> ASGIApp:
    """The ASGI app of an inference server; ``admin_port``: where its admin API is served
    (None: nowhere); ``metrics_port``: where ``/metrics`` is served instead of the
    inference port (None: on the inference port)."""
    admin = (admin_port, server.handle_admin) if admin_port else None
    if not metrics_port:
        return ASGIApp(server.handle, server.startup, server.shutdown, admin)
    rest, only = split_off(server.handle, frozenset({"/metrics"}), "--metrics-port")
    return ASGIApp(rest, server.startup, server.shutdown, admin, metrics=(metrics_port, only))
