"""Pure parts of the node agent: $(VAR) expansion, pod IP allocation, Prometheus config."""

from __future__ import annotations

from pathlib import Path

import pytest

from recserve_dev.localcluster.agent import (
    IpAllocator,
    Probe,
    expand_references,
    rewrite_mount_paths,
)
from recserve_dev.localcluster.nodes import agent_nodes, simulated_nodes
from recserve_dev.localcluster.prometheus import prometheus_config

pytestmark = pytest.mark.unit


def test_references_expand_like_kubernetes() -> None:
    env = {"POD_IP": "127.1.0.2", "PORT": "8000"}
    assert expand_references("--host=$(POD_IP):$(PORT)", env) == "--host=127.1.0.2:8000"
    assert expand_references("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand_references("$$(POD_IP) is escaped", env) == "$(POD_IP) is escaped"


def test_probes_change_verdict_only_at_their_thresholds() -> None:
    probe = Probe({"failureThreshold": 3, "successThreshold": 2})
    assert [probe.record(ok) for ok in (True, True)] == [None, True]
    # one or two slow answers under load: no restart, no unready
    assert [probe.record(ok) for ok in (False, False, True)] == [None, None, None]
    assert [probe.record(ok) for ok in (False, False, False)] == [None, None, False]
    defaults = Probe({})
    assert [defaults.record(False) for _ in range(3)] == [None, None, False]
    assert defaults.record(True) is True


def test_pod_ips_are_distinct_loopback_addresses_and_reused() -> None:
    ips = IpAllocator()
    taken = [ips.take() for _ in range(300)]
    addresses = [ip for ip, _ in taken]
    assert len(set(addresses)) == 300
    assert all(ip.startswith("127.1.") for ip in addresses)
    ips.give_back(taken[5][1])
    assert ips.take()[0] == addresses[5]


def test_nodes_are_labelled_and_tainted_like_the_pools_expect() -> None:
    sim = {n["metadata"]["name"]: n for n in simulated_nodes({"gpu": 1, "cpu": 1})}
    gpu = sim["sim-gpu-0"]
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "8"
    taints = {(t["key"], t["value"]) for t in gpu["spec"]["taints"]}
    assert taints == {("recserve.io/hardware", "gpu"), ("kwok.x-k8s.io/node", "fake")}
    assert sim["sim-cpu-0"]["spec"]["taints"] == [
        {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    ]
    local = {n["metadata"]["name"]: n for n in agent_nodes()}
    assert set(local) == {"local-gpu", "local-fpga", "local-cpu"}
    assert local["local-fpga"]["status"]["capacity"]["xilinx.com/fpga"] == "4"
    assert local["local-cpu"]["metadata"]["labels"]["recserve.io/node-agent"] == "true"


def test_prometheus_keeps_only_annotated_running_pods() -> None:
    config = prometheus_config(Path("/k/config"))
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": "/k/config"}]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert {r["source_labels"][0] for r in keep} == {
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
        "__meta_kubernetes_pod_phase",
    }


def test_mount_paths_are_rewritten_once_by_whole_prefix() -> None:
    mounts = {"/tmp": "/state/pod/volumes/tmp", "/tmp/store": "/tmp/store", "/cache": "/c"}
    assert rewrite_mount_paths("--out=/tmp/store/x", mounts) == "--out=/tmp/store/x"
    assert rewrite_mount_paths("/tmp/a:/cache", mounts) == "/state/pod/volumes/tmp/a:/c"
    assert rewrite_mount_paths("/tmpfs /cachet", mounts) == "/tmpfs /cachet"
    assert rewrite_mount_paths("HOME=/cache", mounts) == "HOME=/c"
