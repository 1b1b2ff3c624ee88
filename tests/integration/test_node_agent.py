"""Pods on the agent's nodes are real processes: they serve, get scraped, finish, stop."""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.helpers import eventually

# A real HTTP server that exposes Prometheus metrics on its pod IP.
METRICS_SERVER = (
    "import os, time\n"
    "from prometheus_client import Counter, start_http_server\n"
    "Counter('recserve_agent_probe', 'test counter').inc(3)\n"
    "start_http_server(9100, addr=os.environ['POD_IP'])\n"
    "time.sleep(3600)\n"
)


def server_deployment(name: str, hardware: str = "cpu") -> dict[str, Any]:
    tolerations = (
        []
        if hardware == "cpu"
        else [{"key": "recserve.io/hardware", "value": hardware, "effect": "NoSchedule"}]
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9100",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "nodeSelector": {
                        "recserve.io/node-agent": "true",
                        "recserve.io/hardware": hardware,
                    },
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "server",
                            "image": "recserve-server:test",
                            "command": [sys.executable, "-c", METRICS_SERVER],
                            "env": [
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                }
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/metrics", "port": 9100},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


def _ready_pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [
        p
        for p in pods
        if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _wait_ready(
    core: client.CoreV1Api, namespace: str, app: str, count: int, timeout: float
) -> list[client.V1Pod]:
    """Wait until exactly ``count`` pods of ``app`` are Ready; return them."""

    def ready() -> list[client.V1Pod] | None:
        pods = _ready_pods(core, namespace, app)
        return pods if len(pods) == count else None

    return eventually(ready, timeout=timeout)


def _scraped(local_cluster: Any, query: str, count: int) -> list[dict[str, Any]]:
    """Wait until the PromQL ``query`` returns ``count`` series; return them."""
    url = f"{local_cluster.state.prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}"

    def series() -> list[dict[str, Any]] | None:
        with urllib.request.urlopen(url, timeout=5) as resp:
            found = list(json.load(resp)["data"]["result"])
        return found if len(found) == count else None

    return eventually(series, timeout=60, interval=1)


def _pid(pod: client.V1Pod) -> int:
    return int(pod.status.container_statuses[0].container_id.removeprefix("local://"))


def recserve_serve_deployment(name: str, variant: Path) -> dict[str, Any]:
    """`recserve serve` of a real ONNX variant, from a hostPath folder, on the agent's GPU node."""
    dep = server_deployment(name, hardware="gpu")
    pod = dep["spec"]["template"]["spec"]
    dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "8000"
    pod["volumes"] = [{"name": "variant", "hostPath": {"path": str(variant)}}]
    pod["containers"][0].update(
        command=["recserve"],
        args=["serve", "--variant=/models/v", "--host=$(POD_IP)", "--port=8000", "--hardware=gpu"],
        volumeMounts=[{"name": "variant", "mountPath": "/models/v", "readOnly": True}],
        readinessProbe={"httpGet": {"path": "/v2/health/ready", "port": 8000}, "periodSeconds": 1},
    )
    return dep


def test_recserve_serve_deployment_is_ready_answers_and_is_scraped(
    k8s: client.ApiClient, local_cluster: Any, namespace: str, tmp_path: Path
) -> None:
    from recserve_dev.testmodel import write_variant

    variant = write_variant(tmp_path / "store")
    client.AppsV1Api(k8s).create_namespaced_deployment(
        namespace, recserve_serve_deployment("served", variant)
    )
    core = client.CoreV1Api(k8s)
    pods = _wait_ready(core, namespace, "served", 2, timeout=90)
    assert {p.spec.node_name for p in pods} == {"local-gpu"}
    for pod in pods:
        with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8000/v2/health/ready") as resp:
            assert resp.status == 200
    series = _scraped(local_cluster, f'recserve_variant_info{{namespace="{namespace}"}}', 2)
    assert {s["metric"]["pod"] for s in series} == {p.metadata.name for p in pods}
    assert all(s["metric"]["hardware"] == "gpu" for s in series)


def test_deployment_runs_real_processes_that_prometheus_scrapes(
    k8s: client.ApiClient, local_cluster: Any, namespace: str
) -> None:
    client.AppsV1Api(k8s).create_namespaced_deployment(
        namespace, server_deployment("metrics", hardware="gpu")
    )
    core = client.CoreV1Api(k8s)
    pods = _wait_ready(core, namespace, "metrics", 2, timeout=60)
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.") for ip in ips)
    assert {p.spec.node_name for p in pods} == {"local-gpu"}
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:9100/metrics", timeout=5) as resp:
            assert b"recserve_agent_probe_total 3.0" in resp.read()
    for pod in pods:
        assert Path(f"/proc/{_pid(pod)}").exists()

    series = _scraped(local_cluster, f'recserve_agent_probe_total{{namespace="{namespace}"}}', 2)
    assert {s["metric"]["pod"] for s in series} == {p.metadata.name for p in pods}
    assert all(s["value"][1] == "3" for s in series)


def test_deleting_the_owner_stops_children_and_processes(
    k8s: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    apps.create_namespaced_deployment(namespace, server_deployment("owned"))
    pods = _wait_ready(core, namespace, "owned", 2, timeout=60)
    pids = [_pid(p) for p in pods]
    assert apps.list_namespaced_replica_set(namespace, label_selector="app=owned").items
    apps.delete_namespaced_deployment("owned", namespace, propagation_policy="Background")
    # the garbage collector removes the ReplicaSet, then its pods; the agent their processes
    eventually(
        lambda: not apps.list_namespaced_replica_set(namespace, label_selector="app=owned").items,
        timeout=60,
    )
    eventually(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=owned").items,
        timeout=60,
    )
    eventually(lambda: not any(_alive(pid) for pid in pids), timeout=30)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _job(name: str, code: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"recserve.io/node-agent": "true"},
                    "tolerations": [{"key": "recserve.io/hardware", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "recserve-builder:test",
                            "command": [sys.executable, "-c", f"import sys; sys.exit({code})"],
                        }
                    ],
                }
            },
        },
    }


def test_jobs_complete_with_the_process_exit_code(k8s: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(k8s), client.CoreV1Api(k8s)
    batch.create_namespaced_job(namespace, _job("ok", 0))
    batch.create_namespaced_job(namespace, _job("fails", 3))

    def condition(name: str) -> str | None:
        for cond in batch.read_namespaced_job_status(name, namespace).status.conditions or []:
            if cond.type in ("Complete", "Failed") and cond.status == "True":
                return str(cond.type)
        return None

    assert eventually(lambda: condition("ok"), timeout=60) == "Complete"
    assert eventually(lambda: condition("fails"), timeout=60) == "Failed"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=fails").items[0]
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
