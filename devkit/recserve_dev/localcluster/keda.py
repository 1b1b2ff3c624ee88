"""KEDA on the local control plane: its operator and metrics API server as local processes.

Opt-in (``LocalCluster(keda=True)``, ``RECSERVE_CLUSTER_KEDA=1`` or ``recserve cluster up
--keda``), for comparing recserve's autoscaler with KEDA's ScaledObjects, which drive the
real HorizontalPodAutoscaler controller of kube-controller-manager. Binaries and CRDs
come from ``hack/tools.sh --with-keda`` (docs/keda.md).

The chain it wires up::

    HPA controller -> kube-apiserver (aggregation layer, front-proxy client cert)
      -> APIService v1beta1.external.metrics.k8s.io -> Service keda/keda-metrics-apiserver
         (type ExternalName 127.0.0.1: the local cluster has no Service network)
      -> keda-adapter (127.0.0.1:<port>, serving cert signed by the local KEDA CA)
      -> gRPC with mutual TLS -> keda operator -> scalers (e.g. the local Prometheus)

KEDA's own certificate rotation (which writes a Secret and patches the APIService) is
off; the certificates are made here with openssl, like the rest of the cluster's.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recserve_dev.localcluster.tools import ToolsMissing, repo_root

if TYPE_CHECKING:
    from recserve_dev.localcluster.cluster import LocalCluster

KEDA_VERSION = "v2.21.0"
KEDA_NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
APISERVICE_NAME = "v1beta1.external.metrics.k8s.io"
FRONT_PROXY_CLIENT = "front-proxy-client"
KEDA_TOOL_KEYS = {
    "operator": "RECSERVE_KEDA_OPERATOR",
    "adapter": "RECSERVE_KEDA_ADAPTER",
    "crds": "RECSERVE_KEDA_CRDS",
}
BUILD_HINT = "build them with `hack/tools.sh --with-keda` (or `RECSERVE_TOOLS_KEDA=1 make tools`)"


@dataclass(frozen=True)
class KedaTools:
    """The KEDA operator and metrics adapter binaries, and the folder of KEDA's CRDs."""

    operator: Path
    adapter: Path
    crds: Path


def find_keda_tools(build: bool = False) -> KedaTools:
    """Paths from ``hack/tools.sh --with-keda``; builds them when ``build`` (tens of minutes)."""
    script = repo_root() / "hack" / "tools.sh"
    args = ["bash", str(script), "--with-keda"] + ([] if build else ["--check"])
    result = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    missing = [key for key in KEDA_TOOL_KEYS.values() if key not in found]
    if missing:
        said = " ".join(line for line in result.stderr.splitlines() if "keda" in line.lower())
        raise ToolsMissing(
            f"KEDA {KEDA_VERSION} binaries missing ({', '.join(missing)}{'; ' if said else ''}"
            f"{said}); {BUILD_HINT}"
        )
    return KedaTools(**{attr: Path(found[key]) for attr, key in KEDA_TOOL_KEYS.items()})


# -- certificates ---------------------------------------------------------------------
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, stem: str, common_name: str) -> tuple[Path, Path]:
    """A self-signed CA ``<stem>.crt``/``<stem>.key`` in ``directory`` (kept if present)."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    if not (crt.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
            "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={common_name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        key.chmod(0o600)
    return crt, key


def make_cert(
    ca: tuple[Path, Path],
    crt: Path,
    key: Path,
    common_name: str,
    sans: list[str] | None = None,
    usages: str = "serverAuth,clientAuth",
) -> None:
    """A key and a certificate signed by ``ca`` with the given SANs and extended usages."""
    crt.parent.mkdir(parents=True, exist_ok=True)
    csr, ext = crt.with_suffix(".csr"), crt.with_suffix(".ext")
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usages}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={common_name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-sha256", "-days", "3650", "-in", str(csr), "-CA", str(ca[0]),
        "-CAkey", str(ca[1]), "-set_serial", f"0x{secrets.token_hex(8)}", "-out", str(crt),
        "-extfile", str(ext),
    )  # fmt: skip
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()


def aggregation_flags(certs: Path) -> list[str]:
    """kube-apiserver flags of the aggregation layer, with a front-proxy CA and client
    certificate made in ``certs``: the API server proxies external.metrics.k8s.io to
    KEDA's adapter as ``front-proxy-client`` and passes the caller in X-Remote-* headers,
    which the adapter trusts through the extension-apiserver-authentication ConfigMap."""
    ca = make_ca(certs, "front-proxy-ca", "recserve-front-proxy-ca")
    crt, key = certs / "front-proxy-client.crt", certs / "front-proxy-client.key"
    if not (crt.exists() and key.exists()):
        make_cert(ca, crt, key, FRONT_PROXY_CLIENT, usages="clientAuth")
    return [
        f"--requestheader-client-ca-file={ca[0]}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-uid-headers=X-Remote-Uid",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={crt}",
        f"--proxy-client-key-file={key}",
    ]


def keda_certs(root: Path) -> Path:
    """``ca.crt``, ``tls.crt``, ``tls.key`` as KEDA expects them in its --cert-dir: one
    certificate for both ends of the adapter-operator gRPC link (mutual TLS) and for the
    adapter's HTTPS endpoint that the API server proxies to."""
    directory = root / "keda" / "certs"
    ca = make_ca(directory, "ca", "recserve-local-keda-ca")
    crt, key = directory / "tls.crt", directory / "tls.key"
    if not (crt.exists() and key.exists()):
        sans = [
            "DNS:localhost",
            "IP:127.0.0.1",
            f"DNS:{METRICS_SERVICE}.{KEDA_NAMESPACE}.svc",
            f"DNS:{METRICS_SERVICE}.{KEDA_NAMESPACE}.svc.cluster.local",
            f"DNS:keda-operator.{KEDA_NAMESPACE}.svc",
            f"DNS:keda-operator.{KEDA_NAMESPACE}.svc.cluster.local",
        ]
        make_cert(ca, crt, key, "keda", sans)
    return directory


# -- objects ----------------------------------------------------------------------------
def registration(ca_crt: Path, adapter_port: int) -> list[dict[str, Any]]:
    """KEDA's namespace, the metrics Service and the external metrics APIService.

    The Service is of type ExternalName 127.0.0.1: the aggregator resolves such a
    Service to ``<externalName>:<APIService port>`` and dials it directly, where a
    ClusterIP would need kube-proxy and Endpoints may not hold loopback addresses. The
    API server checks the adapter's certificate against ``caBundle`` for the name
    ``keda-metrics-apiserver.keda.svc``.
    """
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE_NAME, "labels": {"app.kubernetes.io/part-of": "keda"}},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {
                    "name": METRICS_SERVICE,
                    "namespace": KEDA_NAMESPACE,
                    "port": adapter_port,
                },
                "caBundle": base64.b64encode(ca_crt.read_bytes()).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


# -- processes --------------------------------------------------------------------------
def start_keda(cluster: LocalCluster, tools: KedaTools, timeout: float) -> None:
    """Apply KEDA's CRDs, start its operator and adapter, wait until the external
    metrics API is Available through the aggregation layer."""
    from recserve_dev.localcluster.cluster import free_port, wait_for

    assert cluster.state is not None
    certs = keda_certs(cluster.root)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tools.crds))

    def established() -> bool:
        crds = json.loads(cluster.kubectl("get", "crd", "-o", "json"))["items"]
        keda_crds = [c for c in crds if c["spec"]["group"].endswith("keda.sh")]
        return len(keda_crds) == len(list(tools.crds.glob("*.yaml"))) and all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in crd.get("status", {}).get("conditions", [])
            )
            for crd in keda_crds
        )

    wait_for(established, 60, "KEDA's CRDs Established", interval=0.5)
    grpc_port, adapter_port = free_port(), free_port()
    cluster.kubectl_apply(registration(certs / "ca.crt", adapter_port))
    env = {
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "WATCH_NAMESPACE": "",  # all namespaces
        "POD_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
    }
    cluster._spawn(
        "keda-operator",
        [
            str(tools.operator),
            "--leader-elect=false",
            "--enable-cert-rotation=false",
            f"--cert-dir={certs}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        env,
    )
    cluster._spawn(
        "keda-adapter",
        [
            str(tools.adapter),
            f"--secure-port={adapter_port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            # Clients by certificate: KEDA's CA (as KEDA's own manifests do); without it
            # the adapter looks for the API server's client CA, which this cluster lacks.
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--lister-kubeconfig={cluster.admin_kubeconfig}",
            f"--authentication-kubeconfig={cluster.admin_kubeconfig}",
            f"--authorization-kubeconfig={cluster.admin_kubeconfig}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}",
            f"--port={free_port()}",  # its /metrics (plain HTTP, all interfaces)
            "--zap-log-level=info",
            "--zap-encoder=console",
        ],
        env,
    )

    def available() -> bool:
        cluster._check_alive("keda-operator")
        cluster._check_alive("keda-adapter")
        status = json.loads(cluster.kubectl("get", "apiservice", APISERVICE_NAME, "-o", "json"))
        conditions = status.get("status", {}).get("conditions", [])
        if not any(c["type"] == "Available" and c["status"] == "True" for c in conditions):
            raise RuntimeError(f"APIService not available: {conditions}")
        return cluster._kubectl_ok("get", "--raw=/apis/external.metrics.k8s.io/v1beta1")

    wait_for(available, timeout, f"KEDA's {APISERVICE_NAME}", interval=0.5)
