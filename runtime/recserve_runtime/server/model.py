"""Loading a variant: fetch (fsspec + local cache), verify sha256, open an onnxruntime session.

The execution provider follows the hardware type; when the wanted provider is missing
the loader falls back to the CPU and says so (``fallback_reason``), which the server
logs and exports as a metric label.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime import artifacts

log = logging.getLogger("recserve.server.model")

# Wanted providers per hardware type, best first.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "fpga": ["VitisAIExecutionProvider"],
}

DEFAULT_CACHE = Path(os.environ.get("RECSERVE_CACHE", Path.home() / ".cache/recserve/variants"))


class ModelLoadError(RuntimeError):
    """The variant could not be loaded; ``reason`` is a short CamelCase constant."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def choose_providers(hardware: str, available: list[str]) -> tuple[list[str], str | None]:
    """Providers to use for ``hardware`` and the fallback reason (None when none was needed)."""
    wanted = PROVIDERS.get(hardware)
    if wanted is None:
        raise ValueError(f"unknown hardware {hardware!r}; expected one of {sorted(PROVIDERS)}")
    chosen = [p for p in wanted if p in available]
    if chosen:
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen, None
    return ["CPUExecutionProvider"], (
        f"hardware={hardware} wants {' or '.join(wanted)}, not available in this onnxruntime "
        f"(has {', '.join(available)}); fell back to CPUExecutionProvider"
    )


def localize(uri: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """A local folder holding the variant at ``uri`` (a path, or any fsspec URI, cached)."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    import fsspec

    target = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / artifacts.MANIFEST).exists():
        return target
    fs, _, paths = fsspec.get_fs_token_paths(uri)
    base = paths[0].rstrip("/")
    tmp = target.with_name(target.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    # model first, manifest last: a folder with a manifest is complete
    for name in (artifacts.MODEL_FILE, artifacts.MANIFEST):
        fs.get(f"{base}/{name}", str(tmp / name))
    tmp.rename(target)
    return target


def _is_cached(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _fetch_verified(uri: str, cache_dir: Path) -> tuple[artifacts.Manifest, Path]:
    """The variant's manifest and its verified model file (local). A cached copy that no
    longer verifies (a fetch cut short, a damaged disk) is dropped and fetched once more;
    damage at the source itself is refused."""
    for attempt in (1, 2):
        try:
            folder = localize(uri, cache_dir)
            manifest = artifacts.load_manifest(folder)
        except Exception as exc:  # any fetch/parse problem is a load failure
            raise ModelLoadError("ManifestUnreadable", f"{uri}: {exc}") from exc
        try:
            return manifest, artifacts.verify(folder, manifest)
        except artifacts.IntegrityError as exc:
            if attempt == 2 or not _is_cached(uri):
                raise ModelLoadError("ChecksumMismatch", str(exc)) from exc
            log.warning("cached copy of %s does not verify (%s): fetching it again", uri, exc)
            shutil.rmtree(folder, ignore_errors=True)
    raise AssertionError("unreachable")


@dataclass
class LoadedModel:
    """An open session and what the server needs to know about it."""

    manifest: artifacts.Manifest
    session: Any
    providers: list[str]
    fallback_reason: str | None
    load_seconds: float
    vocab: np.ndarray  # per sparse column: vocabulary size
    n_sparse: int
    n_dense: int

    def run(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Scores for a batch (blocking; call from a worker thread)."""
        fs = self.manifest.feature_spec
        out = self.session.run(
            [self.manifest.outputs[0].name], {fs.sparse_input: sparse, fs.dense_input: dense}
        )
        return np.asarray(out[0], dtype=np.float32).reshape(-1)


def load(
    uri: str,
    hardware: str = "cpu",
    intra_op_threads: int = 1,
    cache_dir: Path = DEFAULT_CACHE,
) -> LoadedModel:
    """Fetch, verify and open a variant; raises ModelLoadError with a reason."""
    import onnxruntime as ort

    start = time.perf_counter()
    manifest, path = _fetch_verified(uri, cache_dir)
    providers, fallback = choose_providers(hardware, ort.get_available_providers())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise ModelLoadError("SessionCreateFailed", f"{path}: {exc}") from exc
    fs = manifest.feature_spec
    return LoadedModel(
        manifest=manifest,
        session=session,
        providers=list(session.get_providers()),
        fallback_reason=fallback,
        load_seconds=time.perf_counter() - start,
        vocab=np.array([f.vocab_size for f in fs.sparse], dtype=np.int64),
        n_sparse=len(fs.sparse),
        n_dense=sum(f.width for f in fs.dense),
    )
