"""The CRDs generated from the types: structural, complete, and in sync with git."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from recserve_operator.api import KINDS
from recserve_operator.api.crdgen import crd_for, stale_files, write_all
from tests.manifests import REPO

pytestmark = pytest.mark.unit


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def _schema(kind: Any) -> dict[str, Any]:
    return crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Any) -> None:
    for path, node in _walk(_schema(kind)):
        forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"} & node.keys()
        assert not forbidden, f"{kind.kind}{path}: {forbidden}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), (
            f"{kind.kind}{path} has no type"
        )
        assert not ("properties" in node and "additionalProperties" in node), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_spec_has_no_floats_and_every_field_is_documented(kind: Any) -> None:
    spec = _schema(kind)["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        assert node.get("type") != "number", f"float in spec at {kind.kind}.{path}"
        if path.count(".") >= 1 and not path.endswith("[]") and "{}" not in path:
            assert node.get("description"), f"{kind.kind}.{path} is undocumented"


def test_conditions_are_list_maps_keyed_by_type() -> None:
    for kind in KINDS:
        conditions = _schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) >= {"type", "status"}


def test_cel_rules_and_status_subresource() -> None:
    by_kind = {k.kind: crd_for(k) for k in KINDS}
    for crd in by_kind.values():
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    policy = _schema(next(k for k in KINDS if k.kind == "OptimizationPolicy"))
    rules = policy["properties"]["spec"]["properties"]["autoscaling"]["x-kubernetes-validations"]
    assert any(r["rule"] == "self.minReplicas <= self.maxReplicas" for r in rules)
    source = _schema(next(k for k in KINDS if k.kind == "RecModel"))["properties"]["spec"][
        "properties"
    ]["source"]
    assert "oldSelf.sha256" in source["x-kubernetes-validations"][0]["rule"]


def test_printer_columns_match_the_issue() -> None:
    names = {k.kind: [c["name"] for c in k.columns] for k in KINDS}
    assert names["RecModel"][:3] == ["Ready", "Replicas", "P99ms"]
    assert names["HardwarePool"][:3] == ["Type", "Nodes", "Ready"]
    assert {"Precision", "PruningBp", "SizeBytes", "AccDropBp", "Selected"} <= set(
        names["ModelVariant"]
    )


def test_committed_files_match_the_types() -> None:
    assert stale_files(REPO) == [], "run `make crds` and commit the result"


def test_generation_is_idempotent_and_detects_hand_edits(tmp_path: Path) -> None:
    for part in ("crds", "charts", "docs"):
        shutil.copytree(REPO / part, tmp_path / part)
    assert write_all(tmp_path) == []
    edited = tmp_path / "crds" / "recserve.io_recmodels.yaml"
    edited.write_text(edited.read_text().replace("minItems: 1", "minItems: 0", 1))
    assert stale_files(tmp_path) == [edited]
    assert write_all(tmp_path) == [edited]
    assert stale_files(tmp_path) == []


def test_chart_crds_equal_top_level_crds() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        chart_copy = REPO / "charts" / "recserve" / "crds" / path.name
        assert yaml.safe_load(path.read_text()) == yaml.safe_load(chart_copy.read_text())
