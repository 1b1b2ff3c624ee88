"""Pods on the agent's nodes are real processes: they serve, get scraped, finish, stop."""

from __future__ import annotations

import json
import sys
import time
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


# Records what a container sees in its mounted files: one JSON line per change of a
# watched file's (inode, mtime, content), or of a folder's listing. Each argument is
# LABEL=PATH (the agent rewrites the mount path in it); the first one is the output file.
WATCHER = (
    "import json, os, sys, time\n"
    "out, watched = sys.argv[1], [a.split('=', 1) for a in sys.argv[2:]]\n"
    "seen = {}\n"
    "while True:\n"
    "    for label, path in watched:\n"
    "        try:\n"
    "            if os.path.isdir(path):\n"
    "                key = [None, None, sorted(os.listdir(path))]\n"
    "            else:\n"
    "                with open(path, 'rb') as f:\n"
    "                    st = os.fstat(f.fileno())\n"
    "                    key = [st.st_ino, st.st_mtime_ns, f.read().decode()]\n"
    "        except FileNotFoundError:\n"
    "            key = [None, None, None]\n"
    "        if seen.get(label) != key:\n"
    "            seen[label] = key\n"
    "            with open(out, 'a') as f:\n"
    "                f.write(json.dumps([label, *key]) + '\\n')\n"
    "    time.sleep(0.05)\n"
)

# The agent re-reads ConfigMaps every 2 s; this leaves room for a loaded machine.
UPDATE_WITHIN_S = 15


def _watcher_pod(
    name: str, volumes: list[dict[str, Any]], mounts: dict[str, str], watched: list[str]
) -> dict[str, Any]:
    """A pod on the agent's CPU node running WATCHER; ``mounts``: volume -> mountPath;
    ``watched``: LABEL=PATH arguments. Its records go to /out/seen.jsonl (hostPath 'out')."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"recserve.io/node-agent": "true", "recserve.io/hardware": "cpu"},
            "terminationGracePeriodSeconds": 2,
            "volumes": volumes,
            "containers": [
                {
                    "name": "watcher",
                    "image": "recserve-server:test",
                    "command": [sys.executable, "-c", WATCHER, "/out/seen.jsonl", *watched],
                    "volumeMounts": [
                        {"name": vol, "mountPath": path} for vol, path in mounts.items()
                    ],
                }
            ],
        },
    }


def _records(out: Path, label: str) -> list[list[Any]]:
    """What the watcher saw for ``label``: [inode, mtime_ns, content] per change."""
    if not out.exists():
        return []
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [rest for lbl, *rest in lines if lbl == label]


def _sees(out: Path, label: str, content: object) -> bool:
    seen = _records(out, label)
    return bool(seen) and seen[-1][2] == content


def test_configmap_volume_files_follow_configmap_updates_atomically(
    k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(k8s)
    old, new = '{"max_batch": 8}', '{"max_batch": 16, "max_wait_ms": 5}'
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "limits"}, "data": {"limits.json": old, "other": "a"}},
    )
    volumes = [
        {"name": "limits", "configMap": {"name": "limits"}},
        {
            "name": "picked",
            "configMap": {
                "name": "limits",
                "items": [{"key": "limits.json", "path": "pool/limits.json"}],
            },
        },
        {"name": "out", "hostPath": {"path": str(tmp_path)}},
    ]
    mounts = {"limits": "/etc/recserve/limits", "picked": "/etc/picked", "out": "/out"}
    watched = [
        "limits=/etc/recserve/limits/limits.json",
        "other=/etc/recserve/limits/other",
        "picked=/etc/picked/pool/limits.json",
        "picked_dir=/etc/picked",
    ]
    core.create_namespaced_pod(namespace, _watcher_pod("watcher", volumes, mounts, watched))
    out = tmp_path / "seen.jsonl"
    eventually(
        lambda: _sees(out, "limits", old) and _sees(out, "other", "a"),
        timeout=60,
        what="the container sees the ConfigMap's keys as files",
        state=lambda: core.read_namespaced_pod_status("watcher", namespace).status,
    )
    eventually(lambda: _sees(out, "picked", old), timeout=10, what="items key -> path")
    assert _records(out, "picked_dir")[-1][2] == ["pool"]  # only the listed item

    core.patch_namespaced_config_map("limits", namespace, {"data": {"limits.json": new}})
    started = time.monotonic()
    eventually(
        lambda: _sees(out, "limits", new) and _sees(out, "picked", new),
        timeout=UPDATE_WITHIN_S,
        what="the container sees the updated ConfigMap",
        state=lambda: out.read_text(),
    )
    assert time.monotonic() - started < UPDATE_WITHIN_S

    # Changing another key leaves limits.json alone: same inode and mtime.
    core.patch_namespaced_config_map("limits", namespace, {"data": {"other": "b"}})
    eventually(lambda: _sees(out, "other", "b"), timeout=UPDATE_WITHIN_S, what="other key")
    time.sleep(0.5)  # let the watcher take in anything written in the same pass
    for label in ("limits", "picked"):
        seen = _records(out, label)
        # whole files only, old or new, each written once (no rewrite of unchanged ones)
        assert [content for _, _, content in seen] == [old, new], seen
        assert len({(inode, mtime) for inode, mtime, _ in seen}) == 2, seen
    status = core.read_namespaced_pod_status("watcher", namespace).status
    assert status.phase == "Running"
    assert status.container_statuses[0].restart_count == 0


def test_pod_waits_for_a_missing_configmap_then_starts(
    k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(k8s)
    volumes = [
        {"name": "late", "configMap": {"name": "late"}},
        {"name": "absent", "configMap": {"name": "absent", "optional": True}},
        {"name": "out", "hostPath": {"path": str(tmp_path)}},
    ]
    mounts = {"late": "/etc/late", "absent": "/etc/absent", "out": "/out"}
    watched = ["late=/etc/late/key", "absent=/etc/absent"]
    core.create_namespaced_pod(namespace, _watcher_pod("waiter", volumes, mounts, watched))

    def waiting() -> Any:
        pod = core.read_namespaced_pod_status("waiter", namespace)
        statuses = pod.status.container_statuses or []
        if statuses and statuses[0].state.waiting:
            return pod
        return None

    pod = eventually(waiting, timeout=60, what="the pod waits for its ConfigMap")
    state = pod.status.container_statuses[0]
    assert state.state.waiting.reason == "ContainerCreating"
    assert 'configmap "late" not found' in state.state.waiting.message
    assert not state.started and not state.container_id
    assert pod.status.phase == "Pending"
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=waiter,reason=FailedMount"
    ).items
    assert events and 'volume "late"' in events[0].message

    # It stays so across several refreshes of the agent's ConfigMap cache.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert not (tmp_path / "seen.jsonl").exists(), "the container started without its volume"
        assert core.read_namespaced_pod_status("waiter", namespace).status.phase == "Pending"
        time.sleep(0.5)

    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "late"}, "data": {"key": "here"}}
    )
    out = tmp_path / "seen.jsonl"
    eventually(
        lambda: _sees(out, "late", "here"),
        timeout=UPDATE_WITHIN_S + 10,
        what="the pod starts once its ConfigMap exists",
        state=lambda: core.read_namespaced_pod_status("waiter", namespace).status,
    )
    assert _records(out, "absent")[-1][2] == []  # optional and missing: an empty folder
    eventually(
        lambda: core.read_namespaced_pod_status("waiter", namespace).status.phase == "Running",
        timeout=10,
    )
    status = core.read_namespaced_pod_status("waiter", namespace).status.container_statuses[0]
    assert status.state.running and status.state.waiting is None
