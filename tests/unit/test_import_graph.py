"""The import graph between the product's packages and the dev kit, and what ships.

The operator (control plane) never imports the runtime's server; the runtime (data plane)
never imports the operator's reconcile code (only its API types, for `recserve crds` and
`recserve validate`); neither imports the dev kit (`recserve_dev`: local control plane,
demo, test models, benchmarks), except the runtime CLI's optional loading of it. Each
check imports in a fresh interpreter, so nothing this test session imported counts.
"""

from __future__ import annotations

import ast
import contextlib
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


def _in_fresh_interpreter(script: str, *packages: str) -> list[str]:
    """Run ``script`` over ``packages`` in a new interpreter; its last line, parsed."""
    result = subprocess.run(
        [sys.executable, "-c", script, *packages],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.splitlines()[-1])
    return names


def _loaded_by(*packages: str) -> list[str]:
    loaded = _in_fresh_interpreter(_WALK, *packages)
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


# Import every module of the given packages; print the top-level modules that importing
# them loaded (those loaded at interpreter start, e.g. by .pth files, do not count).
_THIRD_PARTY = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


def _declared(extras: set[str]) -> set[str]:
    """The distributions `recserve[extras]` installs: its requirements for those extras,
    and theirs, transitively (as pip would resolve them)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    todo = [(r, extras) for r in distribution("recserve").requires or []]
    while todo:
        raw, active = todo.pop()
        req = Requirement(raw)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in active | {""}):
            continue
        name = canonicalize_name(req.name)
        if name == "recserve":  # recserve[runtime] inside another extra
            todo += [(r, set(req.extras)) for r in distribution("recserve").requires or []]
            continue
        if name in found:
            continue
        found.add(name)
        with contextlib.suppress(PackageNotFoundError):  # platform-specific, not here
            todo += [(r, set(req.extras)) for r in distribution(name).requires or []]
    return found


def _imported_by_the_product() -> set[str]:
    """Top-level names that the product's own sources import (anywhere in a module):
    the third-party libraries' optional imports (brotli, protobuf...) are theirs."""
    names: set[str] = set()
    for source in [*(REPO / "operator").rglob("*.py"), *(REPO / "runtime").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("extras", "packages"),
    [
        ({"operator"}, ["recserve_operator"]),  # the operator image
        (  # the server image: servers, routers and profile Jobs
            {"runtime", "operator"},
            [
                "recserve_runtime.server",
                "recserve_runtime.router",
                "recserve_runtime.profile_cmd",
                "recserve_runtime.profiler",
                "recserve_runtime.serving_profile",
            ],
        ),
    ],
    ids=["operator-image", "server-image"],
)
def test_each_image_declares_what_its_code_imports(extras: set[str], packages: list[str]) -> None:
    """Every third-party module the image's code imports comes from a distribution its
    extras declare: the dev environment has all extras installed, so a missing one would
    otherwise show only in the image (it did: the operator's prometheus_client)."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    loaded = _in_fresh_interpreter(_THIRD_PARTY, *packages)
    owners = packages_distributions()
    declared = _declared(extras)
    ours = _imported_by_the_product()
    undeclared = {
        module: owners[module]
        for module in loaded
        if module in owners
        and module in ours
        and not module.startswith("recserve")
        and module not in sys.stdlib_module_names
        and not {canonicalize_name(d) for d in owners[module]} & declared
    }
    assert undeclared == {}, f"imported, not in recserve[{','.join(sorted(extras))}]"
