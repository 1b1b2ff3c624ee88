"""Variant loading: fsspec URIs with a local cache, integrity check before load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from recserve_dev import testmodel as tm
from recserve_runtime.server.model import PROVIDERS, ModelLoadError, load, localize

pytestmark = pytest.mark.unit

SPEC = tm.TestModelSpec(vocab_size=50, top_mlp=(8,))


def uploaded(tmp_path: Path, prefix: str) -> tuple[Any, str]:
    """A test variant copied to the in-memory fsspec store: the filesystem and its URI."""
    variant = tm.write_variant(tmp_path / "store", SPEC, keep_weights=False)
    fs = fsspec.filesystem("memory")
    for name in ("model.onnx", "manifest.json"):
        fs.pipe(f"{prefix}/{name}", (variant / name).read_bytes())
    return fs, f"memory:/{prefix}"


def test_fsspec_uri_is_fetched_once_into_the_cache(tmp_path: Path) -> None:
    fs, uri = uploaded(tmp_path, "/bucket/v1")
    cache = tmp_path / "cache"
    local = localize(uri, cache)
    assert (local / "model.onnx").read_bytes() == fs.cat("/bucket/v1/model.onnx")
    fs.rm("/bucket/v1", recursive=True)  # gone upstream: the cache still answers
    assert localize("memory://bucket/v1", cache) == local
    model = load("memory://bucket/v1", cache_dir=cache)
    sparse, dense = tm.random_batch(SPEC, 3)
    assert model.run(sparse, dense).shape == (3,)
    assert model.fallback_reason is None and model.providers[0] == "CPUExecutionProvider"


def test_gpu_hardware_falls_back_to_cpu_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback path, forced: an onnxruntime that offers only the CPU (as on a host
    without CUDA), whatever this host's onnxruntime really offers."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    variant = tm.write_variant(tmp_path, SPEC, keep_weights=False)
    model = load(str(variant), hardware="gpu")
    assert model.providers == ["CPUExecutionProvider"]
    assert model.fallback_reason is not None
    assert "CUDAExecutionProvider" in model.fallback_reason
    assert "has CPUExecutionProvider" in model.fallback_reason


def test_gpu_hardware_uses_what_this_onnxruntime_offers(tmp_path: Path) -> None:
    """Unpatched: on a CUDA host the session runs on a GPU provider with no fallback; on
    any other host it falls back to the CPU and says why. Correct on both."""
    import onnxruntime

    offered = [p for p in PROVIDERS["gpu"] if p in onnxruntime.get_available_providers()]
    variant = tm.write_variant(tmp_path, SPEC, keep_weights=False)
    model = load(str(variant), hardware="gpu")
    sparse, dense = tm.random_batch(SPEC, 2)
    assert model.run(sparse, dense).shape == (2,)
    if offered:
        assert model.fallback_reason is None, model.fallback_reason
        assert model.providers[0] in offered, f"offered {offered}, session got {model.providers}"
    else:
        assert model.providers == ["CPUExecutionProvider"]
        assert model.fallback_reason is not None and "CUDA" in model.fallback_reason


def test_bit_flip_is_refused_before_load(tmp_path: Path) -> None:
    variant = tm.write_variant(tmp_path, SPEC, keep_weights=False)
    data = bytearray((variant / "model.onnx").read_bytes())
    data[100] ^= 1
    (variant / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as err:
        load(str(variant))
    assert err.value.reason == "ChecksumMismatch" and "sha256" in str(err.value)


def test_a_damaged_cached_copy_is_fetched_again_and_damage_at_the_source_refused(
    tmp_path: Path,
) -> None:
    fs, _ = uploaded(tmp_path, "/bucket/v2")
    cache = tmp_path / "cache"
    local = localize("memory://bucket/v2", cache)
    good = (local / "model.onnx").read_bytes()
    (local / "model.onnx").write_bytes(good[: len(good) // 2])  # a fetch cut short
    model = load("memory://bucket/v2", cache_dir=cache)
    assert (local / "model.onnx").read_bytes() == good
    assert model.run(*tm.random_batch(SPEC, 2)).shape == (2,)
    damaged = bytearray(good)
    damaged[100] ^= 1
    fs.pipe("/bucket/v2/model.onnx", bytes(damaged))
    (local / "model.onnx").write_bytes(bytes(damaged))  # the copy is damaged at the source too
    with pytest.raises(ModelLoadError) as err:
        load("memory://bucket/v2", cache_dir=cache)
    assert err.value.reason == "ChecksumMismatch"
    fs.rm("/bucket/v2", recursive=True)


def test_missing_manifest_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load(str(tmp_path / "nothing-here"))
    assert err.value.reason == "ManifestUnreadable"


def test_int8_variant_matches_fp32_closely(tmp_path: Path) -> None:
    fp32 = tm.write_variant(tmp_path, SPEC, keep_weights=False)
    int8 = tm.quantize_variant(fp32, tmp_path)
    sparse, dense = tm.random_batch(SPEC, 32)
    a, b = load(str(fp32)).run(sparse, dense), load(str(int8)).run(sparse, dense)
    assert np.abs(a - b).max() < 0.05
    assert load(str(int8)).manifest.recipe.precision == "int8"
