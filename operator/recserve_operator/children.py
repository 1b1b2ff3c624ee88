"""The objects a RecModel owns, rendered from spec and plan: deterministic names,
owner references, restricted pod security, probes and scrape annotations."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from recserve_operator.config import STORE_MOUNT, OperatorConfig

MANAGED_BY = {"app.kubernetes.io/managed-by": "recserve-operator"}
MODEL_LABEL = "recserve.io/model"
POOL_LABEL = "recserve.io/pool"
VARIANT_LABEL = "recserve.io/variant"
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVER_PORT = 8000
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


def content_hash(spec: dict[str, Any], compression: dict[str, Any]) -> str:
    """What the variants depend on: model source, architecture, data and compressions.

    Traffic, pools and objectives are not part of it: changing them re-plans without a
    rebuild.
    """
    relevant = {
        "source": spec.get("source"),
        "architecture": spec.get("architecture"),
        "evalDataset": spec.get("evalDataset"),
        "compression": compression,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference to ``owner`` (garbage collection deletes children)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, model: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": model["metadata"]["namespace"],
        "labels": {**MANAGED_BY, MODEL_LABEL: model["metadata"]["name"], **labels},
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


def _pod_ip_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": CACHE_MOUNT},
        {"name": "RECSERVE_CACHE", "value": CACHE_MOUNT},
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


def placement(pool: dict[str, Any]) -> dict[str, Any]:
    """nodeSelector and tolerations that pin a pod to a HardwarePool's nodes."""
    spec = pool["spec"]
    return {
        "nodeSelector": dict(spec["nodeSelector"]),
        "tolerations": [
            {k: v for k, v in t.items() if v not in (None, "")} for t in spec.get("tolerations", [])
        ],
    }


def resources(pool: dict[str, Any]) -> dict[str, Any]:
    """Requests = limits for CPU, memory and the pool's accelerator."""
    spec = pool["spec"]
    res = spec.get("resources", {})
    amounts = {
        "cpu": f"{res.get('cpuMillis', 1000)}m",
        "memory": f"{res.get('memoryMebibytes', 1024)}Mi",
    }
    accelerator = spec.get("accelerator")
    if accelerator:
        amounts[accelerator["name"]] = str(accelerator.get("amountPerReplica", 1))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def build_job(
    model: dict[str, Any], digest: str, policy: dict[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """The Job that runs `recserve optimize` and writes variants to the store."""
    name = model["metadata"]["name"]
    out = config.store.pod_path(model["metadata"]["namespace"], name, digest)
    objectives = policy["spec"].get("objectives", {})
    compression = policy["spec"].get("compression", {})
    source = model["spec"]["source"]
    args = [
        "recserve",
        "optimize",
        f"--model={source['uri']}",
        f"--dataset={model['spec'].get('evalDataset', {}).get('name', 'movielens-100k')}",
        f"--out={out}/variants",
        f"--json={out}/report.json",
        f"--accuracy-budget-bp={objectives.get('accuracyBudgetBasisPoints', 100)}",
        f"--p99-target-ms={objectives.get('p99LatencyTargetMilliseconds', 25)}",
        *config.optimize_args,
    ]
    ratios = compression.get("pruningRatiosBasisPoints") or []
    if ratios:
        args.append(f"--prune-bp={max(ratios)}")
    return _job(dns_name(name, "build", digest[:8]), model, args, {}, config, "build")


def profile_job(
    model: dict[str, Any], digest: str, pool: dict[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """The Job that profiles every variant on one pool's hardware."""
    name = model["metadata"]["name"]
    pool_name = pool["metadata"]["name"]
    out = config.store.pod_path(model["metadata"]["namespace"], name, digest)
    args = [
        "recserve",
        "profile",
        f"--variants={out}/variants",
        f"--hardware={pool['spec']['hardwareType']}",
        f"--json={out}/profile-{pool_name}.json",
    ]
    job = _job(
        dns_name(name, "profile", pool_name, digest[:8]),
        model,
        args,
        {POOL_LABEL: pool_name},
        config,
        "profile",
    )
    pod = job["spec"]["template"]["spec"]
    pod.update(placement(pool))
    pod["containers"][0]["resources"] = resources(pool)
    return job


def _job(
    name: str,
    model: dict[str, Any],
    args: list[str],
    labels: dict[str, str],
    config: OperatorConfig,
    component: str,
) -> dict[str, Any]:
    all_labels = {COMPONENT_LABEL: component, **labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, model, all_labels),
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {
                    "labels": {**MANAGED_BY, MODEL_LABEL: model["metadata"]["name"], **all_labels}
                },
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": component,
                            "image": config.builder_image,
                            "command": args[:1],
                            "args": args[1:],
                            "env": _pod_ip_env(),
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


def server_deployment(
    model: dict[str, Any],
    pool: dict[str, Any],
    variant_dir: str,
    variant_name: str,
    replicas: int,
    batch_size: int,
    p99_target_ms: int,
    config: OperatorConfig,
) -> dict[str, Any]:
    """One Deployment of `recserve serve` per (model, pool)."""
    pool_name = pool["metadata"]["name"]
    name = dns_name(model["metadata"]["name"], pool_name)
    labels = {COMPONENT_LABEL: "server", POOL_LABEL: pool_name}
    selector = {MODEL_LABEL: model["metadata"]["name"], POOL_LABEL: pool_name}
    args = [
        "serve",
        f"--variant={variant_dir}",
        "--host=$(POD_IP)",
        f"--port={SERVER_PORT}",
        f"--hardware={pool['spec']['hardwareType']}",
        f"--slo-p99-ms={p99_target_ms}",
        f"--max-batch-rows={max(batch_size, 1)}",
    ]
    container = {
        "name": "server",
        "image": config.server_image,
        "command": ["recserve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "env": _pod_ip_env(),
        "resources": resources(pool),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": _mounts(read_only_store=True),
        **_health_probes(SERVER_PORT),
    }
    return _deployment(
        name,
        model,
        labels,
        selector,
        replicas,
        container,
        config,
        extra_pod_labels={VARIANT_LABEL: dns_name(variant_name)},
        pod_placement=placement(pool),
    )


def router_deployment(model: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The RecModel's single entry point: `recserve route` over its server pods."""
    model_name = model["metadata"]["name"]
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
            f"--namespace={model['metadata']['namespace']}",
            "--host=$(POD_IP)",
            f"--port={ROUTER_PORT}",
        ],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
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
        1,
        container,
        config,
        volumes=[{"name": "cache", "emptyDir": {}}],
        service_account=dns_name(model_name, "router"),
    )


def _deployment(
    name: str,
    model: dict[str, Any],
    labels: dict[str, str],
    selector: dict[str, str],
    replicas: int,
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
        MODEL_LABEL: model["metadata"]["name"],
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
        "metadata": _meta(name, model, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(container["ports"][0]["containerPort"]),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def service(deployment: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """A ClusterIP Service in front of a Deployment we own."""
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            deployment["metadata"]["name"],
            model,
            {k: v for k, v in deployment["metadata"]["labels"].items() if k != MODEL_LABEL},
        ),
        "spec": {
            "selector": deployment["spec"]["selector"]["matchLabels"],
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def router_rbac(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The router's ServiceAccount, allowed to read endpoints of its namespace only."""
    name = dns_name(model["metadata"]["name"], "router")
    ns = model["metadata"]["namespace"]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, model, {})},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, model, {}),
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, model, {}),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        },
    ]
