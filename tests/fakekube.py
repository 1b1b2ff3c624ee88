"""An in-memory stand-in for :class:`recserve_operator.kube.Kube`, for unit tests.

It keeps objects in a dict and implements the facade's verbs with the semantics the
reconcilers rely on: server-side apply creates or replaces everything but status (and
bumps ``metadata.generation`` when the spec changes), ``create_once`` never replaces,
status patches are JSON merge patches, label selectors are ``k=v,...``. Every write is
recorded in ``writes`` so tests can assert what a pass did, and that a second pass
does nothing. Only ``apply_if_changed`` is inherited, so the real skip-if-unchanged
logic is what runs.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from recserve_operator.kube import Kube

PLURALS = {
    "recmodels": "RecModel",
    "hardwarepools": "HardwarePool",
    "optimizationpolicies": "OptimizationPolicy",
    "modelvariants": "ModelVariant",
}
Key = tuple[str, str | None, str]  # kind, namespace, name


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube(Kube):
    """The Kube facade over a dict (no API server, no client)."""

    def __init__(self) -> None:  # deliberately no super().__init__: no ApiClient
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.lists: list[tuple[str, str]] = []  # (kind, label selector)
        self._uids = itertools.count(1)
        self._versions = itertools.count(1)

    # -- test helpers --------------------------------------------------------------------
    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the API server would (uid, generation, resourceVersion)."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        if stored["kind"] == "Deployment":  # the API server's default
            stored.setdefault("spec", {}).setdefault("replicas", 1)
        self.objects[self._key(stored)] = stored
        return copy.deepcopy(stored)

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def of_kind(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind and (namespace is None or ns == namespace)
        ]

    def set_spec(self, kind: str, name: str, namespace: str | None, spec: dict[str, Any]) -> None:
        """A user's edit: merge into spec, bump the generation."""
        obj = self.objects[(kind, namespace, name)]
        obj["spec"] = _merge(obj.get("spec") or {}, spec)
        obj["metadata"]["generation"] += 1

    def set_status(
        self, kind: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        """What a controller would write (Job conditions, Deployment readyReplicas)."""
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = _merge(obj.get("status") or {}, status)

    def verbs(self, verb: str, kind: str | None = None) -> list[str]:
        return [n for v, k, n in self.writes if v == verb and (kind is None or k == kind)]

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        meta = obj["metadata"]
        return (obj["kind"], meta.get("namespace"), meta["name"])

    # -- recserve objects ----------------------------------------------------------------
    def get_custom(
        self, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return self.find(PLURALS[plural], name, namespace)

    def list_custom(self, plural: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        return [o for o in self.of_kind(PLURALS[plural], namespace) if _matches(o, selector)]

    def patch_status(
        self, plural: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> None:
        kind = PLURALS[plural]
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            return  # deleted meanwhile, as the real facade
        self.writes.append(("patch_status", kind, name))
        obj["status"] = _merge(obj.get("status") or {}, status)

    # -- children ------------------------------------------------------------------------
    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key(body)
        self.writes.append(("apply", key[0], key[2]))
        current = self.objects.get(key)
        if current is None:
            return self.add(body)
        desired = copy.deepcopy(body)
        replicas = (current.get("spec") or {}).get("replicas")
        if key[0] == "Deployment" and replicas is not None:
            # server-side apply keeps a field another manager owns: the autoscaler's replicas
            desired.setdefault("spec", {}).setdefault("replicas", replicas)
        if desired.get("spec") != current.get("spec"):
            current["metadata"]["generation"] += 1
        meta = current["metadata"]
        for field in ("labels", "annotations", "ownerReferences"):
            if field in desired["metadata"]:
                meta[field] = desired["metadata"][field]
        for field, value in desired.items():
            if field not in ("metadata", "status"):
                current[field] = value
        meta["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(current)

    def create_once(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._key(body)
        if key in self.objects:
            return copy.deepcopy(self.objects[key])
        self.writes.append(("create", key[0], key[2]))
        return self.add(body)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        return self.find(kind, name, namespace)

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str = ""
    ) -> list[dict[str, Any]]:
        self.lists.append((kind, selector))
        return [o for o in self.of_kind(kind, namespace) if _matches(o, selector)]

    def scale_deployment(self, name: str, namespace: str, replicas: int) -> None:
        obj = self.objects[("Deployment", namespace, name)]
        self.writes.append(("scale", "Deployment", name))
        if obj.setdefault("spec", {}).get("replicas") != replicas:
            obj["metadata"]["generation"] += 1  # a spec change, as the API server counts it
        obj["spec"]["replicas"] = replicas

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.writes.append(("delete", kind, name))
