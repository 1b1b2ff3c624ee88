"""The load generator sends load to this machine only."""

from __future__ import annotations

import pytest

from recserve_dev.loadgen import Target

pytestmark = pytest.mark.unit


def test_targets_are_loopback_or_private_when_allowed() -> None:
    assert Target("127.0.0.5", 8080, "/v1/rank", [b"{}"]).host == "127.0.0.5"
    with pytest.raises(ValueError, match="only target"):
        Target("10.89.0.2", 8080, "/v1/rank", [b"{}"])
    # a kind node on podman's network: private, allowed when asked
    assert Target("10.89.0.2", 8080, "/v1/rank", [b"{}"], private_ok=True).host == "10.89.0.2"
    with pytest.raises(ValueError, match="only target"):
        Target("8.8.8.8", 8080, "/v1/rank", [b"{}"], private_ok=True)


def test_a_trace_stops_when_told_and_sends_the_bodies_set_mid_run() -> None:
    """``stop`` ends the trace early with the requests sent so far; ``set_bodies``
    changes what is sent from then on (the drift bench's shifted inputs)."""
    import asyncio
    import threading

    import numpy as np

    from recserve_dev.loadgen import open_loop_trace

    seen: list[bytes] = []

    async def scenario() -> tuple[int, int]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                seen.append(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = Target("127.0.0.1", port, "/x", [b"old"])
        stop = threading.Event()
        offsets = np.arange(0, 10, 0.01)  # 1000 requests over 10 s

        async def steer() -> None:
            await asyncio.sleep(0.3)
            target.set_bodies([b"new!"])
            await asyncio.sleep(0.3)
            stop.set()

        steering = asyncio.create_task(steer())
        result = await open_loop_trace(target, offsets, stop=stop)
        await steering
        server.close()
        assert len(result.send_s) == len(result.latency_s) == len(result.status)
        return len(result.send_s), int(result.ok.sum())

    sent, ok = asyncio.run(scenario())
    assert 30 < sent < 200, sent  # about 60 in 0.6 s, far fewer than the 1000 offsets
    assert ok == sent == len(seen)
    assert seen[0] == b"old" and seen[-1] == b"new!"
    assert set(seen) == {b"old", b"new!"}


def test_a_refused_or_lost_request_is_retried_once_on_another_host() -> None:
    """With ``retries=1`` a request whose connection was refused (nothing listening) or
    lost (closed before the answer) is sent again to another listed host and succeeds;
    with ``retries=0`` it fails; a timeout is never retried."""
    import asyncio

    import numpy as np

    from recserve_dev.loadgen import open_loop_trace

    async def scenario(
        retries: int, hosts: list[str], timeout_s: float = 2.0
    ) -> tuple[int, int, set[str], set[str]]:
        async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()

        async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # the request came; the answer never will
            writer.close()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)

        server = await asyncio.start_server(good, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lost = await asyncio.start_server(dying, "127.0.0.2", port)
        slow = await asyncio.start_server(silent, "127.0.0.4", port)
        # 127.0.0.3: nothing listens there (refused)
        target = Target("127.0.0.1", port, "/x", [b"{}"], resolve=lambda: hosts)
        result = await open_loop_trace(
            target,
            np.zeros(30),
            retries=retries,
            timeout_s=timeout_s,  # all at once: new connections, hosts in turn
        )
        for s in (server, lost, slow):
            s.close()
        return (
            len(result.send_s),
            int(result.ok.sum()),
            {e for e in result.first_errors if e},
            {e for e in result.errors if e},
        )

    for dead, error in (
        ("127.0.0.2", "IncompleteReadError"),
        ("127.0.0.3", "ConnectionRefusedError"),
    ):
        sent, ok, first, last = asyncio.run(scenario(1, ["127.0.0.1", dead]))
        assert ok == sent == 30, (ok, sent, last)
        assert first == {error}  # half went to the dead host first
        sent, ok, first, last = asyncio.run(scenario(0, ["127.0.0.1", dead]))
        assert 0 < ok < sent  # the ones sent to the dead host failed
        assert last == first == {error}
    # a host that accepts and never answers: timeouts, not retried
    sent, ok, first, last = asyncio.run(scenario(1, ["127.0.0.4"], timeout_s=0.3))
    assert ok == 0 and last == first == {"TimeoutError"}
