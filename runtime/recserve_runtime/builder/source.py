"""Loading the model to optimize: the demo teacher, a recserve checkpoint, a TorchScript
model or an ONNX model (the last two with a feature spec file); checks that the file is
what it is declared to be and hashes to what it should, and that model, feature spec and
data agree. Every problem is a BuildError that names the file and the field."""

from __future__ import annotations

import itertools
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from recserve_runtime.artifacts import FeatureSpec, sha256_file
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.data.tabular import TabularData

# what --model-format / source.format take; auto: tell by the file's content
FORMATS = ("auto", "demo", "checkpoint", "torchscript", "onnx")
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
    """The model to compress. ``kind``: zoo (a recserve checkpoint: pruning and
    distillation possible), torchscript, or onnx (``model`` is then the file's path).
    ``inputs``: the model's input names in the order its forward() takes them."""

    kind: str
    model: Any
    spec: FeatureSpec
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, str] = ("sparse_ids", "dense")

    def torch_inputs(self, sparse: Any, dense: Any) -> tuple[Any, ...]:
        """(sparse, dense) in the order the torch model takes them."""
        by_name = {self.spec.sparse_input: sparse, self.spec.dense_input: dense}
        return tuple(by_name[name] for name in self.inputs)


def load_feature_spec(uri: str) -> FeatureSpec:
    """A FeatureSpec from a YAML or JSON file (a path or an fsspec URI)."""
    path = fetch(uri, "feature spec")
    if not path.is_file():
        raise BuildError(f"feature spec {uri} does not exist")
    try:
        return FeatureSpec.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError, json.JSONDecodeError) as exc:
        raise BuildError(f"feature spec {uri} is invalid: {exc}") from exc


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


def check_scores(out: Any, where: str, rows: int = 2) -> None:
    """A model's output on ``rows`` rows must be one finite score per row."""
    arr = np.asarray(out)
    if arr.shape not in ((rows,), (rows, 1)) or not np.isfinite(arr).all():
        raise BuildError(
            f"the model must return one finite score per row (shape [B] or [B, 1]); "
            f"with feature spec {where} it returned shape {list(arr.shape)} for {rows} rows"
        )


def probe_inputs(spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Two rows with the largest ids the spec allows (a table too small fails on them)."""
    sparse = np.array([[f.vocab_size - 1 for f in spec.sparse]] * 2, dtype=np.int64)
    return sparse, np.zeros((2, spec.n_dense), np.float32)


def check_runs(source: SourceModel, where: str) -> None:
    """Run a torch model on the largest ids the spec allows; it must return ``score`` [B]."""
    import torch

    sparse, dense = (torch.from_numpy(a) for a in probe_inputs(source.spec))
    try:
        with torch.no_grad():
            out = source.model(*source.torch_inputs(sparse, dense))
    except Exception as exc:  # the model's own error says what broke
        raise BuildError(
            f"feature spec {where} does not match the model: running it on "
            f"inputs shaped by the spec failed: {str(exc).splitlines()[0]}"
        ) from exc
    check_scores(out.numpy() if hasattr(out, "numpy") else out, where)


def torchscript_inputs(model: Any, spec: FeatureSpec, where: str) -> tuple[str, str]:
    """The names of forward()'s arguments, in order, matched to the spec's sparseInput and
    denseInput (by name: a model may take them in either order)."""
    names = [a.name for a in model.forward.schema.arguments][1:]  # [0] is self
    wanted = (spec.sparse_input, spec.dense_input)
    if len(names) != 2 or set(names) != set(wanted):
        raise BuildError(
            f"the TorchScript model's forward({', '.join(names)}) does not take the inputs "
            f"feature spec {where} names (sparseInput: {wanted[0]}, denseInput: "
            f"{wanted[1]}): set sparseInput and denseInput to the names of its two arguments "
            "(int64 [B, sparse features] ids and float32 [B, dense columns] values)"
        )
    return names[0], names[1]


def check_onnx(path: Path, spec: FeatureSpec, where: str) -> tuple[str, str]:
    """An ONNX model's graph inputs must be the spec's sparseInput (int64) and denseInput
    (float), and it must return one score per row; returns its input names in order."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    wanted = {spec.sparse_input: onnx.TensorProto.INT64, spec.dense_input: onnx.TensorProto.FLOAT}
    if sorted(names) != sorted(wanted):
        raise BuildError(
            f"the ONNX model {path.name} has inputs {', '.join(names) or '(none)'} but feature "
            f"spec {where} names sparseInput: {spec.sparse_input}, denseInput: "
            f"{spec.dense_input}: set them to the model's input names"
        )
    role = {spec.sparse_input: "sparseInput (int64 ids)", spec.dense_input: "denseInput (float)"}
    for graph_input in graph_inputs:
        elem = graph_input.type.tensor_type.elem_type
        if elem != wanted[graph_input.name]:
            raise BuildError(
                f"the ONNX model's input {graph_input.name} is "
                f"{onnx.TensorProto.DataType.Name(elem)}, but it is the feature spec's "
                f"{role[graph_input.name]}"
            )
    if len(model.graph.output) != 1:
        outputs = ", ".join(o.name for o in model.graph.output)
        raise BuildError(
            f"the ONNX model {path.name} has {len(model.graph.output)} outputs ({outputs}); "
            "it must have one: a score per row"
        )
    sparse, dense = probe_inputs(spec)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {spec.sparse_input: sparse, spec.dense_input: dense})[0]
    except Exception as exc:
        raise BuildError(
            f"feature spec {where} does not match the ONNX model: running it on inputs "
            f"shaped by the spec failed: {str(exc).splitlines()[0][:300]}"
        ) from exc
    check_scores(out, where)
    return names[0], names[1]


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


def fetch(uri: str, what: str) -> Path:
    """A local path for a model or spec URI: fsspec URIs (s3://, gs://, http(s)://,
    memory:// ...) are copied into a temporary folder first; plain paths and file:// are
    used as they are."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    import tempfile

    import fsspec

    target = Path(tempfile.mkdtemp(prefix="recserve-fetch-")) / (Path(uri).name or "file")
    try:
        fs, remote = fsspec.core.url_to_fs(uri)
        fs.get_file(remote, str(target))
    except Exception as exc:  # fsspec backends raise their own types (aiohttp, botocore ...)
        raise BuildError(
            f"{what} {uri} cannot be fetched ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); check the URI "
            "and access"
        ) from exc
    return target


def fetch_model(uri: str) -> Path:
    """A local path for ``--model`` (see :func:`fetch`)."""
    return fetch(uri, "model")


def detect_format(path: Path) -> str | None:
    """checkpoint, torchscript or onnx by the file's content; None if none of them."""
    if zipfile.is_zipfile(path):  # torch.save and torch.jit.save both write zip archives
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "checkpoint" if any(n.endswith("/data.pkl") for n in names) else None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    return "onnx" if len(model.graph.node) and len(model.graph.output) else None


def verify_sha256(path: Path, uri: str, expected: str) -> None:
    """The model file must hash to ``expected`` (source.sha256 / --model-sha256)."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise BuildError(
            f"model {uri} has sha256 {actual}, but source.sha256 (--model-sha256) says "
            f"{expected}: the file changed or is not the one meant; nothing was built"
        )


def load_source(
    arg: str,
    feature_spec: str | None,
    dataset: str,
    seed: int = 0,
    holdout_bp: int = 2000,
    fmt: str = "auto",
    sha256: str | None = None,
) -> SourceModel:
    """Resolve ``--model`` (``demo``, a path or a URI) into a checked SourceModel. The demo
    teacher is trained on the same split (``holdout_bp``) it is evaluated on. ``fmt``
    (source.format) and ``sha256`` (source.sha256) are checked before the model runs."""
    import torch

    from recserve_runtime.zoo.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise BuildError(f"unknown model format {fmt!r}: use one of {', '.join(FORMATS)}")
    if (fmt == "demo" and arg != "demo") or (arg == "demo" and fmt not in ("auto", "demo")):
        raise BuildError(
            f"model {arg!r} with format {fmt}: the demo format goes with the model `demo` only"
        )
    if arg == "demo":
        if sha256:
            raise BuildError(
                "source.sha256 (--model-sha256) checks a model file; the demo model is "
                "trained here, so it has none: leave sha256 out"
            )
        from recserve_runtime.train import ensure_teacher

        path = ensure_teacher(dataset, seed=seed, holdout_bp=holdout_bp)
    else:
        path = fetch_model(arg)
        if not path.is_file():
            raise BuildError(
                f"model file {path} does not exist: pass a checkpoint written by "
                "`recserve train`, or a TorchScript or ONNX file with --feature-spec"
            )
        if sha256:
            verify_sha256(path, arg, sha256)
    kind = detect_format(path)
    if kind is None:
        raise BuildError(
            f"{arg} is neither a recserve checkpoint, a TorchScript model nor an ONNX model "
            "(it may be truncated or corrupt); re-export it (torch.jit.save, torch.onnx.export) "
            "or retrain with `recserve train`"
        )
    if fmt not in ("auto", "demo") and kind != fmt:
        raise BuildError(
            f"model {arg} is declared {fmt} (source.format / --model-format) but the file is "
            f"a {kind} model: fix the format or the URI"
        )
    if kind == "checkpoint":
        try:
            model, spec, meta = load_checkpoint(path)
        except Exception as exc:
            raise BuildError(
                f"{arg} is a torch file but not a usable recserve checkpoint ({exc}): pass "
                "a checkpoint from `recserve train` (train it again if it is damaged), or "
                "export the model as TorchScript (torch.jit.save) or ONNX"
            ) from exc
        where = feature_spec or "(from the checkpoint)"
        if feature_spec is not None:
            spec = load_feature_spec(feature_spec)
            check_zoo_spec(model, spec, where)
        source = SourceModel(
            "zoo", model, spec, path.stem, meta, (spec.sparse_input, spec.dense_input)
        )
        check_runs(source, where)
        return source
    if feature_spec is None:
        raise BuildError(
            f"{arg} is a {kind} model: pass --feature-spec FILE (source.featureSpecUri: a "
            "YAML/JSON FeatureSpec) naming its inputs and describing their columns"
        )
    spec = load_feature_spec(feature_spec)
    if kind == "onnx":
        inputs = check_onnx(path, spec, feature_spec)
        return SourceModel("onnx", path, spec, path.stem, {}, inputs)
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise BuildError(
            f"{arg} cannot be loaded as a TorchScript model ({str(exc).splitlines()[0][:200]}); "
            "re-export it with torch.jit.save"
        ) from exc
    scripted.eval()
    inputs = torchscript_inputs(scripted, spec, feature_spec)
    check_torchscript(scripted)
    source = SourceModel("torchscript", scripted, spec, path.stem, {}, inputs)
    check_runs(source, feature_spec)
    return source
