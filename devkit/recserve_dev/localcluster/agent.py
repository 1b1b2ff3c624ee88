"""A small node agent: runs pods bound to its nodes as real local processes.

It is a kubelet for machines without a container engine, enough for end-to-end tests
and the demo: a Deployment created through the API really serves and a Job really runs.

What it does, per pod scheduled onto one of its nodes:

- gives the pod its own loopback address (127.B.x.y, B drawn per agent) and writes it
  as ``status.podIP``;
- runs each container's ``command`` + ``args`` (the image is ignored: programs come from
  this machine's PATH) with the pod's ``env`` (values, downward-API ``fieldRef``s and
  ConfigMap/Secret keys), in a per-pod working folder;
- maps ``emptyDir``, ``hostPath`` and ``configMap`` volumes onto local folders by
  rewriting the mount path in args, env values and workingDir (no mount namespaces here);
  a ``subPath`` mount maps to that path inside the volume's folder;
- projects ``configMap`` volumes as kubelet does: one file per key (or per ``items``
  entry, key -> path), with ``defaultMode``/``mode``; a missing ConfigMap gives an empty
  folder when ``optional``, else the pod's containers wait (status ``ContainerCreating``
  with the kubelet's ``MountVolume.SetUp failed ...`` message, plus a ``FailedMount``
  Event) and the agent retries until it exists. While the pod runs, changed keys are
  rewritten atomically (a temporary file in the same folder, then ``os.replace``), so a
  reader sees the old or the new whole file, never a mix; unchanged files are left alone
  (their mtime does not move); keys that disappear are removed; a non-optional ConfigMap
  deleted under a running pod leaves its files as they were. ConfigMaps are read through
  one shared cache: at most one LIST per namespace (in use by this node's pods) every
  ``CONFIGMAP_REFRESH_SECONDS`` (2 s), whatever the number of pods, so an update reaches
  the files within about 2 s. A real kubelet is slower: it resyncs each pod's volumes
  about once a minute (``--sync-frequency``) on top of its watch or TTL cache, so updates
  take up to a minute or two there; code that reads a mounted ConfigMap must not rely on
  the agent's quicker delivery. Unlike kubelet, ``subPath`` mounts of a ConfigMap see
  updates too (kubelet never updates them);
- runs init containers first, in order, each to completion;
- probes readiness and liveness (httpGet, tcpSocket, exec) and writes the pod's
  conditions; restarts containers per ``restartPolicy`` with back-off; Job pods end
  Succeeded/Failed with the process's exit code;
- on deletion: SIGTERM, SIGKILL after the grace period, then removes the pod object;
- keeps its Node objects Ready (status heartbeat and Lease), like a kubelet;
- powers a node off and on (reliability tests): node names listed in
  ``<state-dir>/powered-off`` get no heartbeat, their pods' processes are killed at once
  and their objects are left as they were (no status write, no removal), as when a
  machine loses power; the node controller marks the node NotReady after its grace
  period. Listed no more, the node heartbeats again and its pods start anew.

Container output goes to ``<state-dir>/<namespace>_<pod>/<container>.log``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("recserve.node-agent")
POLL_SECONDS = 1.0
POD_MARKER = "RECSERVE_LOCAL_POD_STATE"
HEARTBEAT_SECONDS = 10
POWERED_OFF = "powered-off"  # in the state dir: names of nodes powered off, one per line
LEASE_SECONDS = 40
# How stale a ConfigMap read for a volume may be: one LIST per namespace per period.
CONFIGMAP_REFRESH_SECONDS = 2.0


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


IP_BLOCKS_ENV = "RECSERVE_POD_IP_BLOCKS"
FIRST_BLOCK, LAST_BLOCK = 2, 254  # 127.0.x.x and 127.1.x.x are left to the host


def ip_block_range(text: str) -> tuple[int, int]:
    """``"LO-HI"`` (within 2..254) as a range of address blocks; empty: all of them."""
    if not text:
        return FIRST_BLOCK, LAST_BLOCK
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"{IP_BLOCKS_ENV}={text!r}: expected LO-HI, e.g. 2-127") from None
    if not FIRST_BLOCK <= low <= high <= LAST_BLOCK:
        raise ValueError(f"{IP_BLOCKS_ENV}={text!r}: LO-HI must lie within 2-254")
    return low, high


def ip_block_share(index: int, count: int) -> str:
    """The ``index``-th of ``count`` disjoint ranges of blocks, as ``"LO-HI"``."""
    span = (LAST_BLOCK - FIRST_BLOCK + 1) // count
    low = FIRST_BLOCK + index * span
    return f"{low}-{low + span - 1}"


class IpAllocator:
    """Distinct loopback addresses for pods: 127.B.0.1, 127.B.0.2, ... where B is drawn
    per agent (2..254), so that two local clusters on one machine (tests and a benchmark
    side by side) rarely give two pods the same address and port. Clusters that must
    never meet (parallel test workers) draw from disjoint ranges of B, given as
    ``RECSERVE_POD_IP_BLOCKS=LO-HI``."""

    def __init__(self, block: int | None = None) -> None:
        low, high = ip_block_range(os.environ.get(IP_BLOCKS_ENV, ""))
        self.block = block if block is not None else random.SystemRandom().randint(low, high)
        self._next = 1
        self._free: list[int] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[str, int]:
        with self._lock:
            n = self._free.pop() if self._free else self._next
            if n == self._next:
                self._next += 1
        return f"127.{self.block}.{n // 250}.{n % 250 + 1}", n

    def give_back(self, n: int) -> None:
        with self._lock:
            self._free.append(n)


@dataclass
class Probe:
    """A readiness or liveness probe with its counters."""

    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    def record(self, passed: bool) -> bool | None:
        """Count one result and give the verdict as a kubelet does: False after
        failureThreshold failures in a row, True after successThreshold successes in a
        row, None (no change) in between, so one slow answer under load neither restarts
        a container nor marks it unready."""
        if passed:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        if self.failures >= int(self.spec.get("failureThreshold") or 3):
            return False
        if self.successes >= int(self.spec.get("successThreshold") or 1):
            return True
        return None


@dataclass
class Container:
    """One running container (a process) and what the agent knows about it."""

    name: str
    spec: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restarts: int = 0
    last_exit: int | None = None
    finished_at: str | None = None
    message: str | None = None  # termination message of the last run
    ready: bool = False
    readiness: Probe | None = None
    liveness: Probe | None = None
    restart_after: float = 0.0


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args: $$ escapes, unknown refs stay as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def rewrite_mount_paths(text: str, mounts: dict[str, str]) -> str:
    """Replace volume mount paths in ``text`` by their local folders, in one pass.

    Only whole path prefixes match (``/tmp`` matches ``/tmp/x`` but not ``/tmpfs``), the
    longest mount wins, and replaced text is never rewritten again (a hostPath mounted at
    its own path under another mount stays as it is).
    """
    if not mounts:
        return text
    paths = sorted(mounts, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![\w./-])(" + "|".join(re.escape(p) for p in paths) + r")(?=/|$|[^\w.-])"
    )
    return pattern.sub(lambda m: mounts[m.group(1)], text)


class VolumeNotReady(Exception):
    """A volume cannot be set up yet (its ConfigMap or a key is missing): retry later."""


class ConfigMapStore:
    """The ConfigMaps that pods' volumes use, shared by all pods of the agent.

    ``get`` answers from a per-namespace snapshot refreshed by one LIST when older than
    ``refresh`` seconds, so hundreds of pods cost one request per namespace per period;
    only namespaces that pods ask about are listed.
    """

    def __init__(
        self,
        api: client.CoreV1Api,
        refresh: float = CONFIGMAP_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Snapshot] = {}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap as a plain dict, None when it does not exist.

        Raises :class:`VolumeNotReady` when the latest LIST failed.
        """
        with self._lock:
            snap = self._namespaces.setdefault(namespace, _Snapshot())
            snap.used_at = self._clock()
            for other in [n for n, s in self._namespaces.items() if self._idle(s)]:
                del self._namespaces[other]  # no pod asked for a while
        with snap.lock:
            if snap.fetched_at is None or self._clock() - snap.fetched_at >= self._refresh:
                self._list(namespace, snap)
            if snap.error is not None:
                raise VolumeNotReady(snap.error)
            return snap.items.get(name)

    def _idle(self, snap: _Snapshot) -> bool:
        return self._clock() - snap.used_at > 30 * self._refresh

    def _list(self, namespace: str, snap: _Snapshot) -> None:
        try:
            resp = self._api.list_namespaced_config_map(namespace, _preload_content=False)
            found = json.loads(resp.data)["items"]
        except Exception as exc:
            reason = exc.reason if isinstance(exc, ApiException) else exc
            snap.error = f"cannot list configmaps in {namespace}: {reason}"
            log.warning("%s", snap.error)
        else:
            snap.items = {cm["metadata"]["name"]: cm for cm in found}
            snap.error = None
        snap.fetched_at = self._clock()


@dataclass
class _Snapshot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None
    used_at: float = 0.0
    error: str | None = None


# relative path -> (content, file mode)
Payload = dict[str, tuple[bytes, int]]


def config_map_payload(source: dict[str, Any], cm: dict[str, Any] | None) -> Payload:
    """The files of a ``configMap`` volume, as kubelet lays them out.

    Raises :class:`VolumeNotReady` for a missing ConfigMap or ``items`` key that is not
    ``optional``; an optional missing ConfigMap gives no files.
    """
    optional = bool(source.get("optional"))
    if cm is None:
        if optional:
            return {}
        raise VolumeNotReady(f'configmap "{source["name"]}" not found')
    keys: dict[str, bytes] = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    for key, raw in (cm.get("binaryData") or {}).items():
        keys[key] = base64.b64decode(raw)
    mode = int(source.get("defaultMode", 0o644))
    items = source.get("items")
    if not items:
        return {key: (content, mode) for key, content in keys.items()}
    payload: Payload = {}
    for item in items:
        if item["key"] not in keys:
            if optional:
                continue
            raise VolumeNotReady(
                f'configmap "{source["name"]}" has no key "{item["key"]}"'
                " (configmap references non-existent config key)"
            )
        path = str(item["path"])
        if path.startswith("/") or ".." in Path(path).parts:
            raise ValueError(f"configMap volume item path {path!r} must be relative, without '..'")
        payload[path] = (keys[item["key"]], int(item.get("mode", mode)))
    return payload


def write_payload(folder: Path, payload: Payload, written: Payload) -> Payload:
    """Make ``folder`` hold ``payload``, given that it holds ``written`` (what the last
    call wrote); returns the new ``written``.

    Each changed file is replaced atomically (a temporary file in its own folder, then
    ``os.replace``): a reader sees the old or the new whole file. Unchanged files are not
    touched; files no longer in ``payload`` are removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in payload.items():
        target = folder / rel
        if written.get(rel) == (content, mode) and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="..", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                os.fchmod(out.fileno(), mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    for rel in written.keys() - payload.keys():
        with contextlib.suppress(FileNotFoundError):
            (folder / rel).unlink()
    return dict(payload)


def remove_pod(api: client.CoreV1Api, pod: dict[str, Any]) -> None:
    """Delete a pod object whose processes are gone (the kubelet's final delete)."""
    meta = pod["metadata"]
    try:
        api.delete_namespaced_pod(
            meta["name"],
            meta["namespace"],
            grace_period_seconds=0,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
            ),
        )
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
    log.info("pod removed pod=%s/%s", meta["namespace"], meta["name"])


def _resolve_port(port: Any, containers: list[dict[str, Any]]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for spec in containers:
        for p in spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
    raise ValueError(f"unknown named port {port!r}")


@dataclass
class PodWorker:
    """Lifecycle of one pod, run in its own thread."""

    api: client.CoreV1Api
    pod: dict[str, Any]
    ip: str
    ip_slot: int
    workdir: Path
    containers: list[Container] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    deleting: bool = False
    power_lost: bool = False  # its node was powered off: kill at once, write nothing
    config_maps: ConfigMapStore | None = None
    _kubeconfig: str | None = None
    phase: str = "Pending"
    message: str = ""
    # why the containers cannot be created yet (a configMap volume not ready)
    waiting_message: str = ""
    _last_status: dict[str, Any] | None = None
    # per configMap volume: the ConfigMap's resourceVersion last projected, and the files
    _projected_version: dict[str, str | None] = field(default_factory=dict)
    _projected: dict[str, Payload] = field(default_factory=dict)
    _volume_problems: dict[str, str] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    # -- environment -----------------------------------------------------------------
    def _volume_map(self) -> dict[str, str]:
        """mountPath -> local folder, for every emptyDir/hostPath/configMap volume mount."""
        local: dict[str, str] = {}
        for vol in self.pod["spec"].get("volumes", []):
            if "emptyDir" in vol or "configMap" in vol:
                path = self._volume_dir(vol["name"])
                path.mkdir(parents=True, exist_ok=True)
                local[vol["name"]] = str(path)
            elif "hostPath" in vol:
                local[vol["name"]] = vol["hostPath"]["path"]
        mounts: dict[str, str] = {}
        for spec in self.pod["spec"].get("containers", []) + self.pod["spec"].get(
            "initContainers", []
        ):
            for mount in spec.get("volumeMounts", []):
                if mount["name"] in local:
                    target = local[mount["name"]]
                    if mount.get("subPath"):
                        target = os.path.join(target, mount["subPath"])
                    mounts[mount["mountPath"].rstrip("/")] = target
        return mounts

    def _volume_dir(self, volume: str) -> Path:
        return self.workdir / "volumes" / volume

    def _sync_config_volumes(self) -> str | None:
        """Bring every configMap volume's files up to date with its ConfigMap.

        Returns the first reason a volume cannot be set up (kubelet's wording), None when
        all are in place. A volume that cannot be updated keeps its files.
        """
        if self.config_maps is None:
            self.config_maps = ConfigMapStore(self.api)
        first: str | None = None
        for vol in self.pod["spec"].get("volumes", []):
            source = vol.get("configMap")
            if source is None:
                continue
            name = vol["name"]
            try:
                cm = self.config_maps.get(self.ns, source["name"])
                version = cm["metadata"]["resourceVersion"] if cm else None
                if name in self._projected and self._projected_version.get(name) == version:
                    continue
                payload = config_map_payload(source, cm)
            except VolumeNotReady as exc:
                problem = f'MountVolume.SetUp failed for volume "{name}" : {exc}'
                if self._volume_problems.get(name) != problem:
                    self._volume_problems[name] = problem
                    log.warning("pod=%s/%s: %s", self.ns, self.name, problem)
                first = first or problem
                continue
            self._projected[name] = write_payload(
                self._volume_dir(name), payload, self._projected.get(name, {})
            )
            self._projected_version[name] = version
            self._volume_problems.pop(name, None)
        return first

    def _wait_for_volumes(self) -> bool:
        """Set up configMap volumes before any container starts, retrying while one is
        not ready (the pod stays ContainerCreating); False if stopped meanwhile."""
        while (problem := self._sync_config_volumes()) is not None:
            if problem != self.waiting_message:
                self.waiting_message = problem
                self._event("FailedMount", problem)
                self._write_status()
            if self.stop_event.wait(min(POLL_SECONDS, CONFIGMAP_REFRESH_SECONDS)):
                return False
        if self.waiting_message:
            self.waiting_message = ""
            self._write_status()
        return True

    def _event(self, reason: str, message: str) -> None:
        """A Warning Event about the pod, as the kubelet records one (best effort)."""
        meta = self.pod["metadata"]
        stamp = now()
        body = {
            "metadata": {"generateName": f"{self.name}.", "namespace": self.ns},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": self.ns,
                "name": self.name,
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.create_namespaced_event(self.ns, body)
        except ApiException as exc:
            log.warning("event not recorded pod=%s/%s: %s", self.ns, self.name, exc.reason)

    def _rewrite(self, text: str, mounts: dict[str, str]) -> str:
        return rewrite_mount_paths(text, mounts)

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": self.pod["spec"].get("nodeName"),
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName"),
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path] or "")
        for prefix, source in (
            ("metadata.labels", "labels"),
            ("metadata.annotations", "annotations"),
        ):
            if path.startswith(prefix + "['"):
                return str(meta.get(source, {}).get(path[len(prefix) + 2 : -2], ""))
        raise ValueError(f"unsupported fieldRef {path}")

    def _service_account_kubeconfig(self) -> str | None:
        """The pod's identity: a kubeconfig with a pod-bound ServiceAccount token.

        A kubelet projects the token into /var/run/secrets/...; without mount namespaces
        the agent hands it over as KUBECONFIG instead, which the Kubernetes clients read
        when in-cluster config is absent.
        """
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        account = spec.get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=24 * 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=self.name, uid=self.pod["metadata"]["uid"]
                ),
            )
        )
        answer = self.api.create_namespaced_service_account_token(account, self.ns, request)
        conf = self.api.api_client.configuration
        cluster: dict[str, Any] = {"server": conf.host}
        if conf.ssl_ca_cert:
            cluster["certificate-authority"] = conf.ssl_ca_cert
        else:
            cluster["insecure-skip-tls-verify"] = True
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": answer.status.token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {"cluster": "local", "user": account, "namespace": self.ns},
                }
            ],
            "current-context": "pod",
        }
        path = self.workdir / "serviceaccount.kubeconfig"
        path.write_text(json.dumps(kubeconfig))
        path.chmod(0o600)
        return str(path)

    def _env(self, spec: dict[str, Any], mounts: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        # Programs come from this machine: the agent's own environment (a venv that is not
        # activated, say) provides `recserve` and friends, ahead of anything else on PATH.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", os.defpath)])
        env.update({"POD_IP": self.ip, "HOSTNAME": self.name, "POD_NAMESPACE": self.ns})
        # Lets `cluster down` find pod processes even if the agent itself was killed.
        env[POD_MARKER] = str(self.workdir.parent)
        if self._kubeconfig:
            env["KUBECONFIG"] = self._kubeconfig
        for item in spec.get("env", []):
            name = item["name"]
            if "value" in item:
                value = str(item["value"])
            elif "valueFrom" in item:
                value = self._value_from(item["valueFrom"])
            else:
                value = ""
            env[name] = self._rewrite(value, mounts)
        return env

    def _value_from(self, source: dict[str, Any]) -> str:
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = self.api.read_namespaced_config_map(ref["name"], self.ns)
            return str((cm.data or {}).get(ref["key"], ""))
        if "secretKeyRef" in source:
            import base64

            ref = source["secretKeyRef"]
            secret = self.api.read_namespaced_secret(ref["name"], self.ns)
            raw = (secret.data or {}).get(ref["key"], "")
            return base64.b64decode(raw).decode() if raw else ""
        return ""

    def _spawn(self, container: Container) -> None:
        mounts = self._volume_map()
        spec = container.spec
        env = self._env(spec, mounts)
        declared = {item["name"]: env[item["name"]] for item in spec.get("env", [])}
        argv = [
            expand_references(self._rewrite(str(a), mounts), declared)
            for a in spec.get("command", []) + spec.get("args", [])
        ]
        if not argv:
            raise ValueError(f"container {container.name} has no command: the agent runs no images")
        cwd = self._rewrite(spec.get("workingDir", ""), mounts) or str(self.workdir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        logfile = (self.workdir / f"{container.name}.log").open("ab")
        container.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logfile.close()
        container.started_at = now()
        container.ready = False
        if spec.get("readinessProbe"):
            container.readiness = Probe(spec["readinessProbe"])
            container.readiness.next_at = time.monotonic() + float(
                spec["readinessProbe"].get("initialDelaySeconds") or 0
            )
        if spec.get("livenessProbe"):
            container.liveness = Probe(spec["livenessProbe"])
            container.liveness.next_at = time.monotonic() + float(
                spec["livenessProbe"].get("initialDelaySeconds") or 0
            )
        log.info(
            "started container pod=%s/%s container=%s pid=%s ip=%s",
            self.ns,
            self.name,
            container.name,
            container.process.pid,
            self.ip,
        )

    # -- probes ------------------------------------------------------------------------
    def _probe_once(self, probe: Probe) -> bool:
        spec = probe.spec
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                port = _resolve_port(get["port"], self.pod["spec"]["containers"])
                host = get.get("host") or self.ip
                url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=probe.timeout) as resp:
                    return bool(200 <= resp.status < 400)
            if "tcpSocket" in spec:
                port = _resolve_port(spec["tcpSocket"]["port"], self.pod["spec"]["containers"])
                with socket.create_connection((self.ip, port), timeout=probe.timeout):
                    return True
            if "exec" in spec:
                done = subprocess.run(spec["exec"]["command"], timeout=probe.timeout, check=False)
                return done.returncode == 0
        except Exception:
            return False
        return True

    def _run_probe(self, probe: Probe) -> bool | None:
        """None when not due; otherwise the probe's verdict (see :meth:`Probe.record`)."""
        if time.monotonic() < probe.next_at:
            return None
        probe.next_at = time.monotonic() + probe.period
        return probe.record(self._probe_once(probe))

    # -- lifecycle -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._kubeconfig = self._service_account_kubeconfig()
            if not self._wait_for_volumes():
                return
            if not self._run_init_containers():
                self._write_status()
                self._wait_for_stop()
                return
            self.containers = [Container(c["name"], c) for c in self.pod["spec"]["containers"]]
            for container in self.containers:
                self._spawn(container)
            self.phase = "Running"
            self._write_status()
            while not self.stop_event.is_set():
                self._tick()
                self._sync_config_volumes()
                self._write_status()
                if self.phase in ("Succeeded", "Failed"):
                    self._wait_for_stop()
                    break
                self.stop_event.wait(0.2)
        except Exception as exc:
            log.exception("pod failed pod=%s/%s", self.ns, self.name)
            self.phase, self.message = "Failed", f"node agent: {exc}"
            with contextlib.suppress(Exception):
                self._write_status()
        finally:
            self._terminate_all()
            if self.deleting and not self.power_lost:
                self._remove_object()

    def _wait_for_stop(self) -> None:
        while not self.stop_event.is_set():
            self.stop_event.wait(0.5)

    def _run_init_containers(self) -> bool:
        for spec in self.pod["spec"].get("initContainers", []):
            init = Container(spec["name"], spec)
            self._spawn(init)
            assert init.process is not None
            while init.process.poll() is None:
                if self.stop_event.wait(0.2):
                    self._kill(init, 0)
                    return False
            if init.process.returncode != 0:
                self.phase = "Failed"
                self.message = f"init container {init.name} exited {init.process.returncode}"
                return False
        return True

    def _tick(self) -> None:
        exited_ok = 0
        for c in self.containers:
            proc = c.process
            if proc is not None and proc.poll() is not None:
                # as kubelet reports it: a signal is 128 + its number (SIGKILL: 137)
                code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                c.last_exit, c.finished_at, c.ready = code, now(), False
                c.message = self._termination_message(c)
                c.process = None
                log.info(
                    "container exited pod=%s/%s container=%s code=%s",
                    self.ns,
                    self.name,
                    c.name,
                    c.last_exit,
                )
                restart = self.restart_policy == "Always" or (
                    self.restart_policy == "OnFailure" and c.last_exit != 0
                )
                if restart:
                    c.restart_after = time.monotonic() + min(2 ** min(c.restarts, 6), 60)
            if c.process is None:
                if c.last_exit == 0 and self.restart_policy != "Always":
                    exited_ok += 1
                elif c.restart_after and time.monotonic() >= c.restart_after:
                    c.restarts += 1
                    c.restart_after = 0.0
                    self._spawn(c)
                continue
            if c.liveness is not None and self._run_probe(c.liveness) is False:
                log.info(
                    "liveness failed, restarting pod=%s/%s container=%s", self.ns, self.name, c.name
                )
                self._kill(c, 5)
                continue
            if c.readiness is None:
                c.ready = True
            else:
                verdict = self._run_probe(c.readiness)
                if verdict is not None:
                    c.ready = verdict
        if self.restart_policy != "Always":
            stopped = [c for c in self.containers if c.process is None and not c.restart_after]
            if len(stopped) == len(self.containers):
                self.phase = "Succeeded" if exited_ok == len(self.containers) else "Failed"

    def _kill(self, c: Container, grace: float) -> None:
        proc = c.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def _termination_message(self, c: Container) -> str | None:
        """``FallbackToLogsOnError``, as kubelet does it: a failed container's message is
        the end of its log (the last 80 lines, at most 2048 bytes)."""
        if c.last_exit == 0 or c.spec.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return None
        try:
            with (self.workdir / f"{c.name}.log").open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 2048))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        return "\n".join(tail.splitlines()[-80:]) or None

    def _terminate_all(self) -> None:
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds") or 30)
        if not self.deleting:  # the agent itself is stopping: be quick, like a node drain
            grace = min(grace, 5.0)
        if self.power_lost:
            grace = 0.0
        for c in self.containers:
            self._kill(c, grace)

    def _remove_object(self) -> None:
        remove_pod(self.api, self.pod)

    # -- status --------------------------------------------------------------------------
    def _container_status(self, c: Container) -> dict[str, Any]:
        state: dict[str, Any]
        if c.process is not None:
            state = {"running": {"startedAt": c.started_at}}
        elif c.last_exit is not None:
            state = {
                "terminated": {
                    "exitCode": c.last_exit,
                    "reason": "Completed" if c.last_exit == 0 else "Error",
                    "startedAt": c.started_at,
                    "finishedAt": c.finished_at,
                    **({"message": c.message} if c.message else {}),
                }
            }
            if c.restart_after:
                state = {"waiting": {"reason": "CrashLoopBackOff"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "name": c.name,
            "ready": c.ready,
            "started": c.process is not None,
            "restartCount": c.restarts,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "containerID": f"local://{c.process.pid}" if c.process else "",
            "state": state,
        }

    def _write_status(self) -> None:
        if self.power_lost:
            return
        all_ready = bool(self.containers) and all(c.ready for c in self.containers)
        ready = "True" if all_ready and self.phase == "Running" else "False"

        def cond(kind: str, status: str) -> dict[str, str]:
            return {"type": kind, "status": status}

        status: dict[str, Any] = {
            "phase": self.phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "conditions": [
                cond("PodScheduled", "True"),
                cond("Initialized", "True" if self.containers else "False"),
                cond("ContainersReady", ready),
                cond("Ready", ready),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.waiting_message and not self.containers:
            status["containerStatuses"] = [
                {
                    "name": spec["name"],
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "image": spec.get("image", ""),
                    "imageID": "",
                    "state": {
                        "waiting": {"reason": "ContainerCreating", "message": self.waiting_message}
                    },
                }
                for spec in self.pod["spec"]["containers"]
            ]
        if self.message:
            status["message"] = self.message
        if status == self._last_status:
            return  # write status only when it changed
        # Transition times are stamped only on writes, so unchanged status stays equal.
        self._last_status = status
        body = {"status": {**status, "startTime": self.pod["status"].get("startTime") or now()}}
        for c in body["status"]["conditions"]:
            c["lastTransitionTime"] = now()
        try:
            self.api.patch_namespaced_pod_status(self.name, self.ns, body)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status write failed pod=%s/%s: %s", self.ns, self.name, exc.reason)
                self._last_status = None


class NodeAgent:
    """Watches pods bound to its nodes and runs them; keeps its nodes Ready."""

    def __init__(self, api: client.CoreV1Api, nodes: Sequence[str], state_dir: Path) -> None:
        self.api = api
        self.coordination = client.CoordinationV1Api(api.api_client)
        self.nodes = list(nodes)
        self.state_dir = state_dir
        self.ips = IpAllocator()
        self.workers: dict[str, tuple[PodWorker, threading.Thread]] = {}
        self.stopping = threading.Event()
        self.config_maps = ConfigMapStore(api)

    def heartbeat(self) -> None:
        """Ready condition and Lease renewal for every node, like a kubelet."""
        stamp = now()
        micro = dt.datetime.now(dt.UTC)
        for node in self.live_nodes():
            conditions = [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "recserve node agent is running pods as local processes",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ] + [
                {
                    "type": kind,
                    "status": "False",
                    "reason": f"KubeletHas{reason}",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind, reason in (
                    ("MemoryPressure", "SufficientMemory"),
                    ("DiskPressure", "NoDiskPressure"),
                    ("PIDPressure", "SufficientPID"),
                )
            ]
            body = {
                "status": {
                    "conditions": conditions,
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": node},
                    ],
                }
            }
            try:
                self.api.patch_node_status(node, body)
                self._renew_lease(node, micro)
            except ApiException as exc:
                log.warning("heartbeat failed node=%s: %s", node, exc.reason)

    def _renew_lease(self, node: str, at: dt.datetime) -> None:
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=node, namespace="kube-node-lease"),
            spec=client.V1LeaseSpec(
                holder_identity=node, lease_duration_seconds=LEASE_SECONDS, renew_time=at
            ),
        )
        try:
            self.coordination.replace_namespaced_lease(node, "kube-node-lease", lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)

    def live_nodes(self) -> list[str]:
        """This agent's nodes that are not powered off (``<state-dir>/powered-off``)."""
        try:
            off = set((self.state_dir / POWERED_OFF).read_text().split())
        except FileNotFoundError:
            off = set()
        return [n for n in self.nodes if n not in off]

    def sync(self) -> None:
        """One pass: start new pods, stop deleted ones; a powered-off node's pods die."""
        seen: set[str] = set()
        live = self.live_nodes()
        for worker, _ in self.workers.values():
            if worker.pod["spec"].get("nodeName") not in live and not worker.power_lost:
                log.info("node powered off, killing pod=%s/%s", worker.ns, worker.name)
                worker.power_lost = True
                worker.stop_event.set()
        for node in live:
            pods = self.api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
            for pod in pods.items:
                raw = self.api.api_client.sanitize_for_serialization(pod)
                uid = raw["metadata"]["uid"]
                seen.add(uid)
                known = self.workers.get(uid)
                if raw["metadata"].get("deletionTimestamp"):
                    if known:
                        known[0].deleting = True
                        known[0].stop_event.set()
                    else:
                        remove_pod(self.api, raw)
                    continue
                if known is None and raw["status"].get("phase") not in ("Succeeded", "Failed"):
                    self._start(raw)
        for uid in list(self.workers):
            worker, thread = self.workers[uid]
            if uid not in seen:
                worker.stop_event.set()
            if not thread.is_alive():
                self.ips.give_back(worker.ip_slot)
                del self.workers[uid]

    def _start(self, pod: dict[str, Any]) -> None:
        ip, slot = self.ips.take()
        meta = pod["metadata"]
        workdir = self.state_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        worker = PodWorker(self.api, pod, ip, slot, workdir, config_maps=self.config_maps)
        thread = threading.Thread(target=worker.run, name=f"pod-{meta['name']}", daemon=True)
        self.workers[meta["uid"]] = (worker, thread)
        thread.start()

    def run(self) -> None:
        """Sync until SIGTERM/SIGINT, then stop every pod's processes."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        last_beat = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    self.heartbeat()
                    last_beat = time.monotonic()
                self.sync()
            except Exception:
                log.exception("sync failed; retrying")
            self.stopping.wait(POLL_SECONDS)
        for worker, _ in self.workers.values():
            worker.stop_event.set()
        for _, thread in self.workers.values():
            thread.join(timeout=40)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", action="append", required=True, help="node to serve (repeat)")
    parser.add_argument("--state-dir", required=True, help="per-pod folders and logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(client.CoreV1Api(api_client), args.node, Path(args.state_dir))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stopping.set())
    log.info("node agent started nodes=%s", ",".join(args.node))
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
