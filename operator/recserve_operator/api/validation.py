"""Validate manifests against the API types, with the field path of every problem."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from recserve_operator.api.common import API_VERSION, Resource
from recserve_operator.api.registry import kind_for

R = TypeVar("R", bound=Resource)
log = logging.getLogger("recserve.api")
_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")


@dataclass(frozen=True)
class FieldError:
    """One problem at one field, e.g. ``spec.autoscaling.maxReplicas``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ManifestError(ValueError):
    """A manifest the API types refuse; ``errors`` holds every problem found."""

    def __init__(self, name: str, errors: list[FieldError]) -> None:
        self.name = name
        self.errors = errors
        super().__init__(f"{name} is invalid:\n" + "\n".join(f"  {e}" for e in errors))

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.errors]

    @property
    def summary(self) -> str:
        """Every problem on one line, e.g. for a condition message."""
        return "; ".join(str(e) for e in self.errors)


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a defaulted field checked by a validator is named by its Python name
            wire = to_camel(part) if _SNAKE.fullmatch(part) else part
            out += f".{wire}" if out else wire
    return out


def _describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "manifest"
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    kind = doc.get("kind")
    return (
        f"{kind if isinstance(kind, str) else '<no kind>'}/"
        f"{name if isinstance(name, str) else '<unnamed>'}"
    )


def field_errors(exc: ValidationError) -> list[FieldError]:
    """The problems of a pydantic error, each with its camelCase field path."""
    return [FieldError(_path(err["loc"]), err["msg"]) for err in exc.errors()]


def parse_object(model: type[R], doc: Any) -> R:
    """Validate an object read from the API server (a kopf body, a fetched reference)
    into its type, or raise :class:`ManifestError` naming every bad field.

    Only spec and metadata decide: a status the types refuse (written by an older
    operator) is logged and dropped, and the next status write replaces it.
    """
    name = _describe(doc)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errors = field_errors(exc)
    if isinstance(doc, dict) and all(e.path.startswith("status") for e in errors):
        log.warning("%s: ignoring a status the types refuse: %s", name, errors)
        return parse_object(model, {**doc, "status": None})
    raise ManifestError(name, errors)


def validate_manifest(doc: Any) -> Resource:
    """Parse one manifest into its API type or raise :class:`ManifestError`."""
    try:
        return _validate_manifest(doc)
    except RecursionError:  # a hostile document nested thousands of levels deep
        raise ManifestError(
            _describe(doc), [FieldError("<root>", "nested too deeply to be a manifest")]
        ) from None


def _validate_manifest(doc: Any) -> Resource:
    name = _describe(doc)
    if not isinstance(doc, dict):
        raise ManifestError(name, [FieldError("<root>", "a manifest must be a mapping")])
    if doc.get("apiVersion") != API_VERSION:
        got = doc.get("apiVersion")
        shown = repr(got)[:80] if isinstance(got, str | int | float | bool | None) else type(got)
        raise ManifestError(name, [FieldError("apiVersion", f"must be {API_VERSION}, got {shown}")])
    try:
        model = kind_for(str(doc.get("kind"))).model
    except KeyError as exc:
        raise ManifestError(name, [FieldError("kind", str(exc.args[0]))]) from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(name, field_errors(exc)) from None


def load_documents(path: Path) -> list[Any]:
    """All YAML documents of a file (empty documents skipped)."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def validate_files(paths: Iterable[Path]) -> tuple[list[Resource], list[ManifestError]]:
    """Validate every document of every file; returns the valid ones and the errors."""
    good: list[Resource] = []
    bad: list[ManifestError] = []
    for path in paths:
        for doc in load_documents(path):
            try:
                good.append(validate_manifest(doc))
            except ManifestError as exc:
                bad.append(exc)
    return good, bad
