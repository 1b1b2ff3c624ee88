"""Content-addressed variant store: ``<store>/<key>/{model.onnx,manifest.json}``, where
``key`` is :func:`recserve_runtime.artifacts.variant_key` of the model file's sha256.

The model file goes in first (staged in a hidden folder, then renamed), the manifest
last via ``artifacts.write_manifest``: a folder without a manifest is an unfinished
build that the server never loads. Local paths and fsspec URIs (``s3://``, ``memory://``
...) are both accepted; remote stores receive the manifest after the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from recserve_runtime.artifacts import (
    MANIFEST,
    MODEL_FILE,
    ArtifactFile,
    Manifest,
    sha256_file,
    variant_key,
    write_manifest,
)
from recserve_runtime.builder.errors import BuildError


def is_remote(store: str) -> bool:
    """True for fsspec URIs other than plain local paths."""
    return "://" in store and not store.startswith("file://")


def _local(store: str) -> Path:
    return Path(store.removeprefix("file://")).expanduser()


def check_writable(store: str) -> None:
    """Fail early, before any work, when the store cannot be written."""
    try:
        if is_remote(store):
            import fsspec

            fs, root = fsspec.core.url_to_fs(store)
            fs.makedirs(root, exist_ok=True)
            probe = f"{root.rstrip('/')}/.recserve-probe-{uuid.uuid4().hex}"
            fs.pipe(probe, b"ok")
            fs.rm(probe)
            return
        root = _local(store)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".recserve-probe-"):
            pass
    except (OSError, ValueError, ImportError) as exc:
        raise BuildError(
            f"cannot write to output location {store!r} ({exc}); pass --out with a "
            "folder (or fsspec URI) you can write to"
        ) from exc


def check_writable_file(path: Path) -> None:
    """Fail early when a report file (JSON, PNG) cannot be created."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        raise BuildError(f"cannot write report file {path} ({exc}); choose another path") from exc


def put_variant(store: str, model_file: Path, manifest: Manifest) -> str:
    """Store one variant; fills ``manifest.artifact``; returns the variant's location."""
    digest = sha256_file(model_file)
    manifest.artifact = ArtifactFile(
        file=MODEL_FILE, sha256=digest, size_bytes=model_file.stat().st_size
    )
    key = variant_key(digest)
    if is_remote(store):
        import fsspec

        fs, root = fsspec.core.url_to_fs(store)
        target = f"{root.rstrip('/')}/{key}"
        fs.makedirs(target, exist_ok=True)
        fs.put_file(str(model_file), f"{target}/{MODEL_FILE}")
        with tempfile.TemporaryDirectory() as tmp:
            local = write_manifest(Path(tmp), manifest)
            fs.put_file(str(local), f"{target}/{MANIFEST}")
        return f"{store.rstrip('/')}/{key}"
    root = _local(store)
    final = root / key
    if not (final / MANIFEST).exists():
        staging = root / f".staging-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            if final.exists():  # an unfinished earlier build of the same content
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    write_manifest(final, manifest)
    return str(final)
