"""Loading the model to optimize: the demo teacher, a zoo checkpoint, or a TorchScript
model with a feature spec file; checks that model, feature spec and data agree."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from recserve_runtime.artifacts import FeatureSpec
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.data.tabular import TabularData

FIX_EMBEDDING_BAG = (
    "replace nn.EmbeddingBag with nn.Embedding (one id per field; sum or mean the "
    "embeddings yourself), which the ONNX exporter supports"
)
FIX_CONTROL_FLOW = (
    "remove data-dependent control flow from forward() (use torch.where / masking), "
    "then script or trace the model again"
)


@dataclass
class SourceModel:
    """The model to compress. ``kind``: zoo (pruning/distillation possible) or torchscript."""

    kind: str
    model: Any
    spec: FeatureSpec
    name: str
    meta: dict[str, Any] = field(default_factory=dict)


def load_feature_spec(path: Path) -> FeatureSpec:
    """A FeatureSpec from a YAML or JSON file."""
    if not path.is_file():
        raise BuildError(f"feature spec {path} does not exist")
    try:
        return FeatureSpec.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError, json.JSONDecodeError) as exc:
        raise BuildError(f"feature spec {path} is invalid: {exc}") from exc


def _source_line(text: str) -> str:
    """'File ..., line N: <the highlighted code line>' from a TorchScript source range."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    code = next(
        (a for a, b in itertools.pairwise(lines) if b and set(b) <= {"~", "^"}),
        lines[1] if len(lines) > 1 else "",
    )
    return f"{lines[0]}: {code}" if lines else "forward()"


def check_torchscript(model: Any) -> None:
    """Reject TorchScript graphs the exporter cannot handle, naming the layer."""
    for name, module in model.named_modules():
        if getattr(module, "original_name", "") == "EmbeddingBag":
            raise BuildError(
                f"unsupported layer {name or '<root>'} (EmbeddingBag): {FIX_EMBEDDING_BAG}"
            )
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # freezing inlines submodules and folds attribute-only branches, so what is left
        # of prim::If / prim::Loop depends on the data
        graph = torch.jit.freeze(model.eval()).graph
    for node in graph.nodes():
        kind = node.kind()
        at = _source_line(node.sourceRange())
        if kind == "aten::embedding_bag":
            raise BuildError(f"unsupported op embedding_bag at `{at}`: {FIX_EMBEDDING_BAG}")
        if kind in ("prim::If", "prim::Loop"):
            raise BuildError(
                f"unsupported data-dependent control flow ({kind}) at `{at}`: {FIX_CONTROL_FLOW}"
            )


def check_zoo_spec(model: Any, spec: FeatureSpec, where: str) -> None:
    """The spec's columns must match the model's tables and dense width."""
    vocab = model.config.vocab_sizes
    if len(spec.sparse) != len(vocab):
        raise BuildError(
            f"feature spec {where} has {len(spec.sparse)} sparse features but "
            f"the model has {len(vocab)} embedding tables"
        )
    for f, rows in zip(spec.sparse, vocab, strict=True):
        if f.vocab_size > rows:
            raise BuildError(
                f"feature spec {where}: {f.name} has vocab_size {f.vocab_size} "
                f"but the model's table holds only {rows} rows"
            )
    n_dense = sum(f.width for f in spec.dense)
    if n_dense != model.config.n_dense:
        raise BuildError(
            f"feature spec {where} has {n_dense} dense columns but the model "
            f"takes {model.config.n_dense}"
        )


def check_runs(model: Any, spec: FeatureSpec, where: str) -> None:
    """Run the model on the largest ids the spec allows; it must return ``score`` [B]."""
    import numpy as np
    import torch

    n_dense = sum(f.width for f in spec.dense)
    sparse = torch.tensor([[f.vocab_size - 1 for f in spec.sparse]] * 2, dtype=torch.int64)
    dense = torch.zeros(2, n_dense)
    try:
        with torch.no_grad():
            out = model(sparse, dense)
    except Exception as exc:  # the model's own error says what broke
        raise BuildError(
            f"feature spec {where} does not match the model: running it on "
            f"inputs shaped by the spec failed: {str(exc).splitlines()[0]}"
        ) from exc
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2,) or not np.isfinite(out.numpy()).all():
        raise BuildError(
            f"the model must return one finite score per row (shape [B]); "
            f"with feature spec {where} it returned shape {list(shape)}"
        )


def check_data(spec: FeatureSpec, data: TabularData) -> None:
    """The data set must fit the model's feature spec."""
    if (
        len(spec.sparse) != len(data.spec.sparse)
        or sum(f.width for f in spec.dense) != data.n_dense
    ):
        raise BuildError(
            f"dataset {data.name} has {len(data.spec.sparse)} sparse / {data.n_dense} dense "
            f"columns but the model's feature spec has {len(spec.sparse)} / "
            f"{sum(f.width for f in spec.dense)}: pass the dataset the model was trained on"
        )
    for f, g in zip(spec.sparse, data.spec.sparse, strict=True):
        if g.vocab_size > f.vocab_size:
            raise BuildError(
                f"dataset {data.name}: feature {g.name} has ids up to "
                f"{g.vocab_size - 1} but the model's {f.name} takes < {f.vocab_size}"
            )


def fetch_model(uri: str) -> Path:
    """A local path for ``--model``: fsspec URIs (s3://, gs://, memory:// ...) are copied
    into a temporary cache folder first; plain paths and file:// are used as they are."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    import tempfile

    import fsspec

    target = Path(tempfile.mkdtemp(prefix="recserve-model-")) / Path(uri).name
    try:
        fs, remote = fsspec.core.url_to_fs(uri)
        fs.get_file(remote, str(target))
    except (OSError, ValueError, ImportError) as exc:
        raise BuildError(
            f"model {uri} cannot be fetched ({exc}); check the URI and access"
        ) from exc
    return target


def load_source(
    arg: str, feature_spec: Path | None, dataset: str, seed: int = 0, holdout_bp: int = 2000
) -> SourceModel:
    """Resolve ``--model`` (``demo`` or a path) into a checked SourceModel. The demo
    teacher is trained on the same split (``holdout_bp``) it is evaluated on."""
    import torch

    from recserve_runtime.zoo.checkpoint import FORMAT, load_checkpoint

    if arg == "demo":
        from recserve_runtime.train import ensure_teacher

        path = ensure_teacher(dataset, seed=seed, holdout_bp=holdout_bp)
    else:
        path = fetch_model(arg)
        if not path.is_file():
            raise BuildError(
                f"model file {path} does not exist: pass a checkpoint written by "
                "`recserve train`, or a TorchScript file with --feature-spec"
            )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raw = None
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        try:
            model, spec, meta = load_checkpoint(path)
        except Exception as exc:
            raise BuildError(f"checkpoint {path} is damaged ({exc}); train it again") from exc
        where = str(feature_spec) if feature_spec else "(from the checkpoint)"
        if feature_spec is not None:
            spec = load_feature_spec(feature_spec)
            check_zoo_spec(model, spec, where)
        check_runs(model, spec, where)
        return SourceModel("zoo", model, spec, path.stem, meta)
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise BuildError(
            f"{path} is neither a recserve checkpoint nor a TorchScript model (it may be "
            f"truncated or corrupt: {str(exc).splitlines()[0][:200]}); re-export it with "
            "torch.jit.save or retrain with `recserve train`"
        ) from exc
    if feature_spec is None:
        raise BuildError(
            f"{path} is a TorchScript model: pass --feature-spec FILE (YAML/JSON "
            "FeatureSpec) describing its sparse_ids and dense columns"
        )
    spec = load_feature_spec(feature_spec)
    scripted.eval()
    check_torchscript(scripted)
    check_runs(scripted, spec, str(feature_spec))
    return SourceModel("torchscript", scripted, spec, path.stem, {})
