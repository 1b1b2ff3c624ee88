"""The canary's share of requests, from a ConfigMap the operator writes during a rollout.

``data["weights.json"]`` holds ``{"canaryPercent": <int 0..100>}``. No ConfigMap or no
key means no rollout (0 %); content that cannot be read also means 0 % — sending nothing
to an unknown canary is the safe reading — with one warning per distinct bad content.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from recserve_runtime.router.discovery import kube_client, watch_forever

log = logging.getLogger("recserve.router.weights")

WEIGHTS_KEY = "weights.json"


def parse_weights(data: Mapping[str, str] | None) -> tuple[int, str | None]:
    """``(canaryPercent, problem)`` of a ConfigMap's ``data``: problem is None when the
    content is good or absent, else why it was read as 0."""
    raw = (data or {}).get(WEIGHTS_KEY)
    if raw is None:
        return 0, None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return 0, f"{WEIGHTS_KEY} is not JSON: {exc}"
    value = doc.get("canaryPercent") if isinstance(doc, dict) else None
    # bool is an int to Python, but `true` is not a percentage
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        return 0, f'{WEIGHTS_KEY} needs {{"canaryPercent": <int 0..100>}}, got {raw!r}'
    return value, None


class WeightsSource:
    """Reads and watches one ConfigMap (the client is sync: call in a thread)."""

    def __init__(
        self, namespace: str, name: str, api_factory: Callable[[], Any] | None = None
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._api_factory = api_factory
        self._api: Any = None
        self._warned: str | None = None

    def _client(self) -> Any:
        if self._api is None:
            self._api = kube_client(self._api_factory, "CoreV1Api")
        return self._api

    def _selector(self) -> str:
        return f"metadata.name={self.name}"

    def percent_of(self, data: Mapping[str, str] | None) -> int:
        """The share that ``data`` sets, warning once about each distinct bad content."""
        percent, problem = parse_weights(data)
        if problem is not None and problem != self._warned:
            log.warning("configmap %s/%s: %s; canary gets 0%%", self.namespace, self.name, problem)
        self._warned = problem
        return percent

    def read(self) -> int:
        """The canary share now (blocking; API errors propagate: keep the last value)."""
        resp = self._client().list_namespaced_config_map(
            self.namespace, field_selector=self._selector(), _request_timeout=10
        )
        return self.percent_of(resp.items[0].data if resp.items else None)

    def watch(self, apply: Callable[[int], None], stop: threading.Event) -> None:
        """Call ``apply(percent)`` on every change of the ConfigMap (deleted: 0) until
        ``stop`` is set (blocking: run it on a thread). A broken watch is started again
        after a second; the router's periodic ``read`` covers the gap."""

        def on_event(event: dict[str, Any]) -> None:
            deleted = event["type"] == "DELETED"
            apply(0 if deleted else self.percent_of(event["object"].data))

        watch_forever(
            self._client().list_namespaced_config_map,
            self.namespace,
            on_event,
            stop,
            field_selector=self._selector(),
        )
