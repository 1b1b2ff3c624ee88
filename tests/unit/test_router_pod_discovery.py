"""Router discovery from Ready pods (used where EndpointSlices cannot hold pod IPs)."""

from __future__ import annotations

import pytest
from kubernetes import client

from recserve_runtime.router.balancer import CANARY, STABLE, Balancer, Target
from recserve_runtime.router.discovery import PodSource, endpoints_from_pods, targets_from_pods

pytestmark = pytest.mark.unit


def pod(
    ip: str | None,
    ready: bool,
    deleting: bool = False,
    port: int = 8000,
    labels: dict[str, str] | None = None,
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=f"p-{ip}", deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
            labels=labels,
        ),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="server",
                    ports=[client.V1ContainerPort(name="metrics", container_port=9100),
                           client.V1ContainerPort(name="http", container_port=port)],
                )
            ]
        ),
        status=client.V1PodStatus(
            pod_ip=ip,
            conditions=[client.V1PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )  # fmt: skip


def test_only_ready_running_pods_with_an_ip_are_backends() -> None:
    pods = [
        pod("127.1.0.2", True),
        pod("127.1.0.3", False),
        pod("127.1.0.4", True, deleting=True),
        pod(None, True),
        pod("127.1.0.5", True, port=8001),
    ]
    assert endpoints_from_pods(pods, "http", 8080) == [("127.1.0.2", 8000), ("127.1.0.5", 8001)]
    assert endpoints_from_pods(pods, None, 8080)[0] == ("127.1.0.2", 9100)
    assert endpoints_from_pods(pods, "grpc", 8080)[0] == ("127.1.0.2", 8080)


def test_the_track_label_reaches_the_backend() -> None:
    pods = [
        pod("127.1.0.2", True),
        pod("127.1.0.3", True, labels={"app": "m", "recserve.io/track": "canary"}),
        pod("127.1.0.4", True, labels={"recserve.io/track": "stable"}),
        pod("127.1.0.5", True, labels={"recserve.io/track": "blue"}),  # unknown: stable
        pod("127.1.0.6", False, labels={"recserve.io/track": "canary"}),  # not Ready
    ]
    assert targets_from_pods(pods, "http", 8080) == [
        Target("127.1.0.2", 8000, STABLE), Target("127.1.0.3", 8000, CANARY),
        Target("127.1.0.4", 8000, STABLE), Target("127.1.0.5", 8000, STABLE),
    ]  # fmt: skip
    bal = Balancer()
    bal.set_backends(targets_from_pods(pods, "http", 8080))
    assert {k: b.track for k, b in bal.backends.items()} == {
        "127.1.0.2:8000": STABLE, "127.1.0.3:8000": CANARY,
        "127.1.0.4:8000": STABLE, "127.1.0.5:8000": STABLE,
    }  # fmt: skip


class FakeCoreV1:
    """The one call PodSource.list makes, answered from a list the test edits."""

    def __init__(self, pods: list[client.V1Pod]) -> None:
        self.pods = pods

    def list_namespaced_pod(self, namespace: str, **kwargs: object) -> client.V1PodList:
        return client.V1PodList(items=list(self.pods))


def test_a_relabelled_pod_changes_track_and_keeps_what_was_learned() -> None:
    api = FakeCoreV1([pod("127.1.0.2", True), pod("127.1.0.3", True)])
    source = PodSource("ns", "app=m", "http", api_factory=lambda: api)
    bal = Balancer()
    bal.set_backends(source.list())
    b = bal.backends["127.1.0.3:8000"]
    bal.started(b)
    bal.finished(b, 0.004, True, 0.0)
    assert b.track == STABLE
    api.pods[1] = pod("127.1.0.3", True, labels={"recserve.io/track": "canary"})
    bal.set_backends(source.list())
    assert bal.backends["127.1.0.3:8000"] is b and b.track == CANARY and b.samples == 1


def test_the_router_lists_again_as_soon_as_the_watch_reports_a_change() -> None:
    import asyncio
    import threading

    from recserve_runtime.router.service import Router

    backends = [("127.0.0.2", 8000)]
    fired = threading.Event()

    def watch(changed, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
        fired.wait(5)
        changed()
        stop.wait(5)

    async def scenario() -> float:
        router = Router(
            Balancer(), lambda: list(backends), refresh_interval_s=60, health_interval_s=60,
            watch=watch,
        )  # fmt: skip
        await router.startup()
        assert set(router.balancer.backends) == {"127.0.0.2:8000"}
        backends.append(("127.0.0.3", 8000))  # a new replica turned Ready
        started = asyncio.get_running_loop().time()
        fired.set()
        while len(router.balancer.backends) < 2:
            await asyncio.sleep(0.02)
            assert asyncio.get_running_loop().time() - started < 3, "not refreshed"
        took = asyncio.get_running_loop().time() - started
        await router.shutdown()
        return took

    assert asyncio.run(scenario()) < 1.0  # not the 60 s periodic refresh
