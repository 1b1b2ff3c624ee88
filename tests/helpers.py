"""Test helpers: polling (from the dev kit), helm, operator restarts, pod logs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from recserve_dev.waiting import eventually

__all__ = [
    "OPERATOR_PODS",
    "apply_byom_example",
    "eventually",
    "helm",
    "pod_log",
    "restart_operator",
]


def helm(local_cluster: Any, *args: str) -> str:
    """Run the cached helm against the test cluster; fails the test on a non-zero exit."""
    result = subprocess.run(
        [str(local_cluster.tools.helm), f"--kubeconfig={local_cluster.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


OPERATOR_PODS = "app.kubernetes.io/component=operator"


def restart_operator(core: Any, namespace: str, timeout: float = 90) -> Any:
    """Delete the operator's pods; wait until they are gone and one new pod is Ready.

    The node agent removes a deleted pod only once its processes have exited, so when
    this returns the old operator can no longer act: whatever changes afterwards was done
    by the returned pod (a ``V1Pod`` with another uid).
    """
    old = core.list_namespaced_pod(namespace, label_selector=OPERATOR_PODS).items
    assert old, f"no operator pod ({OPERATOR_PODS}) in {namespace} to restart"
    old_uids = {pod.metadata.uid for pod in old}
    for pod in old:
        core.delete_namespaced_pod(pod.metadata.name, namespace)

    def pods() -> list[Any]:
        return list(core.list_namespaced_pod(namespace, label_selector=OPERATOR_PODS).items)

    def replaced() -> Any:
        current = pods()
        if len(current) != 1 or current[0].metadata.uid in old_uids:
            return None
        conditions = current[0].status.conditions or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        return current[0] if ready else None

    new: Any = eventually(
        replaced,
        timeout=timeout,
        interval=0.5,
        what=f"old operator pods gone and one new operator pod Ready in {namespace}",
        state=lambda: [
            (p.metadata.name, p.metadata.uid in old_uids, p.status.phase) for p in pods()
        ],
    )
    return new


def pod_log(local_cluster: Any, pod: Any) -> str:
    """All container output of a pod run by the node agent (README: the local control
    plane, `.cluster/pods/<ns>_<pod>_<uid>/<container>.log`)."""
    meta = pod.metadata
    folder = Path(local_cluster.root) / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
    logs = sorted(folder.glob("*.log"))
    assert logs, f"no container log under {folder}"
    return "".join(path.read_text(errors="replace") for path in logs)


def apply_byom_example(k8s: Any, namespace: str, name: str, pools: list[str] | None = None) -> None:
    """Apply the bring-your-own example's RecModel (named ``name``, on ``pools`` if
    given) with a two-variant policy: a short build, with the same gate and plan as
    more variants. Its model and data must already be in the artifact store."""
    import yaml
    from kubernetes import client

    from recserve_operator.api import GROUP, VERSION
    from tests.manifests import REPO, example

    custom = client.CustomObjectsApi(k8s)
    policy = example("latency-first")
    policy["metadata"].update(name="byom-quick", namespace=namespace)
    policy["spec"]["compression"] = {
        "precisions": ["fp32", "int8"],
        "staticQuantization": False,
        "pruningRatiosBasisPoints": [],
        "distillation": {"enabled": False},
    }
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    path = REPO / "examples" / "bring-your-own" / "recmodel.yaml"
    model = yaml.safe_load(path.read_text())
    model["metadata"].update(name=name, namespace=namespace)
    model["spec"]["policyRef"]["name"] = "byom-quick"
    if pools is not None:
        model["spec"]["hardwarePoolRefs"] = [{"name": p} for p in pools]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", model)
