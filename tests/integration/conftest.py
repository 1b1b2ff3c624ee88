"""Integration fixtures: CRDs installed once per session on the local control plane."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.helpers import eventually
from tests.manifests import REPO


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def crds(local_cluster: Any, k8s: client.ApiClient) -> list[str]:
    """Apply the generated CRDs and wait until each is Established."""
    local_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    ext = client.ApiextensionsV1Api(k8s)
    names = [
        "recmodels.recserve.io",
        "hardwarepools.recserve.io",
        "optimizationpolicies.recserve.io",
        "modelvariants.recserve.io",
    ]

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    eventually(established, timeout=30)
    return names
