"""The artifact contract: one store layout, and report files read and written through
their types (the JSON shape the Jobs wrote before the types existed still reads)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from recserve_operator.config import ArtifactStore
from recserve_runtime.artifacts import (
    BuildReport,
    ProfileReport,
    StoreLayout,
    variant_key,
)

pytestmark = pytest.mark.unit


def test_one_layout_for_the_operator_and_the_pods(tmp_path: Path) -> None:
    store = ArtifactStore.from_uri(str(tmp_path))
    local = store.local_build("ns", "m", "abc")
    pods = store.pod_build("ns", "m", "abc")
    assert local.root == tmp_path / "ns" / "m" / "abc"
    assert pods.root == PurePosixPath("/artifacts/ns/m/abc")
    assert str(pods.variants) == "/artifacts/ns/m/abc/variants"
    assert str(pods.report) == "/artifacts/ns/m/abc/report.json"
    assert str(pods.profile("gpu-pool")) == "/artifacts/ns/m/abc/profile-gpu-pool.json"
    key = variant_key("ab" * 32)
    assert key == "ab" * 8
    assert local.variant(key) == tmp_path / "ns" / "m" / "abc" / "variants" / key
    assert StoreLayout.of(PurePosixPath("/s"), "a", "b", "c").root == PurePosixPath("/s/a/b/c")


def test_profile_report_reads_what_recserve_profile_writes(tmp_path: Path) -> None:
    written = """{
      "hardware": "gpu", "executionProvider": "CPUExecutionProvider",
      "fallbackReason": "no CUDA", "threads": 4,
      "variants": {"0123456789abcdef": {
        "name": "int8-dynamic", "hardware": "gpu", "executionProvider": "CPUExecutionProvider",
        "fallbackReason": "no CUDA", "threads": 4,
        "points": [{"batchSize": 64, "p50Us": 10.5, "p99Us": 20.0, "samplesPerSecond": 1e6}]}}
    }"""
    path = tmp_path / "profile-gpu-pool.json"
    path.write_text(written)
    report = ProfileReport.read(path)
    assert report.fallback_reason == "no CUDA"
    assert report.variants["0123456789abcdef"].points[0].p99_us == 20.0
    report.write(path)
    assert ProfileReport.read(path) == report
    assert not list(tmp_path.glob(".*.tmp")), "written atomically, no temp file left"


def test_build_report_keeps_fields_it_does_not_type(tmp_path: Path) -> None:
    report = BuildReport.model_validate(
        {"hardware": "cpu", "threads": 2, "options": {"precisions": ["fp32"]}, "variants": []}
    )
    path = report.write(tmp_path / "report.json")
    assert '"options"' in path.read_text()
    assert BuildReport.read(path).model_extra == {"options": {"precisions": ["fp32"]}}
