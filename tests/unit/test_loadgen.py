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
