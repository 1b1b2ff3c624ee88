"""A small facade over the Kubernetes client: the few verbs the reconcilers use.

Children are written with server-side apply under one field manager, so that a child
that already exists with our name is adopted and patched, and re-applying an unchanged
object is a no-op. Jobs are created once and never patched (their template is
immutable). Status is written with merge patches only when it changed.

Answers of the dynamic client are parsed as plain JSON (``serialize=False``): its
default wraps every field of every object in a ResourceField and converts back, which
costs more CPU than the request itself on a list of a thousand Nodes or Pods.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from recserve_operator.api.common import GROUP, VERSION

FIELD_MANAGER = "recserve-operator"
# The autoscaler writes replicas through the scale subresource under its own manager, as
# an HPA does: the operator's applies never name spec.replicas of an autoscaled
# Deployment, so the two never undo each other.
SCALE_MANAGER = "recserve-autoscaler"
# Hash of the body we last applied, kept on the object: a pass that would apply the same
# body again reads instead of writing, so steady-state reconciles cost only reads.
APPLIED_HASH = "recserve.io/applied-hash"
log = logging.getLogger("recserve.kube")
T = TypeVar("T")
R = TypeVar("R")
# (name, namespace or None) -> the object as last seen by a watch, or None if unseen.
Lookup = Callable[[str, str | None], dict[str, Any] | None]
# (kind, namespace, owner's name) -> the children of that kind as a watch last saw them;
# owner SHARED: the children that every owner of the namespace shares.
ChildrenLookup = Callable[[str, str, str], list[dict[str, Any]]]
SHARED = ""


class Kube:
    """Typed-enough access to the cluster for the reconcilers."""

    _writers: ThreadPoolExecutor | None = None

    def __init__(self, api: client.ApiClient, writers: int = 1) -> None:
        """``writers``: requests that :meth:`map` may have in flight at once, across all
        the passes that use this facade (1: one after the other)."""
        self.api = api
        if writers > 1:
            self._writers = ThreadPoolExecutor(writers, thread_name_prefix="recserve-write")
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._dynamic: dynamic.DynamicClient | None = None
        self._known: dict[str, Lookup] = {}
        self._children: tuple[str, str | None, frozenset[str], ChildrenLookup] | None = None

    def know(self, plural: str, lookup: Lookup) -> None:
        """Answer :meth:`get_custom` for ``plural`` from ``lookup`` (a kopf index that the
        operator's watch keeps current); the API server is asked only on a miss, so a
        reference created a moment ago, or one that really is missing, is still read."""
        self._known[plural] = lookup

    def know_children(
        self,
        label: str,
        kinds: frozenset[str],
        lookup: ChildrenLookup,
        shared_label: str | None = None,
    ) -> None:
        """Answer :meth:`list` (and :meth:`list_custom`) of ``kinds`` selected by exactly
        ``label=<owner>`` in a namespace from ``lookup`` (a kopf index of the children,
        which kopf fills before any handler runs and keeps current from its watches),
        instead of a LIST per kind and pass; ``shared_label=true`` selects the shared
        children (owner :data:`SHARED`). A lagging index costs at most one needless
        (idempotent) apply; any other selector is still listed."""
        self._children = (label, shared_label, kinds, lookup)

    def _known_children(
        self, kind: str, namespace: str | None, selector: str
    ) -> list[dict[str, Any]] | None:
        if self._children is None or namespace is None:
            return None
        label, shared_label, kinds, lookup = self._children
        key, _, owner = selector.partition("=")
        if kind in kinds and key == shared_label and owner == "true":
            return lookup(kind, namespace, SHARED)
        if kind not in kinds or key != label or not owner or "," in owner:
            return None
        return lookup(kind, namespace, owner)

    @property
    def dyn(self) -> dynamic.DynamicClient:
        if self._dynamic is None:
            self._dynamic = dynamic.DynamicClient(self.api)
        return self._dynamic

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn`` over ``items`` side by side (writes that do not depend on each other:
        a pass's latency is then its slowest write, not their sum); results in order, the
        first error raised. ``fn`` must not call :meth:`map` itself."""
        todo = list(items)
        if self._writers is None or len(todo) < 2:
            return [fn(item) for item in todo]
        return list(self._writers.map(fn, todo))

    # -- recserve objects ------------------------------------------------------------
    def get_custom(
        self, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """A recserve.io object, or None if it does not exist."""
        lookup = self._known.get(plural)
        seen = lookup(name, namespace) if lookup is not None else None
        if seen is not None:
            return seen
        try:
            if namespace is None:
                return dict(self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name))
            return dict(
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_custom(self, plural: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        if plural == "modelvariants":
            known = self._known_children("ModelVariant", namespace, selector)
            if known is not None:
                return known
        out = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, label_selector=selector
        )
        return list(out.get("items", []))

    def patch_status(
        self, plural: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        """Merge-patch a recserve object's status subresource."""
        body = {"status": status}
        try:
            # the answer (the whole object) is not read: left unparsed, it costs no CPU
            if namespace is None:
                answer = self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, name, body, _preload_content=False
                )
            else:
                answer = self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body, _preload_content=False
                )
            answer.drain_conn()  # read to the end, so the connection can be reused
            answer.release_conn()
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    # -- children --------------------------------------------------------------------
    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (create, adopt or patch) of one object we own.

        A Service whose clusterIP must change (a server Service made headless by an
        upgrade) is replaced: the API server never changes clusterIP in place.
        """
        resource = self.dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        meta = body["metadata"]

        def apply() -> dict[str, Any]:
            return _json(
                self.dyn.server_side_apply(
                    resource,
                    body=body,
                    name=meta["name"],
                    namespace=meta.get("namespace"),
                    field_manager=FIELD_MANAGER,
                    force_conflicts=True,
                    serialize=False,
                )
            )

        try:
            return apply()
        except ApiException as exc:
            if not _cluster_ip_changes(body, exc):
                raise
        log.info(
            "replacing Service %s/%s: its clusterIP changes", meta.get("namespace"), meta["name"]
        )
        self.delete(body["apiVersion"], body["kind"], meta["name"], meta.get("namespace"))
        return apply()

    def apply_if_changed(
        self, body: dict[str, Any], existing: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply ``body`` unless ``existing`` (observed objects by name) already holds it."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        name = body["metadata"]["name"]
        current = existing.get(name)
        annotations = (current or {}).get("metadata", {}).get("annotations") or {}
        if current is not None and annotations.get(APPLIED_HASH) == digest:
            return current
        stamped = {
            **body,
            "metadata": {
                **body["metadata"],
                "annotations": {**body["metadata"].get("annotations", {}), APPLIED_HASH: digest},
            },
        }
        return self.apply(stamped)

    def create_once(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an object unless one with its name exists; return what is there."""
        resource = self.dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
        meta = body["metadata"]
        try:
            return _json(
                resource.create(body=body, namespace=meta.get("namespace"), serialize=False)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        return _json(
            resource.get(name=meta["name"], namespace=meta.get("namespace"), serialize=False)
        )

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        resource = self.dyn.resources.get(api_version=api_version, kind=kind)
        try:
            return _json(resource.get(name=name, namespace=namespace, serialize=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str = ""
    ) -> list[dict[str, Any]]:
        known = self._known_children(kind, namespace, selector)
        if known is not None:
            return known
        resource = self.dyn.resources.get(api_version=api_version, kind=kind)
        found = _json(resource.get(namespace=namespace, label_selector=selector, serialize=False))
        return list(found.get("items") or [])

    def scale_deployment(self, name: str, namespace: str, replicas: int) -> None:
        """Set a Deployment's replicas through its scale subresource."""
        self.apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, field_manager=SCALE_MANAGER
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        resource = self.dyn.resources.get(api_version=api_version, kind=kind)
        try:
            resource.delete(name=name, namespace=namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def _cluster_ip_changes(body: dict[str, Any], exc: ApiException) -> bool:
    """Whether the API server refused ``body`` for a Service's immutable clusterIP."""
    text = str(exc.body or "")
    return (
        exc.status == 422
        and body.get("kind") == "Service"
        and "clusterIP" in text
        and ("may not change" in text or "immutable" in text)
    )


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw (``serialize=False``) dynamic-client answer, as a dict (orjson:
    an applied object comes back with its managedFields, and parsing the answers was
    the operator's largest CPU cost in a burst of first passes)."""
    return dict(orjson.loads(response.data))
