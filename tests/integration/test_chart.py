"""The Helm chart lints, renders, and installs into the local control plane."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from kubernetes import client

from tests.helpers import helm
from tests.manifests import REPO

CHART = REPO / "charts" / "recserve"
DRY_RUN_LINE = re.compile(
    r"^(?P<kind>[a-z0-9]+)(?:\.[a-z0-9.-]+)?/(?P<name>\S+) (?P<action>\w+) \(server dry run\)$"
)


def test_chart_lints(local_cluster: Any) -> None:
    out = helm(local_cluster, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


def test_rendered_chart_passes_server_side_dry_run(local_cluster: Any, namespace: str) -> None:
    rendered = helm(local_cluster, "template", "recserve", str(CHART), "-n", namespace)
    out = local_cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input_text=rendered
    )
    # kubectl prints one line per object: `deployment.apps/NAME created (server dry run)`
    applied: dict[tuple[str, str], str] = {}
    for line in out.splitlines():
        match = DRY_RUN_LINE.match(line.strip())
        assert match, f"unexpected kubectl output line {line!r} in:\n{out}"
        applied[(match["kind"], match["name"])] = match["action"]
    rendered_objects = {
        (doc["kind"].lower(), doc["metadata"]["name"])
        for doc in yaml.safe_load_all(rendered)
        if doc
    }
    assert set(applied) == rendered_objects, out
    kinds = {kind for kind, _ in applied}
    for kind in ("serviceaccount", "clusterrole", "clusterrolebinding", "deployment"):
        assert kind in kinds, f"no {kind} accepted by the API server:\n{out}"
    assert set(applied.values()) <= {"created", "configured", "unchanged"}, out


def test_helm_install_creates_the_operator_objects(
    local_cluster: Any, k8s: client.ApiClient, namespace: str
) -> None:
    release = f"rs-{namespace}"
    helm(local_cluster, "install", release, str(CHART), "-n", namespace, "--wait=false")
    try:
        deployment = client.AppsV1Api(k8s).read_namespaced_deployment(
            f"{release}-recserve", namespace
        )
        assert deployment.spec.replicas == 1
        assert deployment.spec.strategy.type == "Recreate"
        pod = deployment.spec.template.spec
        assert pod.security_context.run_as_non_root is True
        container = pod.containers[0].security_context
        assert container.read_only_root_filesystem is True
        assert container.capabilities.drop == ["ALL"]
        ext = client.ApiextensionsV1Api(k8s)
        assert ext.read_custom_resource_definition("recmodels.recserve.io")
        status = helm(local_cluster, "status", release, "-n", namespace)
        assert "STATUS: deployed" in status
    finally:
        helm(local_cluster, "uninstall", release, "-n", namespace)


def test_documented_crd_upgrade_replaces_an_older_schema(
    local_cluster: Any, k8s: client.ApiClient, crds: list[str], tmp_path: Any
) -> None:
    """Helm never upgrades crds/: the README's explicit step must replace an older schema
    installed by another manager (helm install uses plain create/update)."""
    current = REPO / "crds" / "recserve.io_recmodels.yaml"
    older = yaml.safe_load(current.read_text())
    status = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    del status["properties"]["plan"]
    old_file = tmp_path / "old.yaml"
    old_file.write_text(yaml.safe_dump(older))
    local_cluster.kubectl("replace", "-f", str(old_file))  # as an older install left it

    def has_plan() -> bool:
        crd = json.loads(local_cluster.kubectl("get", "crd", "recmodels.recserve.io", "-o", "json"))
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return "plan" in schema["properties"]["status"]["properties"]

    assert not has_plan()
    # the README's upgrade step, verbatim
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert has_plan()
