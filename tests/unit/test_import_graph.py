"""The import graph between the product's packages and the dev kit, and what ships.

The operator (control plane) never imports the runtime's server; the runtime (data plane)
never imports the operator's reconcile code (only its API types, for `recserve crds` and
`recserve validate`); neither imports the dev kit (`recserve_dev`: local control plane,
demo, test models, benchmarks), except the runtime CLI's optional loading of it. Each
check imports in a fresh interpreter, so nothing this test session imported counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
from setuptools import find_packages

from tests.manifests import REPO

pytestmark = pytest.mark.unit

# Import every module of the given packages, then print the recserve modules loaded.
_WALK = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("recserve"))))
"""


def _loaded_by(*packages: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _WALK, *packages],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    assert set(packages) <= set(loaded)
    return loaded


def _dev_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.startswith("recserve_dev") or "localcluster" in m]


def _reconcile_code(loaded: list[str]) -> list[str]:
    """Operator modules other than its API types (which the runtime may use)."""
    return [
        m
        for m in loaded
        if m.startswith("recserve_operator.") and not m.startswith("recserve_operator.api")
    ]


def test_operator_imports_neither_the_server_nor_the_dev_kit() -> None:
    loaded = _loaded_by(
        "recserve_operator.reconcilers", "recserve_operator.handlers", "recserve_operator"
    )
    assert _dev_modules(loaded) == []
    assert [m for m in loaded if m.startswith("recserve_runtime.server")] == []


def test_server_imports_no_reconcile_code_nor_the_dev_kit() -> None:
    loaded = _loaded_by("recserve_runtime.server", "recserve_runtime.router")
    assert "recserve_operator.reconcilers" not in loaded
    assert _reconcile_code(loaded) == []
    assert _dev_modules(loaded) == []


def test_whole_runtime_imports_no_reconcile_code_nor_the_dev_kit() -> None:
    loaded = _loaded_by("recserve_runtime")
    assert _reconcile_code(loaded) == []
    assert _dev_modules(loaded) == []


def test_product_distribution_ships_no_dev_kit() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = [
        package
        for where in find["where"]
        for package in find_packages(where=str(REPO / where), include=find["include"])
    ]
    assert "recserve_operator.reconcilers" in packages
    assert "recserve_runtime.server" in packages
    assert [p for p in packages if p.startswith("recserve_dev") or "localcluster" in p] == []
    assert "devkit" not in find["where"]


def test_dev_kit_is_its_own_distribution() -> None:
    config = tomllib.loads((REPO / "devkit" / "pyproject.toml").read_text())
    assert config["project"]["name"] == "recserve-dev"
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(REPO / "devkit"), include=find["include"])
    assert packages and all(p.startswith("recserve_dev") for p in packages)


def test_images_install_only_the_product() -> None:
    build_files = (REPO / "docker" / "Dockerfile").read_text() + (
        REPO / "docker" / "install.sh"
    ).read_text()
    assert "devkit" not in build_files and "recserve_dev" not in build_files
    # the build context itself leaves the dev kit out
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and not [line for line in ignored if "devkit" in line]
