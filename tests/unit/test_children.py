"""Objects the operator renders: names, ownership, placement, pod security."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from recserve_operator import children
from recserve_operator.api import HardwarePool, OptimizationPolicy, RecModel
from recserve_operator.config import ArtifactStore, OperatorConfig
from tests.manifests import example

pytestmark = pytest.mark.unit


def model(**spec: Any) -> RecModel:
    doc = example("movielens-dlrm")
    doc["metadata"].update(uid="1234", namespace="ns1")
    doc["spec"].update(spec)
    return RecModel.model_validate(doc)


def pool(name: str) -> HardwarePool:
    return HardwarePool.model_validate(example(name))


def policy(**compression: Any) -> OptimizationPolicy:
    doc = example("latency-first")
    doc["spec"]["compression"].update(compression)
    return OptimizationPolicy.model_validate(doc)


CONFIG = OperatorConfig(store=ArtifactStore.from_uri("/tmp/store"))


def test_names_are_deterministic_dns_labels() -> None:
    assert children.dns_name("Movielens_DLRM", "gpu-pool") == "movielens-dlrm-gpu-pool"
    long = children.dns_name("m" * 60, "student-w256-d1-int8")
    assert len(long) <= 63 and long == children.dns_name("m" * 60, "student-w256-d1-int8")
    assert long != children.dns_name("m" * 60, "student-w256-d1-fp32")


def test_content_hash_ignores_traffic_but_not_compression() -> None:
    spec = model().spec
    base = children.content_hash(spec, policy(precisions=["int8"]).spec.compression)
    busier = model(traffic={"expectedRequestsPerSecond": 1}).spec
    assert children.content_hash(busier, policy(precisions=["int8"]).spec.compression) == base
    assert children.content_hash(spec, policy(precisions=["fp32"]).spec.compression) != base
    other = model(
        source={"uri": "s3://other", "format": "torchscript", "featureSpecUri": "s3://spec"}
    ).spec
    assert children.content_hash(other, policy(precisions=["int8"]).spec.compression) != base


def test_content_hash_is_that_of_the_wire_form_the_api_server_holds() -> None:
    """Stable across the move to typed objects: the same camelCase dict, defaults filled."""
    import hashlib
    import json

    spec = model().spec
    compression = policy().spec.compression
    held = {
        "source": {"uri": "demo", "format": "demo"},
        "evalDataset": {"name": "movielens-100k", "holdoutBasisPoints": 2000},
        "compression": {
            "precisions": ["fp32", "fp16", "int8", "int4"],
            "staticQuantization": True,
            "pruningRatiosBasisPoints": [3000, 5000],
            "distillation": {"enabled": True, "maxStudents": 4},
        },
    }
    expected = hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:16]
    assert children.content_hash(spec, compression) == expected


def build_args(m: RecModel | None = None, p: OptimizationPolicy | None = None) -> list[str]:
    job = children.build_job(m or model(), "abcdef0123456789", p or policy(), CONFIG)
    args: list[str] = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_build_job_passes_every_source_field() -> None:
    assert build_args()[1:3] == ["--model=demo", "--model-format=demo"]
    sha = "ab" * 32
    source = {
        "uri": "/artifacts/models/m.onnx",
        "format": "onnx",
        "sha256": sha,
        "featureSpecUri": "s3://bucket/spec.yaml",
    }
    args = build_args(model(source=source))
    for flag in (
        "--model=/artifacts/models/m.onnx",
        "--model-format=onnx",
        f"--model-sha256={sha}",
        "--feature-spec=s3://bucket/spec.yaml",
    ):
        assert flag in args


def test_build_job_passes_the_eval_dataset() -> None:
    assert {"--dataset=movielens-100k", "--holdout-bp=2000"} <= set(build_args())
    data = {
        "name": "custom",
        "uri": "/artifacts/data/train.csv",
        "format": "csv",
        "testUri": "/artifacts/data/test.csv",
        "holdoutBasisPoints": 1500,
    }
    args = build_args(model(evalDataset=data))
    assert not any(a.startswith("--dataset") for a in args)
    for flag in (
        "--eval-data=/artifacts/data/train.csv",
        "--eval-format=csv",
        "--eval-test-data=/artifacts/data/test.csv",
        "--holdout-bp=1500",
    ):
        assert flag in args
    timed = {"name": "custom", "uri": "d.parquet", "timeColumn": "ts", "userColumn": "uid"}
    args = build_args(model(evalDataset=timed))
    assert {"--time-column=ts", "--user-column=uid"} <= set(args)
    assert not any(a.startswith(("--eval-format", "--eval-test-data")) for a in args)


def test_build_job_passes_the_precisions() -> None:
    assert "--precisions=fp32,fp16,int8,int4" in build_args()
    assert "--precisions=fp32,int8" in build_args(p=policy(precisions=["fp32", "int8"]))


def test_build_job_passes_static_quantization() -> None:
    assert "--static-quantization" in build_args()
    args = build_args(p=policy(staticQuantization=False))
    assert "--no-static-quantization" in args and "--static-quantization" not in args


def test_build_job_passes_every_pruning_ratio_or_none() -> None:
    assert "--prune-bp=3000,5000" in build_args()
    assert "--prune-bp=7000" in build_args(p=policy(pruningRatiosBasisPoints=[7000]))
    args = build_args(p=policy(pruningRatiosBasisPoints=[]))
    assert "--no-pruning" in args and not any(a.startswith("--prune-bp") for a in args)


def test_build_job_passes_the_student_count() -> None:
    assert "--max-students=4" in build_args()
    assert "--max-students=2" in build_args(
        p=policy(distillation={"enabled": True, "maxStudents": 2})
    )


def test_build_job_passes_distillation_off() -> None:
    assert "--no-distillation" not in build_args()
    assert "--no-distillation" in build_args(
        p=policy(distillation={"enabled": False, "maxStudents": 4})
    )


def test_build_job_passes_the_holdout_share() -> None:
    assert "--holdout-bp=2000" in build_args()
    held_out = model(evalDataset={"name": "movielens-100k", "holdoutBasisPoints": 3000})
    assert "--holdout-bp=3000" in build_args(m=held_out)


def test_build_job_writes_into_the_store_layout_and_lets_config_flags_win() -> None:
    config = OperatorConfig(store=ArtifactStore.from_uri("/tmp/store"), optimize_args=("--quick",))
    job = children.build_job(model(), "abcdef0123456789", policy(), config)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--out=/artifacts/ns1/movielens-dlrm/abcdef0123456789/variants" in args
    assert "--json=/artifacts/ns1/movielens-dlrm/abcdef0123456789/report.json" in args
    assert "--p99-target-ms=25" in args and "--accuracy-budget-bp=100" in args
    assert args[-1] == "--quick"
    assert job["metadata"]["name"] == "movielens-dlrm-build-abcdef01"


def test_server_pods_are_restricted_pinned_probed_and_scraped() -> None:
    dep = children.server_deployment(
        model(), pool("gpu-pool"), "/artifacts/x", "int8", 3, 256, 25, CONFIG
    )
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


def test_a_canary_is_a_deployment_of_its_own_whose_pods_the_router_tells_apart() -> None:
    stable = children.server_deployment(
        model(), pool("gpu-pool"), "/artifacts/x", "fp32", 3, 256, 25, CONFIG
    )
    canary = children.server_deployment(
        model(), pool("gpu-pool"), "/artifacts/y", "int8", 3, 256, 25, CONFIG, canary=True
    )
    assert canary["metadata"]["name"] == stable["metadata"]["name"] + "-canary"
    track = {children.TRACK_LABEL: children.CANARY}
    assert canary["spec"]["selector"]["matchLabels"].items() >= track.items()
    assert canary["spec"]["template"]["metadata"]["labels"].items() >= track.items()
    assert children.TRACK_LABEL not in stable["spec"]["template"]["metadata"]["labels"]
    # the two never claim each other's ReplicaSets' pods by selector alone: the
    # canary's selector is narrower, and pods carry their ReplicaSet's hash too
    assert not stable["spec"]["selector"]["matchLabels"].items() >= track.items()
    router = children.router_deployment(model(), CONFIG)
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    name = children.router_weights_name(model().name)
    assert f"--weights-config-map={name}" in args and "--source=pods" in args
    weights = children.router_weights(model(), 25)
    assert weights["metadata"]["name"] == name
    assert json.loads(weights["data"]["weights.json"]) == {"canaryPercent": 25}


def pool_pods(**spec: Any) -> list[dict[str, Any]]:
    """The server and profile pod specs of the gpu-pool example with ``spec`` changes."""
    doc = example("gpu-pool")
    doc["spec"].update(spec)
    hw = HardwarePool.model_validate(doc)
    server = children.server_deployment(model(), hw, "/artifacts/x", "int8", 1, 64, 25, CONFIG)
    profile = children.profile_job(model(), "abcdef0123456789", hw, CONFIG)
    return [server["spec"]["template"]["spec"], profile["spec"]["template"]["spec"]]


def test_pool_tolerations_reach_the_server_pods() -> None:
    tolerations = [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
        {"key": "spot", "operator": "Exists"},
    ]
    for pod in pool_pods(tolerations=tolerations):
        assert pod["tolerations"] == tolerations


def test_pool_resources_reach_the_server_pods() -> None:
    pods = pool_pods(
        accelerator={"name": "amd.com/gpu", "amountPerReplica": 2},
        resources={"cpuMillis": 3500, "memoryMebibytes": 8192},
    )
    amounts = {"cpu": "3500m", "memory": "8192Mi", "amd.com/gpu": "2"}
    for pod in pods:
        assert pod["containers"][0]["resources"] == {"requests": amounts, "limits": amounts}


def test_server_services_are_headless_and_the_router_has_the_model_s_address() -> None:
    """The router picks server pods itself: no virtual IP (nor its allocation) for them."""
    server = children.server_deployment(
        model(), pool("cpu-pool"), "/artifacts/x", "int8", 2, 64, 25, CONFIG
    )
    router = children.router_deployment(model(), CONFIG)
    server_svc = children.service(server, model())
    router_svc = children.service(router, model())
    assert server_svc["spec"]["clusterIP"] == "None"
    assert server_svc["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
    assert "clusterIP" not in router_svc["spec"]
    assert router_svc["metadata"]["name"] == "movielens-dlrm-router"


def test_profile_job_runs_on_the_pool_it_profiles() -> None:
    job = children.profile_job(model(), "abcdef0123456789", pool("fpga-pool"), CONFIG)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"recserve.io/hardware": "fpga"}
    assert pod["containers"][0]["resources"]["limits"]["xilinx.com/fpga"] == "1"
    assert "--hardware=fpga" in pod["containers"][0]["args"]
    assert job["metadata"]["name"] == "movielens-dlrm-profile-fpga-pool-abcdef01"
    assert (
        "--json=/artifacts/ns1/movielens-dlrm/abcdef0123456789/profile-fpga-pool.json"
        in pod["containers"][0]["args"]
    )


def test_only_the_build_job_runs_the_builder_image() -> None:
    """Profiling measures the onnxruntime the pool serves with (the server image); only
    the build needs torch."""
    config = dataclasses.replace(CONFIG, builder_image="b:1", server_image="s:1")
    build = children.build_job(model(), "abcdef0123456789", policy(), config)
    profile = children.profile_job(model(), "abcdef0123456789", pool("fpga-pool"), config)
    assert build["spec"]["template"]["spec"]["containers"][0]["image"] == "b:1"
    # the build's dataset cache is on the store (shared, stageable), not in the pod
    env = {
        e["name"]: e.get("value") for e in build["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RECSERVE_DATA_DIR"] == "/artifacts/data"
    # read-only root filesystem: temporary files go to the cache emptyDir
    for job in (build, profile):
        container = job["spec"]["template"]["spec"]["containers"][0]
        tmp = {e["name"]: e.get("value") for e in container["env"]}["TMPDIR"]
        assert any(m["mountPath"] == tmp for m in container["volumeMounts"])
    assert profile["spec"]["template"]["spec"]["containers"][0]["image"] == "s:1"


def test_local_store_is_a_host_path_and_pvc_store_a_claim(tmp_path: Path) -> None:
    local = ArtifactStore.from_uri(str(tmp_path))
    assert local.volume["hostPath"]["path"] == str(tmp_path)
    assert local.local_path("a", "b") == tmp_path / "a" / "b"
    pvc = ArtifactStore.from_uri("pvc://recserve-artifacts/")
    assert pvc.volume["persistentVolumeClaim"]["claimName"] == "recserve-artifacts"
    assert pvc.pod_path("ns", "m") == "/artifacts/ns/m"


def test_only_the_router_prometheus_the_operator_and_recalibration_reach_the_servers() -> None:
    config = OperatorConfig(store=CONFIG.store, operator_namespace="recserve-system")
    servers, router_policy = children.network_policies(model(), config)
    assert servers["metadata"]["name"] == "movielens-dlrm-servers"
    assert servers["metadata"]["labels"][children.MODEL_LABEL] == "movielens-dlrm"
    spec = servers["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        children.MODEL_LABEL: "movielens-dlrm",
        children.COMPONENT_LABEL: "server",
    }
    assert spec["policyTypes"] == ["Ingress"]  # everything not listed is refused
    inference, admin, scrape = spec["ingress"]
    router = {
        "podSelector": {
            "matchLabels": {
                children.MODEL_LABEL: "movielens-dlrm",
                children.COMPONENT_LABEL: "router",
            }
        }
    }  # the same namespace: no namespaceSelector
    prometheus = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert inference == {
        "from": [router],
        "ports": [{"protocol": "TCP", "port": children.SERVER_PORT}],
    }
    assert admin == {
        "from": [
            {
                "podSelector": {"matchLabels": {children.COMPONENT_LABEL: "operator"}},
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "recserve-system"}
                },
            },
            {  # the model's own recalibration Jobs (their request samples)
                "podSelector": {
                    "matchLabels": {
                        children.MODEL_LABEL: "movielens-dlrm",
                        children.COMPONENT_LABEL: "recalibrate",
                    }
                }
            },
        ],
        "ports": [{"protocol": "TCP", "port": children.ADMIN_PORT}],
    }
    assert scrape == {
        "from": [prometheus],
        "ports": [{"protocol": "TCP", "port": children.SERVER_METRICS_PORT}],
    }
    # the router: open to any client on its port, its metrics to Prometheus only
    assert router_policy["metadata"]["name"] == "movielens-dlrm-router"
    assert (
        router_policy["spec"]["podSelector"]["matchLabels"] == router["podSelector"]["matchLabels"]
    )
    assert router_policy["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": children.ROUTER_PORT}]},
        {
            "from": [prometheus],
            "ports": [{"protocol": "TCP", "port": children.ROUTER_METRICS_PORT}],
        },
    ]


def test_metrics_are_served_and_scraped_on_their_own_ports() -> None:
    """The ports the NetworkPolicies open to Prometheus are where /metrics is served and
    what the pods' scrape annotations name."""
    server = children.server_deployment(
        model(), pool("cpu-pool"), "/artifacts/x", "int8", 1, 64, 25, CONFIG
    )
    router = children.router_deployment(model(), CONFIG)
    for dep, port in (
        (server, children.SERVER_METRICS_PORT),
        (router, children.ROUTER_METRICS_PORT),
    ):
        template = dep["spec"]["template"]
        [container] = template["spec"]["containers"]
        assert f"--metrics-port={port}" in container["args"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert container["ports"][0]["name"] == "http"  # the router finds servers by it
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_network_policy_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSERVE_NAMESPACE", "ops")
    monkeypatch.setenv("RECSERVE_PROMETHEUS_POD_LABELS", "app=prom, team=obs")
    config = OperatorConfig.from_env()
    assert config.network_policies and config.operator_namespace == "ops"
    assert config.prometheus_pod_labels == (("app", "prom"), ("team", "obs"))
    monkeypatch.setenv("RECSERVE_PROMETHEUS_POD_LABELS", "")
    monkeypatch.setenv("RECSERVE_NETWORK_POLICIES", "false")
    config = OperatorConfig.from_env()
    assert not config.network_policies and config.prometheus_pod_labels == ()
    monkeypatch.setenv("RECSERVE_PROMETHEUS_POD_LABELS", "app")
    with pytest.raises(SystemExit, match="key=value"):
        OperatorConfig.from_env()


def test_the_router_runs_in_the_configured_replicas_spread_over_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    two = children.router_deployment(model(), CONFIG)
    assert two["spec"]["replicas"] == 2  # the default: one crash does not take the model
    one = children.router_deployment(model(), dataclasses.replace(CONFIG, router_replicas=1))
    assert one["spec"]["replicas"] == 1
    [term] = two["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == {
        children.MODEL_LABEL: "movielens-dlrm",
        children.COMPONENT_LABEL: "router",
    }
    monkeypatch.setenv("RECSERVE_ROUTER_REPLICAS", "3")
    assert OperatorConfig.from_env().router_replicas == 3
    monkeypatch.setenv("RECSERVE_ROUTER_REPLICAS", "0")
    with pytest.raises(SystemExit, match="at least 1"):
        OperatorConfig.from_env()


def test_the_routers_account_may_only_read_pods_endpoints_and_config_maps_of_its_namespace() -> (
    None
):
    account, role, binding = children.router_rbac("team-a")
    assert {o["metadata"]["namespace"] for o in (account, role, binding)} == {"team-a"}
    assert all(o["metadata"]["labels"][children.SHARED_LABEL] == "true" for o in (account, role))
    assert all(
        children.MODEL_LABEL not in o["metadata"]["labels"] for o in (account, role, binding)
    )
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert {r for rule in role["rules"] for r in rule["resources"]} == {
        "pods",
        "endpointslices",
        "configmaps",  # the canary's share (router_weights)
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "team-a"}
    ]


def test_a_namespace_s_router_account_goes_only_after_two_rounds_without_models() -> None:
    remove, empty = children.namespaces_without_models({"a", "b"}, {"b"}, set())
    assert (remove, empty) == (set(), {"a"})
    remove, empty = children.namespaces_without_models({"a", "b"}, {"b"}, empty)
    assert remove == {"a"}
    # a model arrived between the rounds: kept
    assert children.namespaces_without_models({"a"}, {"a"}, {"a"}) == (set(), set())
