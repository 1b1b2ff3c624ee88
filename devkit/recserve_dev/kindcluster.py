"""A kind cluster made by `hack/kind.sh up` (`make kind-up`), as the demo and the kind
e2e tests reach it: its kubeconfig, kubectl and helm, node addresses, and Prometheus
through the API server's service proxy."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recserve_dev.localcluster.tools import Tools, find_tools, repo_root, run_kubectl

NAME = "recserve"
# kind-config.yaml mounts this host folder into every node at STORE_IN_NODES.
STORE_ON_HOST = Path("/tmp/recserve-artifacts")
STORE_IN_NODES = "/var/lib/recserve-artifacts"
PROMETHEUS_SERVICE = "monitoring/prometheus-operated:9090"  # hack/kind/prometheus.yaml


class KindError(RuntimeError):
    """The kind cluster is missing or a command against it failed."""


def default_kubeconfig() -> Path:
    """Where `hack/kind.sh up` writes the cluster's kubeconfig."""
    return Path(os.environ.get("KUBECONFIG_KIND", str(Path.home() / ".kube" / f"kind-{NAME}")))


@dataclass
class KindCluster:
    """The `recserve` kind cluster."""

    kubeconfig: Path
    tools: Tools

    @classmethod
    def attach(cls, kubeconfig: Path | None = None) -> KindCluster:
        """The running cluster; KindError when there is none (run `make kind-up`)."""
        cluster = cls(kubeconfig or default_kubeconfig(), find_tools(build=False))
        if not cluster.kubeconfig.is_file():
            raise KindError(f"no kind cluster: {cluster.kubeconfig} is missing (make kind-up)")
        cluster.kubectl("get", "--raw=/readyz")
        return cluster

    @property
    def admin_kubeconfig(self) -> Path:
        """The kubeconfig (named as the local cluster names it, for shared code)."""
        return self.kubeconfig

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        """Run kubectl against the cluster; raises KindError on failure."""
        try:
            return run_kubectl(self.tools, self.kubeconfig, args, input_text)
        except RuntimeError as exc:
            raise KindError(str(exc)) from None

    def node_address(self, node: str | None = None) -> str:
        """The InternalIP of a node (the control plane's by default): reachable from this
        machine on podman's network, so NodePorts answer there."""
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        for item in nodes:
            name = item["metadata"]["name"]
            if node == name or (node is None and name.endswith("control-plane")):
                for address in item["status"]["addresses"]:
                    if address["type"] == "InternalIP":
                        return str(address["address"])
        raise KindError(f"no node {node or 'control-plane'} with an InternalIP")

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        """An instant query to the in-cluster Prometheus, through the API server."""
        namespace, service = PROMETHEUS_SERVICE.split("/")
        path = (
            f"/api/v1/namespaces/{namespace}/services/{service}/proxy/api/v1/query"
            f"?query={urllib.parse.quote(query)}"
        )
        return list(json.loads(self.kubectl("get", f"--raw={path}"))["data"]["result"])

    def install_chart(self, *sets: str) -> None:
        """`helm upgrade --install` the chart with kind's values (hack/kind.sh chart)
        plus ``sets`` (``--set`` arguments)."""
        env = {**os.environ, "KUBECONFIG_KIND": str(self.kubeconfig)}
        result = subprocess.run(
            ["bash", str(repo_root() / "hack" / "kind.sh"), "chart", *sets],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if result.returncode != 0:
            raise KindError(f"hack/kind.sh chart: {result.stderr.strip()[-2000:]}")
