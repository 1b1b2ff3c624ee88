"""Credentials for the local cluster: the guard and ServiceAccount kubeconfigs."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from recserve_dev.localcluster.cluster import (
    MARKER_NAME,
    MARKER_NAMESPACE,
    ClusterError,
    write_kubeconfig,
)


def api_client(kubeconfig: Path) -> client.ApiClient:
    """An API client for exactly this kubeconfig (never the user's default one)."""
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    return api


def assert_test_cluster(api: client.ApiClient, expected_id: str | None = None) -> str:
    """Refuse any cluster that is not a recserve local cluster (or not the expected one).

    Tests create and delete namespaces and nodes: pointing them at a real cluster by
    mistake must fail before anything is touched. Returns the cluster id.
    """
    core = client.CoreV1Api(api)
    try:
        marker = core.read_namespaced_config_map(MARKER_NAME, MARKER_NAMESPACE)
    except ApiException as exc:
        raise ClusterError(
            f"refusing to run: {api.configuration.host} has no {MARKER_NAMESPACE}/{MARKER_NAME} "
            "ConfigMap, so it is not a recserve local test cluster"
        ) from exc
    cluster_id = str((marker.data or {}).get("clusterID", ""))
    if expected_id is not None and cluster_id != expected_id:
        raise ClusterError(
            f"refusing to run: cluster id {cluster_id} is not the expected test cluster "
            f"{expected_id}"
        )
    host = api.configuration.host or ""
    if not host.startswith(("https://127.0.0.1:", "https://localhost:")):
        raise ClusterError(f"refusing to run: {host} is not a local address")
    return cluster_id


def service_account_kubeconfig(
    api: client.ApiClient,
    namespace: str,
    name: str,
    path: Path,
    ca_file: Path | None,
    expiration_seconds: int = 3600,
) -> Path:
    """A kubeconfig holding a TokenRequest token of ServiceAccount ``namespace/name``.

    Used to run the operator under exactly the permissions the chart's RBAC grants.
    """
    core = client.CoreV1Api(api)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
    )
    answer = core.create_namespaced_service_account_token(name, namespace, request)
    token = str(answer.status.token) if answer.status else ""
    if not token:
        raise ClusterError(f"TokenRequest for {namespace}/{name} returned no token")
    return write_kubeconfig(
        path,
        str(api.configuration.host),
        token,
        ca_file,
        f"system:serviceaccount:{namespace}:{name}",
        namespace=namespace,
    )
