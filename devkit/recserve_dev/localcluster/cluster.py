"""Start and stop the local control plane: etcd, API server, controllers, nodes, Prometheus.

Everything binds to 127.0.0.1 on free ports and lives in one state folder (certs,
keys, kubeconfigs, logs, etcd data, ``state.json``), so several clusters can run side
by side (a developer's `make cluster-up` and a pytest session) and any process can
stop a cluster it did not start (`make cluster-down`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recserve_dev.localcluster import keda as keda_support
from recserve_dev.localcluster.nodes import agent_nodes, simulated_nodes
from recserve_dev.localcluster.prometheus import SCRAPE_INTERVAL_SECONDS, prometheus_config
from recserve_dev.localcluster.tools import Tools, find_tools, run_kubectl

MARKER_NAMESPACE = "kube-system"
MARKER_NAME = "recserve-local-cluster"
SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_SIMULATED = {"gpu": 2, "fpga": 1, "cpu": 2}


class ClusterError(RuntimeError):
    """The local cluster failed to start or is not the one we expect."""


class ComponentDied(ClusterError):
    """A component process exited while we waited for it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it returns True; ClusterError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ComponentDied:
            raise  # waiting longer will not help
        except Exception as exc:  # the thing is still coming up
            last_error = exc
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error})")


@dataclass
class ClusterState:
    """What `state.json` records about a running cluster."""

    root: str
    cluster_id: str
    api_port: int
    etcd_port: int
    prometheus_port: int | None
    admin_token: str
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    ready_seconds: float = 0.0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def prometheus_url(self) -> str | None:
        return f"http://127.0.0.1:{self.prometheus_port}" if self.prometheus_port else None


def write_kubeconfig(
    path: Path, server: str, token: str, ca_file: Path | None, user: str, namespace: str = "default"
) -> Path:
    """A kubeconfig with one cluster, one token user and one context named recserve-local."""
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    else:
        cluster["insecure-skip-tls-verify"] = True
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "recserve-local", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "recserve-local",
                "context": {"cluster": "recserve-local", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "recserve-local",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class LocalCluster:
    """One local control plane rooted in a state folder."""

    def __init__(
        self,
        root: Path,
        tools: Tools | None = None,
        *,
        simulated: dict[str, int] | None = None,
        agent: bool = True,
        prometheus: bool = True,
        keda: bool | None = None,
        scrape_seconds: int | None = None,
    ) -> None:
        self.root = root.resolve()
        # how often Prometheus scrapes the pods (tell the operator the same)
        self.scrape_seconds = scrape_seconds or SCRAPE_INTERVAL_SECONDS
        self.tools = tools or find_tools()
        self.simulated = DEFAULT_SIMULATED if simulated is None else simulated
        self.with_agent = agent
        self.with_prometheus = prometheus
        # KEDA (keda.py) is opt-in: keda=True, or RECSERVE_CLUSTER_KEDA=1 when not given.
        self.with_keda = os.environ.get("RECSERVE_CLUSTER_KEDA") == "1" if keda is None else keda
        self.keda_tools = keda_support.find_keda_tools() if self.with_keda else None
        self.state: ClusterState | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths ---------------------------------------------------------------------
    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.root / "certs" / "apiserver.crt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # -- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ClusterState:
        """Start every component and wait until the cluster schedules pods."""
        started = time.monotonic()
        shutil.rmtree(self.root / "etcd", ignore_errors=True)  # every start is a fresh cluster
        shutil.rmtree(self.root / "prometheus", ignore_errors=True)
        for sub in ("certs", "logs", "etcd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.state = ClusterState(
            root=str(self.root),
            cluster_id=str(uuid.uuid4()),
            api_port=free_port(),
            etcd_port=free_port(),
            prometheus_port=free_port() if self.with_prometheus else None,
            admin_token=secrets.token_hex(24),
            started_at=time.time(),
        )
        try:
            self._write_keys()
            self._start_etcd()
            self._start_apiserver(timeout)
            self._start_controllers()
            self._register(timeout)
            if self.with_agent:
                self._start_agent()
            if self.with_prometheus:
                self._start_prometheus(timeout)
            self._wait_schedulable(timeout)
            if self.keda_tools:
                self._start_keda(timeout)
        except BaseException:
            self.stop()
            raise
        self.state.ready_seconds = round(time.monotonic() - started, 2)
        self._save_state()
        return self.state

    def stop(self) -> None:
        """Stop every component (reverse start order), SIGKILL after 10 s."""
        pids = dict(self.state.pids) if self.state else {}
        for name, pid in reversed(list(pids.items())):
            _terminate(pid, name, str(self.root))
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        self._procs.clear()
        kill_pod_processes(self.root / "pods")
        state_file = self.root / "state.json"
        if state_file.exists():
            state_file.unlink()

    @classmethod
    def attach(cls, root: Path) -> LocalCluster:
        """The cluster whose state folder is ``root`` (started by another process)."""
        state_file = root / "state.json"
        if not state_file.exists():
            raise ClusterError(f"no local cluster is running in {root} (no state.json)")
        cluster = cls.__new__(cls)
        cluster.root = root.resolve()
        cluster.state = ClusterState(**json.loads(state_file.read_text()))
        cluster._procs = {}
        return cluster

    # -- components ----------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        assert self.state is not None
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.root,
        )
        log.close()
        self._procs[name] = proc
        self.state.pids[name] = proc.pid
        self._save_state()

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise ComponentDied(f"{name} exited with {proc.returncode}:\n{tail}")

    def _write_keys(self) -> None:
        assert self.state is not None
        key, pub = self.root / "certs" / "sa.key", self.root / "certs" / "sa.pub"
        if not key.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                check=True,
                capture_output=True,
            )
        tokens = self.root / "certs" / "tokens.csv"
        tokens.write_text(f'{self.state.admin_token},admin,admin-uid,"system:masters"\n')
        tokens.chmod(0o600)

    def power(self, node: str, on: bool) -> None:
        """Power one of the agent's nodes off (no heartbeat, its pods' processes killed,
        their objects left as they were) or back on (reliability tests)."""
        from recserve_dev.localcluster.agent import POWERED_OFF

        path = self.root / "pods" / POWERED_OFF
        off = set(path.read_text().split()) if path.exists() else set()
        off = off - {node} if on else off | {node}
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}\n" for n in sorted(off)))
        tmp.replace(path)

    def restart_etcd(self, down_s: float = 5.0) -> None:
        """Stop etcd (SIGTERM, as a rolling update or a node reboot would), leave it down
        ``down_s`` seconds, and start it again on its ports and data (reliability tests)."""
        assert self.state is not None
        proc = self._procs.get("etcd")
        _terminate(self.state.pids["etcd"], "etcd", str(self.root))
        if proc is not None:
            proc.wait(15)
        time.sleep(down_s)
        self._start_etcd()

    def _start_etcd(self) -> None:
        assert self.state is not None
        # the same peer port on a restart: the member's data names it
        peer = self._etcd_peer = getattr(self, "_etcd_peer", None) or free_port()
        url = f"http://127.0.0.1:{self.state.etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.tools.etcd),
                "--name=default",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",  # test cluster: durability is not needed, speed is
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            self._check_alive("etcd")
            import urllib.request

            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return b'"health":"true"' in resp.read()

        wait_for(healthy, 30, "etcd")

    def _start_apiserver(self, timeout: float) -> None:
        assert self.state is not None
        certs = self.root / "certs"
        self._spawn(
            "kube-apiserver",
            [
                str(self.tools.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.state.etcd_port}",
                f"--cert-dir={certs}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.state.api_port}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={certs / 'tokens.csv'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--v=1",
                *self._keda_apiserver_flags(certs),
            ],
        )
        # The API server writes its self-signed serving cert on start; until it exists,
        # talk to it without verification only to learn when it is up.
        write_kubeconfig(
            self.admin_kubeconfig, self.state.server, self.state.admin_token, None, "admin"
        )

        def ready() -> bool:
            self._check_alive("kube-apiserver")
            return self._kubectl_ok("get", "--raw=/readyz")

        wait_for(ready, timeout, "kube-apiserver /readyz")
        write_kubeconfig(
            self.admin_kubeconfig, self.state.server, self.state.admin_token, self.ca_file, "admin"
        )
        if not self._kubectl_ok("get", "--raw=/readyz"):  # cert not usable as CA
            write_kubeconfig(
                self.admin_kubeconfig, self.state.server, self.state.admin_token, None, "admin"
            )

    def _start_controllers(self) -> None:
        certs = self.root / "certs"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.tools.kube_controller_manager),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--authentication-kubeconfig={self.admin_kubeconfig}",
                f"--authorization-kubeconfig={self.admin_kubeconfig}",
                f"--service-account-private-key-file={certs / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cluster-name=recserve-local-{self.state.cluster_id[:8] if self.state else ''}",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route",
                "--node-monitor-grace-period=40s",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.tools.kube_scheduler),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--authentication-kubeconfig={self.admin_kubeconfig}",
                f"--authorization-kubeconfig={self.admin_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _register(self, timeout: float) -> None:
        """Mark the cluster as ours and create the simulated and agent nodes."""
        assert self.state is not None
        marker = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": MARKER_NAME, "namespace": MARKER_NAMESPACE},
            "data": {"clusterID": self.state.cluster_id, "root": str(self.root)},
        }
        nodes = simulated_nodes(self.simulated) + (agent_nodes() if self.with_agent else [])
        self.kubectl_apply([marker, *nodes])
        if self.simulated:
            self._spawn(
                "kwok",
                [
                    str(self.tools.kwok),
                    f"--kubeconfig={self.admin_kubeconfig}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    "--cidr=10.244.0.1/16",
                    "--node-ip=10.1.0.1",
                ],
            )

    def _start_agent(self) -> None:
        self._spawn(
            "node-agent",
            [
                sys.executable,
                "-m",
                "recserve_dev.localcluster.agent",
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--state-dir={self.root / 'pods'}",
                *[f"--node={n['metadata']['name']}" for n in agent_nodes()],
            ],
        )

    def _start_prometheus(self, timeout: float) -> None:
        assert self.state is not None
        config = self.root / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(prometheus_config(self.admin_kubeconfig, self.scrape_seconds))
        )
        (self.root / "prometheus").mkdir(exist_ok=True)
        self._spawn(
            "prometheus",
            [
                str(self.tools.prometheus),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{self.state.prometheus_port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
        )

        def ready() -> bool:
            self._check_alive("prometheus")
            import urllib.request

            url = f"{self.state.prometheus_url if self.state else ''}/-/ready"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)

        wait_for(ready, timeout, "prometheus /-/ready")

    # -- KEDA (opt-in, see keda.py) -----------------------------------------------
    def _keda_apiserver_flags(self, certs: Path) -> list[str]:
        """The aggregation layer KEDA's external metrics API needs; none without KEDA."""
        return keda_support.aggregation_flags(certs) if self.keda_tools else []

    def _start_keda(self, timeout: float) -> None:
        assert self.keda_tools is not None
        keda_support.start_keda(self, self.keda_tools, timeout)

    def _wait_schedulable(self, timeout: float) -> None:
        """Ready nodes and the default ServiceAccount (pods are refused without it)."""

        def ready() -> bool:
            for name in ("kube-controller-manager", "kube-scheduler"):
                self._check_alive(name)
            out = self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "name")
            if "serviceaccount/default" not in out:
                return False
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
            ready_nodes = [
                n
                for n in nodes
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            ]
            return len(ready_nodes) == len(nodes)

        wait_for(ready, timeout, "ready nodes and the default ServiceAccount", interval=0.5)

    # -- helpers -------------------------------------------------------------------
    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        """Run kubectl as admin against this cluster; raises ClusterError on failure."""
        try:
            return run_kubectl(self.tools, self.admin_kubeconfig, args, input_text)
        except RuntimeError as exc:
            raise ClusterError(str(exc)) from None

    def _kubectl_ok(self, *args: str) -> bool:
        try:
            self.kubectl("--request-timeout=3s", *args)
        except (ClusterError, subprocess.TimeoutExpired):
            return False
        return True

    def kubectl_apply(self, docs: list[dict[str, Any]]) -> str:
        """Server-side apply of documents as admin."""
        return self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input_text=yaml.safe_dump_all(docs),
        )

    def _save_state(self) -> None:
        if self.state is not None:
            (self.root / "state.json").write_text(json.dumps(asdict(self.state), indent=2))


def _terminate(pid: int, name: str, root: str) -> None:
    """SIGTERM a component we started (checked by its command line), SIGKILL after 10 s."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return  # already gone
    if root not in cmdline and name not in cmdline:
        return  # the pid was reused by something else
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def kill_pod_processes(state_dir: Path) -> int:
    """SIGKILL processes the agent started for pods under ``state_dir`` (stragglers left
    when the agent was killed before it could stop them); returns how many."""
    from recserve_dev.localcluster.agent import POD_MARKER

    marker = f"{POD_MARKER}={state_dir}".encode()
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    return killed


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
