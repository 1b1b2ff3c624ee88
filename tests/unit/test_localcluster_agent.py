"""Pure parts of the node agent: $(VAR) expansion, pod IP allocation, Prometheus config,
configMap volume files."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from recserve_dev.localcluster.agent import (
    IP_BLOCKS_ENV,
    ConfigMapStore,
    IpAllocator,
    Probe,
    VolumeNotReady,
    config_map_payload,
    expand_references,
    ip_block_range,
    ip_block_share,
    rewrite_mount_paths,
    write_payload,
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
    assert 2 <= ips.block <= 254
    assert all(ip.startswith(f"127.{ips.block}.") for ip in addresses)
    assert IpAllocator(7).take()[0] == "127.7.0.2"
    ips.give_back(taken[5][1])
    assert ips.take()[0] == addresses[5]


def test_parallel_clusters_draw_pod_addresses_from_disjoint_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(IP_BLOCKS_ENV, "130-131")
    assert {IpAllocator().block for _ in range(50)} == {130, 131}
    assert ip_block_range("") == (2, 254)
    for bad in ("7", "1-9", "9-3", "2-255", "a-b"):
        with pytest.raises(ValueError, match=IP_BLOCKS_ENV):
            ip_block_range(bad)


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
    assert config["global"]["scrape_interval"] == "5s"  # the operator's default windows
    fast = prometheus_config(Path("/k/config"), scrape_seconds=1)["global"]
    assert fast == {"scrape_interval": "1s", "evaluation_interval": "1s"}


def test_mount_paths_are_rewritten_once_by_whole_prefix() -> None:
    mounts = {"/tmp": "/state/pod/volumes/tmp", "/tmp/store": "/tmp/store", "/cache": "/c"}
    assert rewrite_mount_paths("--out=/tmp/store/x", mounts) == "--out=/tmp/store/x"
    assert rewrite_mount_paths("/tmp/a:/cache", mounts) == "/state/pod/volumes/tmp/a:/c"
    assert rewrite_mount_paths("/tmpfs /cachet", mounts) == "/tmpfs /cachet"
    assert rewrite_mount_paths("HOME=/cache", mounts) == "HOME=/c"


def _cm(name: str, version: str = "1", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}, "data": data}


def test_configmap_volume_files_follow_keys_items_and_modes() -> None:
    cm = _cm("limits", a="1", b="2")
    cm["binaryData"] = {"bin": base64.b64encode(b"\x00\xff").decode()}
    assert config_map_payload({"name": "limits"}, cm) == {
        "a": (b"1", 0o644),
        "b": (b"2", 0o644),
        "bin": (b"\x00\xff", 0o644),
    }
    source = {
        "name": "limits",
        "defaultMode": 0o600,
        "items": [{"key": "a", "path": "x/a.json"}, {"key": "b", "path": "b", "mode": 0o444}],
    }
    assert config_map_payload(source, cm) == {"x/a.json": (b"1", 0o600), "b": (b"2", 0o444)}
    # a missing ConfigMap: empty folder when optional, otherwise not ready yet
    assert config_map_payload({"name": "gone", "optional": True}, None) == {}
    with pytest.raises(VolumeNotReady, match='configmap "gone" not found'):
        config_map_payload({"name": "gone"}, None)
    missing_key = {"name": "limits", "items": [{"key": "nope", "path": "n"}]}
    with pytest.raises(VolumeNotReady, match="non-existent config key"):
        config_map_payload(missing_key, cm)
    assert config_map_payload({**missing_key, "optional": True}, cm) == {}
    with pytest.raises(ValueError):
        config_map_payload({"name": "limits", "items": [{"key": "a", "path": "../a"}]}, cm)


def test_configmap_files_are_replaced_atomically_and_only_when_changed(tmp_path: Path) -> None:
    folder = tmp_path / "vol"
    written = write_payload(folder, {"a": (b"old", 0o644), "d/b": (b"keep", 0o600)}, {})
    a, b = folder / "a", folder / "d" / "b"
    assert (a.read_bytes(), b.read_bytes()) == (b"old", b"keep")
    assert b.stat().st_mode & 0o777 == 0o600
    before_a, before_b = os.stat(a), os.stat(b)
    written = write_payload(folder, {"a": (b"new", 0o644), "d/b": (b"keep", 0o600)}, written)
    after_a, after_b = os.stat(a), os.stat(b)
    assert a.read_bytes() == b"new"
    assert after_a.st_ino != before_a.st_ino  # a new file took the name: no partial writes
    assert (after_b.st_ino, after_b.st_mtime_ns) == (before_b.st_ino, before_b.st_mtime_ns)
    write_payload(folder, {"d/b": (b"keep", 0o600)}, written)
    assert not a.exists()
    leftovers = [p.name for p in folder.rglob("*") if p.name.startswith("..")]
    assert leftovers == []


class _FakeCore:
    def __init__(self) -> None:
        self.lists: list[str] = []
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.fail = False

    def list_namespaced_config_map(self, namespace: str, **_: Any) -> Any:
        self.lists.append(namespace)
        if self.fail:
            raise ApiException(status=500, reason="boom")

        class Response:
            data = json.dumps({"items": self.items.get(namespace, [])}).encode()

        return Response()


def test_configmaps_are_listed_once_per_namespace_per_refresh() -> None:
    api = _FakeCore()
    api.items["ns"] = [_cm("limits", a="1")]
    clock = [100.0]
    store = ConfigMapStore(api, refresh=2.0, clock=lambda: clock[0])
    for _ in range(300):  # hundreds of pods asking in one period
        cm = store.get("ns", "limits")
        assert cm is not None and cm["data"] == {"a": "1"}
        assert store.get("ns", "other") is None
    assert store.get("ns2", "limits") is None
    assert api.lists == ["ns", "ns2"]
    api.items["ns"] = [_cm("limits", "2", a="2")]
    clock[0] += 1.0
    assert store.get("ns", "limits") == _cm("limits", a="1")  # still fresh enough
    clock[0] += 1.0
    assert store.get("ns", "limits") == _cm("limits", "2", a="2")
    assert api.lists == ["ns", "ns2", "ns"]
    api.fail = True
    clock[0] += 2.0
    with pytest.raises(VolumeNotReady, match="boom"):
        store.get("ns", "limits")


def test_worker_shares_of_the_blocks_are_disjoint_and_valid() -> None:
    shares = [ip_block_range(ip_block_share(i, 3)) for i in range(3)]
    blocks = [set(range(low, high + 1)) for low, high in shares]
    assert all(a.isdisjoint(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    assert min(low for low, _ in shares) == 2 and max(high for _, high in shares) <= 254
