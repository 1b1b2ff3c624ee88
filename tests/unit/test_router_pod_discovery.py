"""Router discovery from Ready pods (used where EndpointSlices cannot hold pod IPs)."""

from __future__ import annotations

import pytest
from kubernetes import client

from recserve_runtime.router.discovery import endpoints_from_pods

pytestmark = pytest.mark.unit


def pod(ip: str | None, ready: bool, deleting: bool = False, port: int = 8000) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=f"p-{ip}", deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None
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
