"""The artifact contract shared by the builder, the profiler, the server and the operator.

Everything a build or profile Job writes and something else reads is defined here, once:
the store layout (:class:`StoreLayout`), the variant manifest (:class:`Manifest`), the
build report (:class:`BuildReport`) and the per-pool profile report
(:class:`ProfileReport`). Writers and readers both go through these types. The module
is pure pydantic (no torch, no onnxruntime, no server), so the operator imports it too.

A variant is a folder named by the first 16 hex digits of its ONNX file's sha256
(content-addressed), holding ``model.onnx`` and ``manifest.json``::

    <variants>/<sha256[:16]>/model.onnx
    <variants>/<sha256[:16]>/manifest.json

The manifest is written last, so a folder without one is an unfinished build and is
never loaded. Stores are local paths or any fsspec URI.

The operator's artifact store holds one build per RecModel and content hash::

    <store>/<namespace>/<model>/<contentHash>/report.json          BuildReport (last)
    <store>/<namespace>/<model>/<contentHash>/variants/<key>/      variant folders
    <store>/<namespace>/<model>/<contentHash>/profile-<pool>.json  ProfileReport per pool
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Generic, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
VARIANTS_DIR = "variants"
SCHEMA_VERSION = 1
# Hex digits of a model file's sha256 that name its variant folder.
VARIANT_KEY_LENGTH = 16
# The p99 latency target of one ranking request when nobody sets one: the
# OptimizationPolicy's default, and that of the runtime's command lines.
P99_TARGET_MS_DEFAULT = 25

P = TypeVar("P", bound=PurePath)


def variant_key(sha256: str) -> str:
    """The folder name of a variant whose model file has this sha256."""
    return sha256[:VARIANT_KEY_LENGTH]


@dataclass(frozen=True)
class StoreLayout(Generic[P]):
    """Every path of one build in the artifact store (see the module docstring).

    Generic in the path type: the operator uses a local :class:`~pathlib.Path` to read
    what Jobs wrote, and a :class:`~pathlib.PurePosixPath` under the pods' mount point
    to tell Jobs and servers where to write and read.
    """

    root: P

    @staticmethod
    def of(store: P, namespace: str, model: str, content_hash: str) -> StoreLayout[P]:
        """The build of ``model`` (in ``namespace``) at ``content_hash`` under ``store``."""
        return StoreLayout(store / namespace / model / content_hash)

    @property
    def variants(self) -> P:
        """The folder of variant folders (`recserve optimize --out`)."""
        return self.root / VARIANTS_DIR

    @property
    def report(self) -> P:
        """The build report, written last by the build Job (`recserve optimize --json`)."""
        return self.root / REPORT_FILE

    def variant(self, key: str) -> P:
        """One variant's folder (``key``: see :func:`variant_key`)."""
        return self.variants / key

    def profile(self, pool: str, round_: int = 0) -> P:
        """The profile report of every variant on one HardwarePool; ``round_`` > 0: the
        report of a re-profile on drift."""
        suffix = f"-r{round_}" if round_ > 0 else ""
        return self.root / f"profile-{pool}{suffix}.json"


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Side(StrEnum):
    """Where a feature's value comes from in a ranking request."""

    USER = "user"  # same for every candidate of a request (user context)
    ITEM = "item"  # differs per candidate


class TensorSpec(_Wire):
    """One model input or output: name, dtype, shape (-1 for the batch axis)."""

    name: str
    dtype: str = Field(description="numpy dtype name: int64, float32, float16 ...")
    shape: list[int]


class Oov(StrEnum):
    """What an id outside a table's vocabulary ``[0, vocab_size)`` becomes."""

    HASH = "hash"  # id modulo vocab_size (string values are hashed to an id first)
    ID = "id"  # the feature's oovId (default vocab_size - 1, the model's OOV row)


class SparseFeature(_Wire):
    """A categorical feature: one column of the int64 sparse input."""

    name: str
    vocab_size: int = Field(ge=1, description="ids must be in [0, vocab_size)")
    side: Side
    column: str | None = Field(
        default=None, description="Data column that feeds it (custom eval data; default: name)."
    )
    oov: Oov | None = Field(
        default=None,
        description="How ids outside [0, vocab_size) are mapped, in the builder's data and "
        "in served requests: hash (id modulo vocab_size; needed for string values) or id "
        "(oovId). Unset: such an id fails the build and gets HTTP 400 when served.",
    )
    oov_id: int | None = Field(
        default=None, ge=0, description="With oov: id, the id they become (default vocab_size - 1)."
    )

    @property
    def data_column(self) -> str:
        """The data column that feeds this feature."""
        return self.column or self.name

    @property
    def oov_row(self) -> int:
        """The id out-of-vocabulary ids become under ``oov: id``."""
        return self.vocab_size - 1 if self.oov_id is None else self.oov_id

    @model_validator(mode="after")
    def _oov_id_in_vocabulary(self) -> Self:
        if self.oov_id is not None and (self.oov != Oov.ID or self.oov_id >= self.vocab_size):
            raise ValueError(
                f"{self.name}: oovId needs oov: id and must be < vocabSize ({self.vocab_size})"
            )
        return self


class DenseFeature(_Wire):
    """A numeric feature: ``width`` columns of the float32 dense input."""

    name: str
    width: int = Field(default=1, ge=1)
    side: Side
    columns: list[str] | None = Field(
        default=None,
        description="Data columns that feed it, one per width (custom eval data; default: "
        "name when width is 1, name_0 .. name_<width-1> otherwise).",
    )
    fill: float | None = Field(
        default=None,
        description="Value for missing (NaN/empty) entries in custom eval data; unset: "
        "missing values fail the build, with their count. Infinities always do.",
    )

    @property
    def data_columns(self) -> list[str]:
        """The data columns that feed this feature, in order."""
        if self.columns is not None:
            return self.columns
        return [self.name] if self.width == 1 else [f"{self.name}_{i}" for i in range(self.width)]

    @model_validator(mode="after")
    def _one_column_per_width(self) -> Self:
        if self.columns is not None and len(self.columns) != self.width:
            raise ValueError(
                f"{self.name}: columns lists {len(self.columns)} columns for width {self.width}"
            )
        return self


class FeatureSpec(_Wire):
    """How request features map onto the model's input tensors (in column order), and,
    for custom eval data, which data columns feed them."""

    sparse_input: str = Field(
        default="sparse_ids", description="Name of the model's int64 [B, sparse] input."
    )
    dense_input: str = Field(
        default="dense", description="Name of the model's float32 [B, dense] input."
    )
    sparse: list[SparseFeature]
    dense: list[DenseFeature] = Field(default_factory=list)
    label: str = Field(
        default="label", description="Data column holding the 0/1 label (custom eval data)."
    )

    @property
    def n_dense(self) -> int:
        """Columns of the dense input."""
        return sum(f.width for f in self.dense)


class Recipe(_Wire):
    """How the variant was derived (mirrors ModelVariant.spec.recipe)."""

    precision: str = "fp32"
    quantization: str = "none"
    pruning_ratio_basis_points: int = 0
    student: dict[str, Any] | None = None


class ArtifactFile(_Wire):
    file: str = MODEL_FILE
    sha256: str
    size_bytes: int


class ProfilePoint(_Wire):
    batch_size: int
    p50_us: float
    p99_us: float
    samples_per_second: float


class Throughput(Protocol):
    """A profiled batch size and its throughput (a :class:`ProfilePoint` or the like)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def samples_per_second(self) -> float: ...


def call_microseconds(points: Sequence[Throughput], batch: float) -> float:
    """Model time of one call of ``batch`` rows from profiled points: piecewise linear
    between profiled batch sizes (time per call = rows / throughput), the smallest
    call's time below them, the largest one's time per row above them; 0 without any."""
    known = sorted(
        (p.batch_size, p.batch_size / p.samples_per_second * 1e6)
        for p in points
        if p.samples_per_second > 0
    )
    if not known:
        return 0.0
    if batch <= known[0][0]:
        return known[0][1]
    for (b0, t0), (b1, t1) in itertools.pairwise(known):
        if batch <= b1:
            return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
    b_last, t_last = known[-1]
    return t_last * batch / b_last


def log_interpolate(pairs: Sequence[tuple[int, float]], x: float) -> float | None:
    """y at ``x`` from (x, y) pairs (x > 0): linear in log(x) between them, the nearest
    y beyond them; None without pairs."""
    known = sorted(pairs)
    if not known:
        return None
    if x <= known[0][0]:
        return known[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(known):
        if x <= x1:
            return y0 + (y1 - y0) * math.log(x / x0) / math.log(x1 / x0)
    return known[-1][1]


class Profile(_Wire):
    hardware: str
    execution_provider: str
    fallback_reason: str | None = None
    threads: int
    clock: str = Field(
        default="wall",
        description="What samplesPerSecond counts seconds of: cpu (the profiling thread's "
        "CPU time: one core's throughput, whatever else the machine runs) or wall.",
    )
    points: list[ProfilePoint] = Field(default_factory=list)


def _write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a hidden temp file beside ``path``, then rename it into place:
    readers see either no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


class _Report(_Wire):
    """A JSON report file: read and written whole, through its type."""

    @classmethod
    def read(cls, path: Path) -> Self:
        """Parse the file (pydantic ``ValidationError`` names the bad field)."""
        return cls.model_validate_json(path.read_text())

    def write(self, path: Path) -> Path:
        """Write the file atomically (its presence means it is complete)."""
        return _write_atomic(path, self.model_dump_json(by_alias=True, indent=2))


class ProfiledVariant(Profile):
    """One variant's profile in a :class:`ProfileReport`."""

    name: str = Field(description="Variant name (the manifest's).")


class ServingPoint(_Wire):
    """The real server driven to saturation with ranking requests of one size, at one
    batch row ceiling."""

    candidates: int = Field(ge=1, description="Candidates (rows) per /v1/rank request.")
    max_batch_rows: int = Field(default=0, description="The server's batch row ceiling.")
    measured_requests_per_second: float = Field(
        description="Successful requests per wall-clock second in this run (depends on how "
        "much CPU the machine gave the server; see serverCores)."
    )
    server_cores: float = Field(description="Server CPU seconds per wall-clock second.")
    server_microseconds_per_request: float = Field(
        description="Server process time (CPU time of all its threads) per successful "
        "request: the median over the timed windows."
    )
    spread_percent: float = Field(
        default=0.0, description="(max - min) / median of the windows' time per request."
    )
    mean_batch_rows: float = Field(description="Rows per model call the server ran.")
    requests_per_batch: float = Field(default=1.0, description="Requests per model call.")
    compute_microseconds_per_request: float = Field(
        description="Model compute for one request at that batch, from the compute profile."
    )
    overhead_microseconds_per_request: float = Field(
        description="serverMicrosecondsPerRequest - computeMicrosecondsPerRequest."
    )
    rejected: int = Field(default=0, description="Requests answered other than 200.")
    concurrency: int = Field(
        default=0, description="Client connections used (fewer than asked where refused)."
    )


class ServingOverhead(_Wire):
    """What serving costs beyond the model: HTTP, JSON decoding and validation, batching,
    the answer. Fitted from :class:`ServingPoint` runs as
    ``perRequest + perRow x r + perBatch / k`` for requests of ``r`` rows served ``k`` to
    a batch; one replica's time for such a request at batch ``B`` (``k = B / r``) is then
    ``compute(B) / k`` plus that (additive: the pod's CPU limit serialises the HTTP side
    and the model)."""

    per_request_microseconds: float = Field(ge=0)
    per_row_microseconds: float = Field(ge=0)
    per_batch_microseconds: float = Field(default=0.0, ge=0)
    variant: str = Field(description="The variant the server ran (name).")
    threads: int = Field(description="onnxruntime intra-op threads of the server.")
    workers: int = Field(default=1, description="Model threads of the server.")
    concurrency: int = Field(description="Closed-loop client connections.")
    seconds_per_size: float = 0.0
    clock: str = Field(
        default="cpu",
        description="cpu: server process CPU time (unaffected by other work on the "
        "machine); wall: wall-clock time, where the CPU time cannot be read.",
    )
    points: list[ServingPoint] = Field(default_factory=list)

    def requests_per_batch(self, candidates: int) -> float | None:
        """Requests per model call the saturated server ran, with no batch ceiling in the
        way, at ``candidates`` rows per request: interpolated over the calibration's
        points in log(candidates), the nearest beyond them; None without such points.

        A server whose HTTP side is slower than its model batches what arrived during
        the last call, however high its ceiling: few requests per call for a fast model."""
        seen = [
            (p.candidates, p.requests_per_batch)
            for p in self.points
            if p.max_batch_rows > p.candidates
        ]
        return log_interpolate(seen, candidates)

    def microseconds_per_request(self, candidates: int, requests_per_batch: float = 1) -> float:
        """Serving overhead of one request of ``candidates`` rows served
        ``requests_per_batch`` to a model call (model compute aside)."""
        return (
            self.per_request_microseconds
            + self.per_row_microseconds * candidates
            + self.per_batch_microseconds / max(requests_per_batch, 1.0)
        )


class ProfileReport(_Report):
    """``profile-<pool>.json``: `recserve profile` over every variant of a build, on one
    pool's node (written by the pool's profile Job, read by the operator)."""

    hardware: str
    execution_provider: str | None = Field(
        default=None, description="onnxruntime provider used (the last variant's)."
    )
    fallback_reason: str | None = Field(
        default=None, description="Why the hardware's wanted provider was not used, if so."
    )
    threads: int = 0
    variants: dict[str, ProfiledVariant] = Field(
        default_factory=dict, description="Profile per variant folder name."
    )
    serving: ServingOverhead | None = Field(
        default=None,
        description="Served-path calibration (`recserve profile --serving`); absent in "
        "reports written without it, whose capacity then counts model compute only.",
    )


class BuiltVariant(_Wire):
    """One variant's row in the build report."""

    model_config = ConfigDict(extra="allow")

    name: str
    location: str
    recipe: Recipe
    size_bytes: int
    metrics: dict[str, float] = Field(default_factory=dict)
    accepted: bool
    pareto: bool
    profile: Profile | None = None
    p99_us_at_slo_batch: float | None = None


class SkippedVariant(_Wire):
    """A variant the build could not make, and why."""

    name: str
    reason: str


class BuildReport(_Report):
    """``report.json``: the outcome of `recserve optimize` (written last by the build Job,
    so its presence means the build finished; read by the operator).

    Fields beyond these are kept (``extra="allow"``): the report also carries free-form
    facts for people (student search, options), which readers do not depend on.
    """

    model_config = ConfigDict(extra="allow")

    model: dict[str, Any] = Field(default_factory=dict, description="Source model facts.")
    hardware: str
    threads: int
    teacher: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    variants: list[BuiltVariant] = Field(default_factory=list)
    pareto_front: list[str] = Field(default_factory=list)
    selected: str | None = None
    selection_reason: str = ""
    student_search: list[dict[str, Any]] = Field(default_factory=list)
    skipped: list[SkippedVariant] = Field(default_factory=list)
    seconds: float = 0.0


class FeatureBins(_Wire):
    """One input column's distribution in the training data, as bins (data drift).

    A dense column: ``edges`` are the inner bin edges (its deciles), ``shares`` the
    training rows in each of the ``len(edges) + 1`` bins. A sparse field: ``ids`` are its
    most frequent ids, ``shares`` their share of the rows and, last, that of every other id.
    """

    feature: str = Field(description="Sparse feature name, or dense data column name.")
    kind: str = Field(pattern="^(sparse|dense)$")
    column: int = Field(ge=0, description="Column of the model's sparse or dense input.")
    side: Side = Field(
        default=Side.ITEM,
        description="user: one value per request (a ranking request repeats it for every "
        "candidate), so live windows count it once per request; item: once per row.",
    )
    edges: list[float] = Field(default_factory=list)
    ids: list[int] = Field(default_factory=list)
    shares: list[float]

    @model_validator(mode="after")
    def _bins_match(self) -> Self:
        bins = len(self.edges if self.kind == "dense" else self.ids) + 1
        if len(self.shares) != bins:
            raise ValueError(f"{self.feature}: {len(self.shares)} shares for {bins} bins")
        return self


class DataReference(_Wire):
    """The training data's distribution per input column, written by the build into every
    variant's manifest; servers compare live inputs with it (population stability index,
    :mod:`recserve_runtime.datadrift`)."""

    rows: int = Field(ge=1, description="Training rows the bins were computed from.")
    features: list[FeatureBins]


class Manifest(_Wire):
    """manifest.json of one variant."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(description="Variant name, e.g. int8-dynamic, student-w256-d1-int8")
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="Source model facts: name, arch, dataset, synthetic (bool)",
    )
    recipe: Recipe = Field(default_factory=Recipe)
    artifact: ArtifactFile
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    feature_spec: FeatureSpec
    metrics: dict[str, float] = Field(
        default_factory=dict, description="auc, logLoss, aucDropRelPct ... on held-out data"
    )
    profile: Profile | None = None
    data_reference: DataReference | None = Field(
        default=None,
        description="Training-data bins per input column (absent in older manifests: "
        "no data drift figures).",
    )
    recalibrated_from: str | None = Field(
        default=None,
        description="`recserve recalibrate`: the variant whose graph this one shares, with "
        "activation ranges calibrated on recent requests instead of training rows (same "
        "operators and shapes, so the same latency profile on every pool).",
    )

    @property
    def accuracy_drop_basis_points(self) -> int:
        """Relative AUC drop versus the source model in basis points (never negative);
        ``metrics.aucDropRelPct`` is in percent."""
        return max(round(self.metrics.get("aucDropRelPct", 0.0) * 100), 0)


class IntegrityError(RuntimeError):
    """The model file does not match the manifest's sha256 or size."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(variant_dir: Path) -> Manifest:
    """Read and parse a variant folder's manifest.json."""
    return Manifest.model_validate_json((variant_dir / MANIFEST).read_text())


def verify(variant_dir: Path, manifest: Manifest | None = None) -> Path:
    """Check the model file against the manifest; returns its path or raises IntegrityError."""
    manifest = manifest or load_manifest(variant_dir)
    path = variant_dir / manifest.artifact.file
    if not path.exists():
        raise IntegrityError(f"{path} is missing")
    size = path.stat().st_size
    if size != manifest.artifact.size_bytes:
        raise IntegrityError(
            f"{path}: size {size} bytes, manifest says {manifest.artifact.size_bytes}"
        )
    actual = sha256_file(path)
    if actual != manifest.artifact.sha256:
        raise IntegrityError(f"{path}: sha256 {actual}, manifest says {manifest.artifact.sha256}")
    return path


def write_manifest(variant_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename): it marks the variant complete."""
    text = json.dumps(manifest.model_dump(by_alias=True, mode="json"), indent=2)
    return _write_atomic(variant_dir / MANIFEST, text)
