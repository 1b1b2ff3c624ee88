"""Find (or build) the control plane's binaries through hack/tools.sh."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOOL_KEYS = {
    "etcd": "RECSERVE_ETCD",
    "kube_apiserver": "RECSERVE_KUBE_APISERVER",
    "kube_controller_manager": "RECSERVE_KUBE_CONTROLLER_MANAGER",
    "kube_scheduler": "RECSERVE_KUBE_SCHEDULER",
    "kubectl": "RECSERVE_KUBECTL",
    "kwok": "RECSERVE_KWOK",
    "helm": "RECSERVE_HELM",
    "prometheus": "RECSERVE_PROMETHEUS",
}


class ToolsMissing(RuntimeError):
    """A binary is not built yet and building was not allowed."""


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary the local cluster needs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    prometheus: Path


def repo_root() -> Path:
    """The checkout this package runs from (the local cluster is a developer tool)."""
    for candidate in (Path.cwd(), *Path(__file__).resolve().parents):
        if (candidate / "hack" / "tools.sh").exists():
            return candidate
    raise ToolsMissing("hack/tools.sh not found: run from a recserve checkout")


def find_tools(build: bool = False) -> Tools:
    """Paths of the binaries; builds missing ones when ``build`` (tens of minutes cold)."""
    script = repo_root() / "hack" / "tools.sh"
    args = ["bash", str(script)] + ([] if build else ["--check"])
    result = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise ToolsMissing(
            f"control-plane binaries missing ({result.stderr.strip()}); run `make tools`"
        )
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Tools(**{attr: Path(found[key]) for attr, key in TOOL_KEYS.items()})


def run_kubectl(
    tools: Tools, kubeconfig: Path, args: tuple[str, ...], input_text: str | None = None
) -> str:
    """kubectl with exactly this kubeconfig; its stdout. RuntimeError with its stderr on
    failure (callers re-raise as their own cluster error)."""
    result = subprocess.run(
        [str(tools.kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout
