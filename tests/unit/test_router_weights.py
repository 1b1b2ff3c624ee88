"""The canary's share of requests: the weights ConfigMap, read, watched and applied."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from recserve_runtime.router.balancer import CANARY, Balancer, Target
from recserve_runtime.router.service import Router
from recserve_runtime.router.weights import WeightsSource, parse_weights

pytestmark = pytest.mark.unit


def data(doc: object) -> dict[str, str]:
    return {"weights.json": doc if isinstance(doc, str) else json.dumps(doc)}


@pytest.mark.parametrize("percent", [0, 10, 100])
def test_good_weights(percent: int) -> None:
    assert parse_weights(data({"canaryPercent": percent})) == (percent, None)


@pytest.mark.parametrize("absent", [None, {}, {"other.json": "{}"}])
def test_no_configmap_or_no_key_is_0_percent_without_complaint(absent: Any) -> None:
    assert parse_weights(absent) == (0, None)


@pytest.mark.parametrize(
    "bad",
    ["{not json", "[10]", "10", {}, {"canaryPercent": -1}, {"canaryPercent": 101},
     {"canaryPercent": "10"}, {"canaryPercent": 10.5}, {"canaryPercent": True},
     {"canarypercent": 10}],
)  # fmt: skip
def test_bad_weights_are_0_percent_with_a_reason(bad: object) -> None:
    percent, problem = parse_weights(data(bad))
    assert percent == 0 and problem and "weights.json" in problem


class FakeCoreV1:
    """The ConfigMap calls WeightsSource makes: a list by name, and a watch whose events
    are the test's ``events`` (``watch.Watch`` reads them as the API server's stream)."""

    def __init__(self, maps: dict[str, dict[str, str] | None]) -> None:
        self.maps = maps
        self.events: list[dict[str, Any]] = []
        self.selectors: list[str] = []

    def list_namespaced_config_map(self, namespace: str, **kwargs: Any) -> Any:
        """:rtype: V1ConfigMapList"""
        self.selectors.append(kwargs["field_selector"])
        if kwargs.get("watch"):
            return FakeStream([json.dumps(e).encode() + b"\n" for e in self.events])
        name = kwargs["field_selector"].removeprefix("metadata.name=")
        items = [client.V1ConfigMap(data=self.maps[name])] if name in self.maps else []
        return client.V1ConfigMapList(items=items)


class FakeStream:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield from self.lines

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def _source(api: FakeCoreV1, name: str = "w") -> WeightsSource:
    return WeightsSource("ns", name, api_factory=lambda: api)


def test_read_selects_the_configmap_by_name_and_parses_it() -> None:
    api = FakeCoreV1({"w": data({"canaryPercent": 30}), "other": data({"canaryPercent": 90})})
    assert _source(api).read() == 30
    assert api.selectors == ["metadata.name=w"]
    assert _source(api, "missing").read() == 0


def test_bad_content_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeCoreV1({"w": data("{oops")})
    source = _source(api)
    with caplog.at_level(logging.WARNING, "recserve.router.weights"):
        assert [source.read() for _ in range(3)] == [0, 0, 0]
        assert len(caplog.records) == 1
        api.maps["w"] = data({"canaryPercent": 200})  # another problem: said again
        assert source.read() == 0
        assert len(caplog.records) == 2


def test_watch_applies_each_change_and_a_deletion_is_0_percent() -> None:
    api = FakeCoreV1({})

    def event(kind: str, doc: object) -> dict[str, Any]:
        meta = {"name": "w", "resourceVersion": "1"}
        return {"type": kind, "object": {"metadata": meta, "data": data(doc)}}

    api.events = [
        event("ADDED", {"canaryPercent": 20}),
        event("MODIFIED", {"canaryPercent": 50}),
        event("MODIFIED", "{bad"),
        event("MODIFIED", {"canaryPercent": 5}),
        event("DELETED", {"canaryPercent": 5}),
    ]
    seen: list[int] = []
    stop = threading.Event()

    def apply(percent: int) -> None:
        seen.append(percent)
        if len(seen) == len(api.events):
            stop.set()

    thread = threading.Thread(target=_source(api).watch, args=(apply, stop), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert seen == [20, 50, 0, 5, 0]
    assert api.selectors == ["metadata.name=w"]


async def _backend() -> tuple[asyncio.Server, int]:
    """A keep-alive HTTP server answering 200 to every request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                _, _, rest = head.partition(b"content-length:")
                await reader.readexactly(int(rest.split(b"\r\n")[0] or 0))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _track_count(router: Router, track: str) -> float:
    value = router.metrics.registry.get_sample_value(
        "recserve_router_track_requests_total", {"track": track}
    )
    return value or 0.0


def test_the_router_applies_read_and_watched_weights_and_counts_answers_by_track() -> None:
    pushed = threading.Event()

    def watch_weights(apply: Callable[[int], None], stop: threading.Event) -> None:
        pushed.wait(5)
        apply(0)
        stop.wait(5)

    async def scenario() -> None:
        (s1, stable), (s2, canary) = await _backend(), await _backend()
        router = Router(
            Balancer(seed=3),
            lambda: [Target("127.0.0.1", stable), Target("127.0.0.1", canary, CANARY)],
            health_interval_s=60, refresh_interval_s=60,
            read_weights=lambda: 100, watch_weights=watch_weights,
        )  # fmt: skip
        await router.startup()
        state = json.loads((await router.handle("GET", "/router/backends", {}, b"")).body)
        assert state["canaryPercent"] == 100
        assert {b["backend"]: b["track"] for b in state["backends"]} == {
            f"127.0.0.1:{stable}": "stable",
            f"127.0.0.1:{canary}": "canary",
        }
        metrics = (await router.handle("GET", "/metrics", {}, b"")).body.decode()
        assert "recserve_router_canary_percent 100.0" in metrics
        for _ in range(20):
            assert (await router.handle("POST", "/v1/rank", {}, b"{}")).status == 200
        assert (_track_count(router, "canary"), _track_count(router, "stable")) == (20, 0)

        pushed.set()  # the ConfigMap now says 0 %
        for _ in range(100):
            if router.balancer.canary_percent == 0:
                break
            await asyncio.sleep(0.02)
        assert router.balancer.canary_percent == 0
        for _ in range(20):
            assert (await router.handle("POST", "/v1/rank", {}, b"{}")).status == 200
        assert (_track_count(router, "canary"), _track_count(router, "stable")) == (20, 20)
        await router.shutdown()
        s1.close()
        s2.close()

    asyncio.run(scenario())


def test_with_weights_an_unreadable_configmap_still_splits_at_0_percent() -> None:
    def unreachable() -> int:
        raise RuntimeError("API server away")

    async def scenario() -> Balancer:
        bal = Balancer(seed=3)
        router = Router(
            bal,
            lambda: [("127.0.0.1", 1), Target("127.0.0.1", 2, CANARY)],
            health_interval_s=60, refresh_interval_s=60, read_weights=unreachable,
        )  # fmt: skip
        await router.startup()
        await router.shutdown()
        return bal

    bal = asyncio.run(scenario())
    assert bal.canary_percent == 0
    assert all(bal.choose(0.0).key == "127.0.0.1:1" for _ in range(50))  # type: ignore[union-attr]
