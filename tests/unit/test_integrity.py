"""The operator's check of variant artifacts in the store (recserve_operator.integrity)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recserve_dev.testmodel import write_variant
from recserve_operator.integrity import ArtifactChecks
from recserve_runtime.artifacts import MODEL_FILE

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def variant(tmp_path: Path) -> Path:
    """A real variant folder (model.onnx and its manifest), as a build writes it."""
    return write_variant(tmp_path / "variants")


def flip(path: Path, keep_mtime: bool = False) -> bytes:
    """Flip one bit in the middle of ``path``; returns the original bytes."""
    before = path.read_bytes()
    st = path.stat()
    damaged = bytearray(before)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    if keep_mtime:  # as bit rot would: nothing about the file says it changed
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return before


def test_an_intact_variant_verifies_and_is_hashed_once_while_unchanged(tmp_path: Path) -> None:
    folder = variant(tmp_path)
    checks = ArtifactChecks()
    assert checks.problem(folder) is None
    assert checks.problem(folder) is None
    assert checks.hashed == 1


def test_a_changed_file_is_hashed_again_and_its_damage_named(tmp_path: Path) -> None:
    folder = variant(tmp_path)
    checks = ArtifactChecks()
    assert checks.problem(folder) is None
    original = flip(folder / MODEL_FILE)
    problem = checks.problem(folder)
    assert problem is not None and problem.startswith("checksum mismatch")
    assert str(folder / MODEL_FILE) in problem
    (folder / MODEL_FILE).write_bytes(original)
    assert checks.problem(folder) is None
    assert checks.hashed == 3


def test_damage_that_leaves_the_file_looking_unchanged_is_found_when_servers_fail(
    tmp_path: Path,
) -> None:
    folder = variant(tmp_path)
    clock = Clock()
    checks = ArtifactChecks(recheck_seconds=30, clock=clock)
    assert checks.problem(folder) is None
    stamp = (folder / MODEL_FILE).stat()
    original = flip(folder / MODEL_FILE, keep_mtime=True)
    assert checks.problem(folder) is None  # looks unchanged, servers all Ready: trusted
    assert checks.problem(folder, suspect=True) is None  # hashed 0 s ago: not yet again
    clock.now += 31
    problem = checks.problem(folder, suspect=True)
    assert problem is not None and "checksum mismatch" in problem
    assert checks.hashed == 2
    # restored in place, as unchanged-looking: a damaged verdict is doubted at that pace
    (folder / MODEL_FILE).write_bytes(original)
    os.utime(folder / MODEL_FILE, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert checks.problem(folder) == problem
    clock.now += 31
    assert checks.problem(folder) is None
    assert checks.hashed == 3


def test_a_missing_model_file_or_manifest_is_a_problem(tmp_path: Path) -> None:
    folder = variant(tmp_path)
    checks = ArtifactChecks()
    (folder / MODEL_FILE).unlink()
    assert "missing" in (checks.problem(folder) or "")
    (folder / "manifest.json").write_text("{not json")
    assert (checks.problem(folder) or "").startswith("unreadable")
