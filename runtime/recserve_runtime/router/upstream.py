"""A small keep-alive HTTP/1.1 client for talking to backends (responses need
Content-Length, which every recserve server sends)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class UpstreamError(Exception):
    """The backend could not be reached or answered garbage."""


@dataclass
class UpstreamResponse:
    """Status, headers (lower-case names) and body of a backend's answer."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def roundtrip(self, raw: bytes, head_request: bool = False) -> UpstreamResponse:
        """Send one request, read its response. ``head_request``: it was a HEAD request, whose
        response has no body whatever its Content-Length says (RFC 9110 9.3.2)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise UpstreamError("chunked responses are not supported")
            headers.append((name, value))
        bodiless = head_request or status in (204, 304) or 100 <= status < 200
        body = await self.reader.readexactly(length) if length and not bodiless else b""
        return UpstreamResponse(status, headers, body)


class UpstreamPool:
    """Idle keep-alive connections to one backend."""

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> UpstreamResponse:
        """One request; raises UpstreamError on connection problems or timeout."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        raw = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        ).encode("latin-1") + body
        if self._idle:  # a reused connection may have been closed by the server meanwhile
            conn = self._idle.pop()
            try:
                async with asyncio.timeout(timeout_s):
                    resp = await conn.roundtrip(raw, method == "HEAD")
            except (ConnectionError, asyncio.IncompleteReadError):
                conn.writer.close()
            except (OSError, TimeoutError, ValueError, IndexError, UpstreamError) as exc:
                conn.writer.close()
                raise UpstreamError(
                    f"{self.host}:{self.port}: {type(exc).__name__}: {exc}"
                ) from None
            else:
                self._keep(conn)
                return resp
        fresh: _Conn | None = None
        try:
            async with asyncio.timeout(timeout_s):
                r, w = await asyncio.open_connection(self.host, self.port)
                fresh = _Conn(r, w)
                resp = await fresh.roundtrip(raw, method == "HEAD")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            if fresh is not None:
                fresh.writer.close()
            raise UpstreamError(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from None
        except UpstreamError:
            if fresh is not None:
                fresh.writer.close()
            raise
        self._keep(fresh)
        return resp

    def _keep(self, conn: _Conn) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.writer.close()

    def close(self) -> None:
        """Close idle connections."""
        for c in self._idle:
            c.writer.close()
        self._idle.clear()
