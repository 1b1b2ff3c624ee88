"""RBAC is on: a ServiceAccount token (TokenRequest) gets only what it is granted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from recserve_dev.localcluster.access import (
    api_client,
    assert_test_cluster,
    service_account_kubeconfig,
)
from recserve_dev.localcluster.cluster import ClusterError


def test_service_account_kubeconfig_is_bound_by_rbac(
    k8s: client.ApiClient, local_cluster: Any, namespace: str, tmp_path: Path
) -> None:
    core, rbac = client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    path = service_account_kubeconfig(
        k8s, namespace, "reader", tmp_path / "sa.kubeconfig", local_cluster.ca_file
    )
    kubectl = [f"--kubeconfig={path}", "auth", "can-i"]

    def can(*args: str) -> bool:
        try:
            return local_cluster.kubectl(*kubectl, *args).strip() == "yes"
        except ClusterError:  # `can-i` answers "no" with exit code 1
            return False

    assert can("list", "pods", "-n", namespace)
    assert not can("delete", "pods", "-n", namespace)
    assert not can("list", "secrets", "-n", namespace)
    assert not can("delete", "nodes")
    sa_api = api_client(path)
    pods = client.CoreV1Api(sa_api).list_namespaced_pod(namespace)
    assert pods.items == []


def test_guard_refuses_a_cluster_that_is_not_the_test_cluster(k8s: client.ApiClient) -> None:
    with pytest.raises(ClusterError, match="not the expected test cluster"):
        assert_test_cluster(k8s, expected_id="some-other-cluster")
