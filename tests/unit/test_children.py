"""Objects the operator renders: names, ownership, placement, pod security."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recserve_operator import children
from recserve_operator.config import ArtifactStore, OperatorConfig
from recserve_operator.reconcilers.hardwarepool import pool_status
from tests.manifests import example

pytestmark = pytest.mark.unit


def model() -> dict[str, Any]:
    doc = example("movielens-dlrm")
    doc["metadata"].update(uid="1234", namespace="ns1")
    return doc


CONFIG = OperatorConfig(store=ArtifactStore.from_uri("/tmp/store"))


def test_names_are_deterministic_dns_labels() -> None:
    assert children.dns_name("Movielens_DLRM", "gpu-pool") == "movielens-dlrm-gpu-pool"
    long = children.dns_name("m" * 60, "student-w256-d1-int8")
    assert len(long) <= 63 and long == children.dns_name("m" * 60, "student-w256-d1-int8")
    assert long != children.dns_name("m" * 60, "student-w256-d1-fp32")


def test_content_hash_ignores_traffic_but_not_compression() -> None:
    spec = model()["spec"]
    base = children.content_hash(spec, {"precisions": ["int8"]})
    spec2 = {**spec, "traffic": {"expectedRequestsPerSecond": 1}}
    assert children.content_hash(spec2, {"precisions": ["int8"]}) == base
    assert children.content_hash(spec, {"precisions": ["fp32"]}) != base
    spec3 = {**spec, "source": {"uri": "s3://other", "format": "torchscript"}}
    assert children.content_hash(spec3, {"precisions": ["int8"]}) != base


def test_server_pods_are_restricted_pinned_probed_and_scraped() -> None:
    pool = example("gpu-pool")
    dep = children.server_deployment(model(), pool, "/artifacts/x", "int8", 3, 256, 25, CONFIG)
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"recserve.io/hardware": "gpu"}
    assert pod["tolerations"][0]["value"] == "gpu"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--variant=/artifacts/x" in container["args"]
    assert {"name": "cache", "emptyDir": {}} in pod["volumes"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"


def test_profile_job_runs_on_the_pool_it_profiles() -> None:
    job = children.profile_job(model(), "abcdef0123456789", example("fpga-pool"), CONFIG)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"recserve.io/hardware": "fpga"}
    assert pod["containers"][0]["resources"]["limits"]["xilinx.com/fpga"] == "1"
    assert "--hardware=fpga" in pod["containers"][0]["args"]
    assert job["metadata"]["name"] == "movielens-dlrm-profile-fpga-pool-abcdef01"


def test_local_store_is_a_host_path_and_pvc_store_a_claim(tmp_path: Path) -> None:
    local = ArtifactStore.from_uri(str(tmp_path))
    assert local.volume["hostPath"]["path"] == str(tmp_path)
    assert local.local_path("a", "b") == tmp_path / "a" / "b"
    pvc = ArtifactStore.from_uri("pvc://recserve-artifacts/")
    assert pvc.volume["persistentVolumeClaim"]["claimName"] == "recserve-artifacts"
    assert pvc.pod_path("ns", "m") == "/artifacts/ns/m"


def _node(name: str, hw: str, ready: bool, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"recserve.io/hardware": hw}},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "4"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_pool_status_counts_nodes_and_accelerators() -> None:
    pool = example("gpu-pool")
    pool["metadata"]["generation"] = 2
    nodes = [_node("a", "gpu", True, 8), _node("b", "gpu", False, 8), _node("c", "cpu", True, 0)]
    pods = [
        {
            "spec": {
                "nodeName": "a",
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": "3"}}}],
            },
            "status": {"phase": "Running"},
        },
        {
            "spec": {
                "nodeName": "a",
                "containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}],
            },
            "status": {"phase": "Succeeded"},
        },
    ]
    status = pool_status(pool, nodes, pods)
    assert (status["nodeCount"], status["readyNodeCount"]) == (2, 1)
    assert (status["allocatable"], status["used"]) == (8, 3)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 2


def test_pool_without_nodes_says_so() -> None:
    status = pool_status(example("fpga-pool"), [_node("a", "gpu", True, 8)], [])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoMatchingNodes")
    assert status["nodeCount"] == 0
