"""Fuzzing the HTTP endpoints of a real server and a real router (hypothesis): random
and structured bodies, headers, paths, methods, raw request bytes, deep nesting, huge
numbers and oversized bodies. Every answer is a documented status (no 5xx but 503/504),
nothing crashes, and valid requests keep being served in between.

Bounded for `make test` (``RECSERVE_FUZZ_EXAMPLES``, default 150 per test); set it
higher for a longer run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recserve_dev import testmodel as tm
from recserve_dev.servertesting import Running, run_router, run_server
from recserve_runtime import artifacts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SPEC = tm.TestModelSpec(vocab_size=200, top_mlp=(16,))
MODEL = "synthetic-dlrm-fp32"
EXAMPLES = int(os.environ.get("RECSERVE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# what a client may be answered: success, client errors, and the documented overload and
# unavailability answers; a 500 or 502 is a bug
DOCUMENTED_5XX = {503, 504}


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.write_variant(tmp_path_factory.mktemp("store"), SPEC)


@pytest.fixture(scope="module")
def server(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(variant, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def router(server: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_router([f"127.0.0.1:{server.port}"], tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def valid_rank(variant: Path) -> bytes:
    return tm.rank_bodies(artifacts.load_manifest(variant), 1, 16)[0]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
PATHS = st.sampled_from(
    [
        "/v1/rank",
        f"/v2/models/{MODEL}/infer",
        f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/ready",
        f"/v2/models/{MODEL}/versions/x/infer",
        "/v2/models/other/infer",
        "/v2",
        "/v2/health/ready",
        "/metrics",
        "/admin/limits",
        "/router/backends",
        "/",
    ]
) | st.lists(
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?%"), max_size=12
    ),
    max_size=5,
).map(lambda parts: "/" + "/".join(parts))
METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]) | st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1, max_size=8
)
TOKEN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-0123456789"), min_size=1, max_size=20)
HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
HEADERS = st.dictionaries(
    TOKEN
    | st.sampled_from(
        [
            "content-type",
            "inference-header-content-length",
            "accept",
            "content-encoding",
            "transfer-encoding",
            "expect",
            "connection",
        ]
    ),
    HEADER_VALUE
    | st.integers(-10, 10**6).map(str)
    # encodings the servers do not decode, and ones that change how the body is framed
    | st.sampled_from(
        [
            "gzip",
            "br",
            "chunked",
            "gzip, chunked",
            "100-continue",
            "close",
            "upgrade",
            "application/json; charset=utf-16",
            "application/octet-stream",
        ]
    ),
    max_size=5,
)
BODIES = (
    st.binary(max_size=300)
    | JSON.map(lambda doc: json.dumps(doc).encode())
    | st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(1, 64).map(
        lambda n: b'{"inputs": [{"name": "sparse_ids", "shape": [' + b"9" * n + b"]}]}"
    )
)


def request(target: Running, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
    """One request on a fresh connection; its status (0: the server closed it unanswered,
    which HTTP allows for a request it cannot parse)."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            if name.lower() != "content-length":
                conn.putheader(name, value)
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse().status
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return 0
    finally:
        conn.close()


JSON_HEADERS = {"content-type": "application/json"}
# Per target (server, router): the latency of each valid request sent between fuzz
# examples, and the process's RSS (kB) at the first and the latest of them.
DURING_FUZZ: dict[str, list[float]] = {}
RSS_DURING_FUZZ: dict[str, list[int]] = {}


def still_serving(target: Running, valid_rank: bytes, which: str = "") -> None:
    assert target.proc.poll() is None, f"process exited: {target.logs()[-2000:]}"
    t0 = time.perf_counter()
    status = request(target, "POST", "/v1/rank", JSON_HEADERS, valid_rank)
    assert status == 200, status
    if which:
        DURING_FUZZ.setdefault(which, []).append(time.perf_counter() - t0)
        rss = rss_kb(target.proc.pid)
        RSS_DURING_FUZZ.setdefault(which, [rss, rss])[1] = rss  # [first, latest]


def _check(status: int) -> None:
    assert status < 500 or status in DOCUMENTED_5XX, status


@pytest.mark.parametrize("which", ["server", "router"])
@FUZZ
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES)
@pytest.mark.fault(
    "any body, header, path, method, deep nesting, huge numbers (server and router; hypothesis)",
    expect="only 2xx/4xx or the documented 503/504; valid requests served after every example",
)
def test_fuzz_requests(
    request_target: Any, which: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    target, valid_rank = request_target(which)
    _check(request(target, method, path, headers, body))
    still_serving(target, valid_rank, which)


@pytest.mark.parametrize("which", ["server", "router"])
@FUZZ
@given(raw=st.binary(min_size=1, max_size=300))
@pytest.mark.fault(
    "raw bytes on the socket (server and router)", expect="no crash; valid requests served after"
)
def test_fuzz_raw_bytes_on_the_socket(request_target: Any, which: str, raw: bytes) -> None:
    target, valid_rank = request_target(which)
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        try:
            sock.sendall(raw + b"\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    if answer.startswith(b"HTTP/1.1 "):
        _check(int(answer[9:12]))
    still_serving(target, valid_rank, which)


@pytest.mark.parametrize("which", ["server", "router"])
@pytest.mark.fault(
    "the fuzz above: its valid requests' latency and the process's memory",
    expect="valid requests between fuzz examples as fast as on an idle process (p99 within "
    "3x, or 50 ms); RSS growth over the fuzz <= 10%",
)
def test_valid_requests_kept_their_latency_and_memory_through_the_fuzz(
    request_target: Any, which: str, measured: Callable[[str], None]
) -> None:
    """Runs after the fuzz tests of this module (file order): compares the valid requests
    sent between fuzz examples with as many sent now, one after the other, to the same
    process, and the RSS at the first example with the RSS after the last."""
    during = DURING_FUZZ.get(which, [])
    if len(during) < 20:
        pytest.skip("the fuzz tests did not run first (run the whole module)")
    target, valid_rank = request_target(which)
    idle = []
    for _ in range(len(during)):
        t0 = time.perf_counter()
        status = request(
            target, "POST", "/v1/rank", {"content-type": "application/json"}, valid_rank
        )
        assert status == 200
        idle.append(time.perf_counter() - t0)
    p99_fuzz, p99_idle = (float(np.percentile(x, 99)) * 1000 for x in (during, idle))
    first, last = RSS_DURING_FUZZ[which]
    growth = (last - first) / first * 100
    measured(
        f"{which}: {len(during)} valid requests between fuzz examples, p99 {p99_fuzz:.1f} ms "
        f"(idle after: {p99_idle:.1f} ms); RSS {first / 1024:.0f} -> {last / 1024:.0f} MB "
        f"({growth:+.1f}%)"
    )
    assert p99_fuzz <= max(3 * p99_idle, p99_idle + 50), (p99_fuzz, p99_idle)
    assert growth <= 10, (first, last)


@pytest.fixture
def request_target(server: Running, router: Running, valid_rank: bytes) -> Any:
    return lambda which: ({"server": server, "router": router}[which], valid_rank)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("which", ["server", "router"])
@pytest.mark.fault(
    "bodies over 16 MiB", expect="413 from the Content-Length, before the body is read; RSS flat"
)
def test_oversized_bodies_are_refused_before_they_are_buffered(
    request_target: Any,
    which: str,
    measured: Callable[[str], None],
) -> None:
    target, valid_rank = request_target(which)
    before = rss_kb(target.proc.pid)
    big = b"[" + b"1," * (10 << 20) + b"1]"  # 20 MB, over the 16 MiB limit
    for _ in range(5):
        assert request(target, "POST", "/v1/rank", {"content-type": "application/json"}, big) in (
            413,
            0,
        )
    still_serving(target, valid_rank)
    grown_mb = (rss_kb(target.proc.pid) - before) / 1024
    measured(f"{which}: RSS grew {grown_mb:.1f} MB over five 20 MB bodies")
    assert grown_mb < 64, "bodies over the limit were buffered and kept"


def _head_status(target: Running, head: bytes) -> bytes:
    """The status line a raw request head gets (b"" when the server cut the connection
    while it was still being sent)."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        try:
            sock.sendall(head)
            return sock.recv(64).split(b"\r\n", 1)[0]
        except ConnectionError:
            return b""


@pytest.mark.parametrize("which", ["server", "router"])
@pytest.mark.fault(
    "request line and headers over 64 KiB (one large header, 20,000 headers, a 70 KB URL, a "
    "header that never ends)",
    expect="431 and the connection closed; RSS bounded",
)
def test_oversized_headers_are_refused_with_431(request_target: Any, which: str) -> None:
    target, valid_rank = request_target(which)
    start = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    assert _head_status(target, start + b"X-A: " + b"a" * 60_000 + b"\r\n\r\n").endswith(b"200 OK")
    before = rss_kb(target.proc.pid)
    cases = {
        "one large header": start + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n",
        "many headers": start + b"".join(b"X-%d: a\r\n" % i for i in range(20_000)) + b"\r\n",
        "a long URL": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "a header that never ends": start + b"X-A: " + b"a" * (8 << 20),
    }
    for name, head in cases.items():
        status = _head_status(target, head)
        assert status in (b"HTTP/1.1 431 Request Header Fields Too Large", b""), (name, status)
    still_serving(target, valid_rank)
    assert (rss_kb(target.proc.pid) - before) / 1024 < 32, "a head over the limit was buffered"


READ_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def slow_targets(
    variant: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Running]]:
    """A server and a router in front of it, both with a 2 s ``--read-timeout-s``."""
    flag = ("--read-timeout-s", str(READ_TIMEOUT_S))
    with run_server(variant, tmp_path_factory.mktemp("slow-logs"), *flag) as server:
        backends = [f"127.0.0.1:{server.port}"]
        with run_router(backends, tmp_path_factory.mktemp("slow-logs"), *flag) as router:
            yield {"server": server, "router": router}


async def _slow_clients(port: int, each: int) -> dict[str, list[tuple[bytes, float]]]:
    """``each`` connections of three kinds: silent (connect, send nothing), a head
    trickled a byte every 0.2 s, a body trickled likewise after a whole head. For each:
    the first bytes of what the server answered (b"" when it closed without an answer)
    and the seconds from the connection until then (inf when it was still open after
    10 s)."""
    import asyncio
    import time

    head = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    kinds = {
        "silent": (b"", b""),
        "slow head": (b"", head + b"X-Slow: " + b"a" * 200),
        "slow body": (head + b"Content-Length: 500\r\n\r\n", b"[" * 500),
    }

    async def one(first: bytes, trickle: bytes) -> tuple[bytes, float]:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def drip() -> None:
            writer.write(first)
            for i in range(len(trickle)):
                await asyncio.sleep(0.2)
                writer.write(trickle[i : i + 1])
                await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            answer = await asyncio.wait_for(reader.read(64), 10)
            return answer, time.perf_counter() - t0
        except TimeoutError:
            return b"open", math.inf
        except ConnectionError:
            return b"", time.perf_counter() - t0
        finally:
            dripping.cancel()
            with contextlib.suppress(BaseException):
                await dripping
            writer.close()

    results = await asyncio.gather(
        *(one(first, trickle) for first, trickle in kinds.values() for _ in range(each))
    )
    return {kind: results[k * each : (k + 1) * each] for k, kind in enumerate(kinds)}


@pytest.mark.parametrize("which", ["server", "router"])
@pytest.mark.fault(
    "slow clients: connections that send nothing, heads and bodies trickled a byte every "
    "0.2 s (slowloris), 3 x 30 at once",
    expect="each cut off at --read-timeout-s (408, or closed when nothing came); valid "
    "requests served meanwhile; RSS and open fds back to where they were",
)
def test_slow_clients_are_cut_off_at_the_read_timeout(
    slow_targets: dict[str, Running],
    valid_rank: bytes,
    which: str,
    measured: Callable[[str], None],
) -> None:
    import asyncio
    import threading

    target = slow_targets[which]
    still_serving(target, valid_rank)
    before_fds = len(os.listdir(f"/proc/{target.proc.pid}/fd"))
    before_rss = rss_kb(target.proc.pid)
    served: list[int] = []
    done = threading.Event()

    def keep_asking() -> None:  # valid requests while the slow clients hold connections
        while not done.is_set():
            served.append(request(target, "POST", "/v1/rank", JSON_HEADERS, valid_rank))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        results = asyncio.run(_slow_clients(target.port, 30))
    finally:
        done.set()
        asker.join()
    for kind, outcomes in results.items():
        answers = {a.split(b"\r\n", 1)[0] for a, _ in outcomes}
        want = {b""} if kind == "silent" else {b"HTTP/1.1 408 Request Timeout"}
        assert answers == want, (kind, answers)
        slowest = max(t for _, t in outcomes)
        # cut at the deadline: not before it, and not long after (a loaded 2-core machine)
        assert min(t for _, t in outcomes) >= READ_TIMEOUT_S - 0.1, kind
        assert slowest <= READ_TIMEOUT_S + 3, (kind, slowest)
        measured(f"{which}, {kind}: cut off after {slowest:.2f} s at most (30 connections)")
    assert served and set(served) == {200}, set(served)
    measured(f"{which}: {len(served)} valid requests served, all 200, while 90 were held")
    still_serving(target, valid_rank)
    fds = len(os.listdir(f"/proc/{target.proc.pid}/fd"))
    assert fds <= before_fds + 5, (before_fds, fds)  # the 90 connections are gone
    assert (rss_kb(target.proc.pid) - before_rss) / 1024 < 32
