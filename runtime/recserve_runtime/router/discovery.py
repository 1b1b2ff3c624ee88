"""Where backends come from: a static list, Kubernetes EndpointSlices by label, or Ready
pods by label (where EndpointSlices cannot hold the pods' addresses, e.g. the local
control plane's loopback pod IPs, which the API server refuses in EndpointSlices)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from recserve_runtime.router.balancer import CANARY, STABLE, TRACK_LABEL, Target

log = logging.getLogger("recserve.router.discovery")

Addr = tuple[str, int]


def parse_static(specs: list[str]) -> list[Addr]:
    """``host:port`` strings (optionally with http://) to addresses."""
    out: list[Addr] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip().removeprefix("http://").rstrip("/")
            if not part:
                continue
            host, sep, port = part.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"backend {part!r} is not host:port")
            out.append((host, int(port)))
    return out


def endpoints_from_slices(
    slices: list[Any], port_name: str | None, default_port: int
) -> list[Addr]:
    """Ready endpoint addresses of EndpointSlice objects (kubernetes client models)."""
    out: list[Addr] = []
    for s in slices:
        port = default_port
        for p in s.ports or []:
            if port_name is None or p.name == port_name:
                port = p.port
                break
        for ep in s.endpoints or []:
            cond = ep.conditions
            if cond is not None and cond.ready is False:
                continue
            out.extend((addr, port) for addr in ep.addresses or [])
    return sorted(set(out))


def kube_client(factory: Callable[[], Any] | None, api: str) -> Any:
    """A kubernetes client API (``api``: e.g. "CoreV1Api"): ``factory``'s if given, else
    one with the pod's service account (in a cluster) or the kubeconfig."""
    if factory is not None:
        return factory()
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return getattr(client, api)()


def endpoints_from_pods(pods: list[Any], port_name: str | None, default_port: int) -> list[Addr]:
    """Addresses of Ready, not terminating pods (kubernetes client models)."""
    return sorted({(t.host, t.port) for t in targets_from_pods(pods, port_name, default_port)})


def pod_track(pod: Any) -> str:
    """The pod's rollout track: ``canary`` when labelled so, else ``stable`` (an unknown
    value too, so that the metrics' track label stays two-valued)."""
    labels = pod.metadata.labels or {}
    return CANARY if labels.get(TRACK_LABEL) == CANARY else STABLE


def targets_from_pods(pods: list[Any], port_name: str | None, default_port: int) -> list[Target]:
    """Ready, not terminating pods (kubernetes client models) with their tracks."""
    out: list[Target] = []
    for pod in pods:
        if pod.metadata.deletion_timestamp is not None or not pod.status.pod_ip:
            continue
        if not any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            continue
        port = default_port
        ports = [p for c in pod.spec.containers for p in (c.ports or [])]
        for p in ports:
            if port_name is None or p.name == port_name:
                port = p.container_port
                break
        out.append(Target(pod.status.pod_ip, port, pod_track(pod)))
    return sorted(set(out))


class _LabelSource:
    """Polls the objects a label selector matches (the client is sync: call in a thread)."""

    api = "CoreV1Api"

    def __init__(
        self,
        namespace: str,
        selector: str,
        port_name: str | None = None,
        default_port: int = 8080,
        api_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.namespace = namespace
        self.selector = selector
        self.port_name = port_name
        self.default_port = default_port
        self._api_factory = api_factory
        self._api: Any = None

    def _client(self) -> Any:
        if self._api is None:
            self._api = kube_client(self._api_factory, self.api)
        return self._api

    def list(self) -> Sequence[Addr | Target]:
        """Current ready backends (blocking)."""
        raise NotImplementedError

    def _lister(self) -> Callable[..., Any]:
        raise NotImplementedError

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Call ``changed()`` on every change of the selected objects (a new pod, a pod
        turning Ready), until ``stop`` is set (blocking: run it on a thread). The router
        then lists again at once instead of at its next periodic refresh: a replica the
        autoscaler added takes requests as soon as it is Ready, not up to a refresh
        interval later (measured in `recserve bench autoscale`: 10 s polling left five new
        Ready replicas idle for 6 s of a 10x flash crowd). A broken watch is started
        again after a second; the periodic refresh covers the gap."""
        watch_forever(
            self._lister(),
            self.namespace,
            lambda _event: changed(),
            stop,
            label_selector=self.selector,
        )


def watch_forever(
    lister: Callable[..., Any],
    namespace: str,
    on_event: Callable[[dict[str, Any]], None],
    stop: threading.Event,
    **selector: str,
) -> None:
    """Call ``on_event`` with each watch event of ``lister``'s objects in ``namespace``
    (``selector``: label_selector= or field_selector=) until ``stop`` is set (blocking:
    run it on a thread). A broken watch (the API server away, a 410 Gone) is started
    again after a second; the caller's periodic read covers the gap."""
    from kubernetes import watch

    while not stop.is_set():
        w = watch.Watch()
        try:
            for event in w.stream(
                lister, namespace, timeout_seconds=60, _request_timeout=75, **selector
            ):
                on_event(event)
                if stop.is_set():
                    break
        except Exception as exc:  # start again
            log.debug("watch of %s ended: %s", selector, exc)
            stop.wait(1.0)
        finally:
            w.stop()


class PodSource(_LabelSource):
    """Ready pods matching a label selector, each with its track (label
    ``recserve.io/track``; a relabelled pod is a watch event, so its new track is listed
    at once)."""

    def list(self) -> list[Target]:
        resp = self._client().list_namespaced_pod(
            self.namespace, label_selector=self.selector, _request_timeout=10
        )
        return targets_from_pods(resp.items, self.port_name, self.default_port)

    def _lister(self) -> Callable[..., Any]:
        return self._client().list_namespaced_pod  # type: ignore[no-any-return]


class EndpointSliceSource(_LabelSource):
    """Ready endpoints of the EndpointSlices matching a label selector."""

    api = "DiscoveryV1Api"

    def list(self) -> list[Addr]:
        resp = self._client().list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector, _request_timeout=10
        )
        return endpoints_from_slices(resp.items, self.port_name, self.default_port)

    def _lister(self) -> Callable[..., Any]:
        return self._client().list_namespaced_endpoint_slice  # type: ignore[no-any-return]
