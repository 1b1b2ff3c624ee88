"""Benchmark: 200 RecModels on 1,000 kwok nodes reach Placed (`make bench`).

The variants are built once (a small synthetic model, profiled for real) and laid into
every model's folder of the artifact store before the models are un-paused, so the run
measures the control loop (references, variants, plan, Deployments, router), not
training. Reports reconcile latency p50/p95 (un-pause to Placed), the operator's peak
memory, and the API requests the run cost: the API server's own counter
(apiserver_request_total, scraped from /metrics before the operator starts and after
the last model is Placed), split into the operator's share (recserve.io objects and
the children it writes, the benchmark's own polling subtracted) and everything else
(controllers, scheduler, kwok). Handler runs are counted from kopf's log.

RECSERVE_SCALE_MODELS (default 200) and RECSERVE_SCALE_NODES (default 1000) set the size;
RECSERVE_SCALE_VERBOSE=1 runs the operator with debug logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client, watch

from recserve_dev.localcluster.scale import SCALE_LABEL, _node
from recserve_operator.api import GROUP, VERSION, OptimizationPolicy, RecModel
from recserve_operator.children import content_hash
from recserve_runtime.artifacts import BuildReport, ProfileReport, StoreLayout
from tests.manifests import example

# The run's own deadline (RECSERVE_SCALE_TIMEOUT_SECONDS) comes first; setup needs minutes.
pytestmark = [pytest.mark.bench, pytest.mark.timeout(3600)]
MODELS = int(os.environ.get("RECSERVE_SCALE_MODELS", "200"))
NODES = int(os.environ.get("RECSERVE_SCALE_NODES", "1000"))
# The kinds the operator reads and writes (besides recserve.io): its share of requests.
OPERATOR_KINDS = {
    ("apps", "deployments"), ("", "services"), ("", "serviceaccounts"), ("batch", "jobs"),
    ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings"),
    ("networking.k8s.io", "networkpolicies"), ("", "configmaps"),
}  # fmt: skip
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def _metrics(api: client.ApiClient) -> str:
    """The API server's own /metrics (Prometheus text)."""
    method, url, headers, body, post = api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    return str(api.call_api(method, url, headers, body, post).read().decode())


def _request_counts(api: client.ApiClient) -> Counter[tuple[str, str, str, str]]:
    """apiserver_request_total by (verb, group, resource, subresource), all codes summed."""
    text = _metrics(api)
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        key = (labels["verb"], labels["group"], labels["resource"], labels["subresource"])
        counts[key] += int(float(match["value"]))
    return counts


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latency(api: client.ApiClient) -> dict[str, tuple[float, int]]:
    """apiserver_request_duration_seconds (sum, count) by verb, and by verb and resource."""
    text = _metrics(api)
    out: dict[str, tuple[float, int]] = {}
    for kind in ("sum", "count"):
        pattern = rf"^apiserver_request_duration_seconds_{kind}\{{([^}}]*)\}} (\S+)$"
        for labels, value in re.findall(pattern, text, re.M):
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            for key in (found["verb"], f"{found['verb']} {found['resource']}"):
                total, count = out.get(key, (0.0, 0))
                out[key] = (
                    (total + float(value), count)
                    if kind == "sum"
                    else (total, count + int(float(value)))
                )
    return out


def _stalled_seconds(resource: str) -> float:
    """Seconds some task waited for ``resource`` (cpu, io) on this machine (PSI)."""
    line = Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
    return int(line.rsplit("total=", 1)[1]) / 1e6


def _is_placed(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Placed" and c["status"] == "True" for c in conds)


def _watch_placed(
    api: client.ApiClient,
    namespace: str,
    placed_at: dict[str, float],
    last: dict[str, dict[str, Any]],
    timeout: float,
) -> None:
    """Record when each RecModel is first seen Placed, until all MODELS are."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while len(placed_at) < MODELS and time.monotonic() < deadline:
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "recmodels",
            timeout_seconds=60,  # then watch again (from the current state)
        )
        for event in stream:
            obj = event["object"]
            name = obj["metadata"]["name"]
            last[name] = obj
            if name not in placed_at and _is_placed(obj):
                placed_at[name] = time.monotonic()
            if len(placed_at) >= MODELS:
                return


def _operator_share(delta: Counter[tuple[str, str, str, str]]) -> Counter[str]:
    """Requests on the operator's kinds, by verb and resource (the benchmark's own LISTs
    and un-pause PATCHes of RecModels are still in; the caller takes them out).

    Controllers write Deployment and Job status (status subresource, PUT) and never
    APPLY; watches are long-lived streams, not per-pass calls: both are left out.
    """
    share: Counter[str] = Counter()
    for (verb, group, resource, sub), n in delta.items():
        if verb in ("WATCH", "PUT") or (sub == "status" and group != "recserve.io"):
            continue
        if group == "recserve.io" or (group, resource) in OPERATOR_KINDS:
            share[f"{verb} {resource}{'/' + sub if sub else ''}"] += n
    return share


def _prepare_variant(root: Path) -> tuple[Path, ProfileReport]:
    from recserve_dev.testmodel import write_variant

    variants = root / "template" / "variants"
    folder = write_variant(variants)
    out = root / "template" / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder, ProfileReport.read(out)


def test_recmodels_on_fake_nodes(
    local_cluster: Any, k8s: client.ApiClient, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(k8s), client.CustomObjectsApi(k8s)
    # Only fake nodes here: cordon the agent's nodes, or the 200 routers would really run.
    local = [
        n.metadata.name for n in core.list_node(label_selector="recserve.io/node-agent=true").items
    ]
    for name in local:
        core.patch_node(name, {"spec": {"unschedulable": True}})
    for i in range(NODES):
        core.create_node(_node(i))
    store = tmp_path / "store"
    folder, profile = _prepare_variant(tmp_path)
    pool = example("cpu-pool")
    pool["metadata"]["name"] = "scale-pool"
    pool["spec"]["nodeSelector"] = {SCALE_LABEL: "true"}
    pool["spec"]["tolerations"] = [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]
    pool["spec"]["supportedPrecisions"] = ["fp32", "int8"]
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    policy = example("latency-first")
    policy["metadata"]["namespace"] = namespace
    policy["spec"]["autoscaling"]["minReplicas"] = 1
    # A target any loaded machine's 0.1 s profile meets: this times the control loop, and
    # a noisy p99 must not turn the plan infeasible (nothing would be Placed).
    policy["spec"]["objectives"]["p99LatencyTargetMilliseconds"] = 1000
    created_policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    names = [f"m{i:03d}" for i in range(MODELS)]
    for name in names:
        model = example("movielens-dlrm")
        model["metadata"] = {"name": name, "namespace": namespace}
        model["spec"]["hardwarePoolRefs"] = [{"name": "scale-pool"}]
        model["spec"]["paused"] = True
        model["spec"]["traffic"]["expectedRequestsPerSecond"] = 50
        stored = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", model
        )
        digest = content_hash(
            RecModel.model_validate(stored).spec,
            OptimizationPolicy.model_validate(created_policy).spec.compression,
        )
        layout = StoreLayout.of(store, namespace, name, digest)
        shutil.copytree(folder, layout.variant(folder.name))
        profile.write(layout.profile("scale-pool"))
        BuildReport(hardware="cpu", threads=1, model={"synthetic": True}).write(layout.report)

    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.admin_kubeconfig),
        "RECSERVE_ARTIFACT_STORE": str(store),
        "RECSERVE_RECONCILE_INTERVAL_SECONDS": "30",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import recserve_operator as o; print(o.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"\noperator code: {where}")
    log = (tmp_path / "operator.log").open("w")
    polls = 0
    before = _request_counts(k8s)
    latency_before = _latency(k8s)
    components = dict(local_cluster.state.pids)
    cpu_before = {name: _cpu_seconds(pid) for name, pid in components.items()}
    bench_cpu_before = time.process_time()
    stalled_before = {r: _stalled_seconds(r) for r in ("cpu", "io")}
    run_started = time.monotonic()
    operator = subprocess.Popen(
        ["recserve-operator", "--liveness=", "-n", namespace]
        + (["--verbose"] if os.environ.get("RECSERVE_SCALE_VERBOSE") else []),
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        # Un-pause only once the operator has started and seen every model (each one's
        # Ready says Paused): the latencies are reconcile latencies, not start-up time.
        launched = time.monotonic()
        while time.monotonic() - launched < 300:
            items: dict[str, Any] = custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels"
            )
            polls += 1
            if all(
                any(
                    c["type"] == "Ready" and c["reason"] == "Paused"
                    for c in (obj.get("status") or {}).get("conditions", [])
                )
                for obj in items["items"]
            ):
                break
            time.sleep(0.5)
        startup_s = time.monotonic() - launched
        # Placed is timed by a watch started before the first un-pause: a model placed
        # while later ones are still being un-paused (one PATCH after the other, seconds
        # in all) is timed then, not when a poll after the last un-pause sees it.
        placed_at: dict[str, float] = {}
        last: dict[str, dict[str, Any]] = {}
        timeout = float(os.environ.get("RECSERVE_SCALE_TIMEOUT_SECONDS", 900))
        watcher = threading.Thread(
            target=_watch_placed, args=(k8s, namespace, placed_at, last, timeout), daemon=True
        )
        watcher.start()
        started: dict[str, float] = {}
        for name in names:
            started[name] = time.monotonic()
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels", name, {"spec": {"paused": False}}
            )
        unpause_s = time.monotonic() - started[names[0]]
        watcher.join(timeout)
        placed = {name: at - started[name] for name, at in placed_at.items()}
        peak_kib = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{operator.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM")
            )
        )
        ticks = Path(f"/proc/{operator.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
        cpu_seconds = sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")  # user + system
        delta = _request_counts(k8s)
        cpu = {n: round(_cpu_seconds(pid) - cpu_before[n], 1) for n, pid in components.items()}
        cpu["operator"] = round(cpu_seconds, 1)
        cpu["benchmark"] = round(time.process_time() - bench_cpu_before, 1)
        latency_after = _latency(k8s)
        run_seconds = time.monotonic() - run_started
        # Share of the run during which something on this machine waited for a CPU (or
        # for I/O): other work on a shared machine shows here, not in our processes.
        pressure = {
            f"{r}_pressure_pct": round(100 * (_stalled_seconds(r) - s) / run_seconds, 1)
            for r, s in stalled_before.items()
        }
        mean_ms = {
            verb: round(1000 * (s - latency_before.get(verb, (0.0, 0))[0]) / n, 1)
            for verb, (s, c) in latency_after.items()
            if (n := c - latency_before.get(verb, (0.0, 0))[1]) > 0 and not verb.startswith("WATCH")
        }
        delta.subtract(before)
        delta = +delta  # drop zeros
        # Who posted the namespace's Events (a POST each): the operator, or the
        # controllers that roll out what it wrote.
        posted = Counter(
            f"{(e.source.component if e.source else None) or e.reporting_component}/{e.reason}"
            for e in core.list_namespaced_event(namespace).items
        )
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        core.delete_collection_node(label_selector=f"{SCALE_LABEL}=true")
        for name in local:
            core.patch_node(name, {"spec": {"unschedulable": False}})
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "scale-pool")
    text = (tmp_path / "operator.log").read_text()
    runs = Counter(re.findall(r"(\w+ '[\w/.-]+') succeeded", text))
    passes = [int(n) for n in re.findall(r"reconcile passes: (\d+)", text)]  # logged at exit
    top = ", ".join(
        f"{v} {g}/{r}{'/' + s if s else ''} {n}" for (v, g, r, s), n in delta.most_common(20)
    )
    print(f"\nAPI requests during the run (all clients), top: {top}")
    print(f"handler runs: {dict(runs)}")
    print(f"Events in the namespace by source/reason: {dict(posted.most_common(12))}")
    print(f"CPU seconds during the run by process: {cpu}")
    by_verb = {k: v for k, v in mean_ms.items() if " " not in k}
    print(f"API server mean latency by verb, ms: {by_verb}")
    slowest = sorted((k for k in mean_ms if " " in k), key=lambda k: -mean_ms[k])[:12]
    print(f"slowest verb/resource, mean ms: { {k: mean_ms[k] for k in slowest} }")
    share = _operator_share(delta)
    share["LIST recmodels"] -= polls  # the benchmark's own (its watch is left out)
    share["PATCH recmodels"] -= MODELS
    print(f"operator's requests: {dict(share.most_common())}")
    operator_requests = sum(share.values())
    waiting = [o for name, o in last.items() if name not in placed]
    assert len(placed) == MODELS, f"{len(waiting)} not placed, e.g. {waiting[0].get('status')}"
    latencies = np.array(sorted(placed.values()))
    # By un-pause order: flat means the operator kept up; rising means a queue built.
    by_order = [placed[n] for n in names]
    quarters = [by_order[i * MODELS // 4 : (i + 1) * MODELS // 4] for i in range(4)]
    print(f"p50 by un-pause quarter, s: {[round(float(np.median(q)), 1) for q in quarters]}")
    result = {
        "recmodels": MODELS,
        "fake_nodes": NODES,
        "placed": len(placed),
        "reconcile_to_placed_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "reconcile_to_placed_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "operator_startup_s": round(startup_s, 1),
        "unpause_all_s": round(unpause_s, 1),
        "operator_peak_rss_mib": round(peak_kib / 1024, 1),
        "operator_cpu_s": round(cpu_seconds, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **pressure,
        "api_requests_all_clients": sum(delta.values()),
        "api_requests_operator": operator_requests,
        "api_requests_operator_per_model": round(operator_requests / MODELS, 1),
        "reconcile_passes": passes[0] if passes else None,
        "api_requests_operator_per_pass": round(operator_requests / passes[0], 1)
        if passes
        else None,
        "recmodel_handler_runs": sum(n for h, n in runs.items() if "recmodel" in h),
        "child_changed_runs": sum(n for h, n in runs.items() if "child_changed" in h),
    }
    print(json.dumps(result))
