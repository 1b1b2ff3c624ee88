"""The server's request handling, independent of the HTTP stack.

``InferenceServer.handle`` maps (method, path, headers, body) to a :class:`Response`;
``server/asgi.py`` plugs it into uvicorn. Error mapping (KServe-style, fixed): bad input
400, unknown model or path 404, wrong method 405, overload 429 + Retry-After, not ready
or draining 503 + Retry-After, client deadline passed before compute 504.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from recserve_runtime import __version__
from recserve_runtime.datadrift import DriftSketch
from recserve_runtime.server.batcher import Batcher, DeadlineExceeded, Overloaded
from recserve_runtime.server.fidelity import FidelitySampler
from recserve_runtime.server.metrics import ServerMetrics
from recserve_runtime.server.model import LoadedModel, ModelLoadError, load
from recserve_runtime.server.policy import Limits, retry_after_header
from recserve_runtime.server.protocol import HEADER_LENGTH, BadInput, Validator
from recserve_runtime.server.request_sample import CONTENT_TYPE as SAMPLE_CONTENT_TYPE
from recserve_runtime.server.request_sample import RequestSample

log = logging.getLogger("recserve.server")

DEADLINE_HEADER = "x-deadline-ms"
JSON = "application/json"
# Shed load (429) when the event loop runs this share of the SLO late: the HTTP side,
# not the model, is then the bottleneck, and queueing more would break the SLO.
# Only while this many requests are inside the server: a late loop with little in flight
# means the machine is busy with other work, and refusing would not help anyone.
LOOP_LAG_FRACTION = 0.4
LOOP_LAG_MIN_INFLIGHT = 8
LIMIT_FIELDS_MS = {"slo_p99_ms": "slo_p99_s", "max_queue_delay_ms": "max_queue_delay_s"}


@dataclass
class Response:
    """What the HTTP layer sends back."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON response (numpy arrays serialized natively)."""
    return Response(
        status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), JSON, headers or []
    )


def error(status: int, message: str, retry_after_s: float | None = None) -> Response:
    """``{"error": message}`` with Retry-After when given."""
    headers = [] if retry_after_s is None else [("retry-after", retry_after_header(retry_after_s))]
    return json_response(status, {"error": message}, headers)


class LoopLag:
    """Measures how late the event loop runs (a decaying maximum of timer overshoot)."""

    def __init__(self, interval_s: float = 0.005, decay: float = 0.7) -> None:
        self.interval_s = interval_s
        self.decay = decay
        self.lag_s = 0.0

    async def run(self) -> None:
        """Sample forever (run as a task)."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval_s)
            late = max(0.0, loop.time() - t - self.interval_s)
            self.lag_s = max(late, self.lag_s * self.decay)


@dataclass
class ServeConfig:
    """Everything `recserve serve` takes."""

    variant: str
    hardware: str = "cpu"
    model_name: str | None = None
    workers: int = 1
    intra_op_threads: int = 1
    limits: Limits = field(default_factory=Limits)
    limits_file: Path | None = None
    drain_timeout_s: float = 30.0
    emulate_us_per_row: float = 0.0
    emulate_us_per_batch: float = 0.0
    # benchmark aid: JSON {"emulate_us_per_row": x, "emulate_us_per_batch": y,
    # "speedup_by_precision": {"int8": 2}}, re-read when it changes (the emulated device
    # slows down or speeds up mid-run)
    emulate_file: Path | None = None
    reference_variant: str | None = None  # FP32 reference, for fidelity sampling
    fidelity_sample_bp: int = 0
    # rows per data drift window (PSI of each input column against the manifest's
    # training-data bins); 0: no sketch
    data_drift_window_rows: int = 2000
    # rows of answered requests kept for recalibration (GET /admin/request-sample); 0: none
    request_sample_rows: int = 0
    # the sample covers the last one to two windows of this many seconds; 0: every row
    request_sample_seconds: float = 0.0
    admin_token: str | None = None  # Bearer token the admin API requires, if any


def limits_to_doc(limits: Limits) -> dict[str, Any]:
    """Limits as the admin API shows them (milliseconds for times)."""
    doc = asdict(limits)
    for ms, s in LIMIT_FIELDS_MS.items():
        doc[ms] = doc.pop(s) * 1000.0
    return doc


def limits_from_doc(current: Limits, doc: Any) -> Limits:
    """Merge a partial admin document into a copy of ``current``; BadInput on bad fields."""
    if not isinstance(doc, dict):
        raise BadInput("body", "must be a JSON object")
    merged = asdict(current)
    for key, value in doc.items():
        target = LIMIT_FIELDS_MS.get(key, key)
        if target not in merged or key in LIMIT_FIELDS_MS.values():
            raise BadInput(key, f"unknown limit; known: {sorted(limits_to_doc(current))}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadInput(key, f"must be a number, got {value!r}")
        if isinstance(merged[target], int) and not isinstance(merged[target], bool):
            if value != int(value):
                raise BadInput(key, f"must be an integer, got {value!r}")
            value = int(value)
        merged[target] = value / 1000.0 if key in LIMIT_FIELDS_MS else value
    limits = Limits(**merged)
    try:
        limits.validate()
    except ValueError as exc:
        raise BadInput("body", str(exc)) from None
    return limits


class InferenceServer:
    """One model behind OIP v2 + /v1/rank, with batching, admission and metrics."""

    def __init__(self, config: ServeConfig) -> None:
        config.limits.validate()
        self.config = config
        self.metrics = ServerMetrics()
        self.model: LoadedModel | None = None
        self.validator: Validator | None = None
        self.batcher: Batcher | None = None
        self.not_ready_reason: str | None = "loading"
        self.draining = False
        self.inflight = 0
        self._watchers: list[asyncio.Task[None]] = []  # the watched files
        self.lag = LoopLag()
        self._lag_task: asyncio.Task[None] | None = None
        self.fidelity: FidelitySampler | None = None
        self.sketch: DriftSketch | None = None
        self.request_sample: RequestSample | None = None
        self.name = config.model_name or "model"
        self.version = "1"

    # --- lifecycle ----------------------------------------------------------------

    async def startup(self) -> None:
        """Load the model off the event loop; on failure stay up and not ready."""
        self.metrics.ready.set(0)
        self._lag_task = asyncio.create_task(self.lag.run())
        cfg = self.config
        try:
            model = await asyncio.to_thread(load, cfg.variant, cfg.hardware, cfg.intra_op_threads)
        except ModelLoadError as exc:
            self.not_ready_reason = f"{exc.reason}: {exc}"
            self._name_from_manifest()
            self.metrics.load_failures.labels(exc.reason).inc()
            log.error("model load failed reason=%s detail=%s", exc.reason, exc)
            return
        self._install(model)
        if cfg.reference_variant and cfg.fidelity_sample_bp > 0:
            await self._start_fidelity(cfg.reference_variant, cfg.fidelity_sample_bp)
        for path, apply, what in (
            (cfg.limits_file, self._set_limits, "limits"),
            (cfg.emulate_file, self._set_emulation, "emulated device"),
        ):
            if path is not None:
                self._watchers.append(asyncio.create_task(_watch_json(path, apply, what)))

    async def _start_fidelity(self, variant: str, sample_bp: int) -> None:
        """Load the FP32 reference and start sampling; a reference that does not load
        costs the fidelity figures, not the service (logged, counted)."""
        cfg = self.config
        try:
            reference = await asyncio.to_thread(load, variant, cfg.hardware, cfg.intra_op_threads)
        except ModelLoadError as exc:
            self.metrics.load_failures.labels(exc.reason).inc()
            log.error("reference variant not loaded, no fidelity sampling: %s", exc)
            return
        self.fidelity = FidelitySampler(reference.run, sample_bp / 10000, self.metrics)
        self.fidelity.start()
        log.info("fidelity sampling share=%.4f reference=%s", sample_bp / 10000, variant)

    def _publish_psi(self, by_feature: dict[str, float], rows: int) -> None:
        """A data drift window ended: its PSI per input column, as gauges."""
        for feature, value in by_feature.items():
            self.metrics.feature_psi.labels(feature).set(value)
        self.metrics.feature_window_rows.set(rows)
        self.metrics.feature_window_end.set(time.time())

    def _name_from_manifest(self) -> None:
        """Keep the model's name when only its file is bad, so its routes answer 503."""
        if self.config.model_name:
            return
        try:
            from recserve_runtime import artifacts
            from recserve_runtime.server.model import localize

            self.name = artifacts.load_manifest(localize(self.config.variant)).name
        except Exception:  # the manifest itself is unreadable: keep the default name
            pass

    def _install(self, model: LoadedModel) -> None:
        cfg = self.config
        m = model.manifest
        self.model = model
        self.name = cfg.model_name or m.name
        self.version = m.artifact.sha256[:16]
        self.validator = Validator(m, cfg.limits.max_batch_rows)
        self.batcher = Batcher(
            model.run,
            cfg.limits,
            self.metrics,
            cfg.workers,
            cfg.emulate_us_per_row,
            cfg.emulate_us_per_batch,
        )
        self.batcher.start(asyncio.get_running_loop())
        # warm up: first runs allocate arenas
        for rows in (1, 64):
            model.run(
                np.zeros((rows, model.n_sparse), np.int64),
                np.zeros((rows, model.n_dense), np.float32),
            )
        self.metrics.load_seconds.set(model.load_seconds)
        if cfg.request_sample_rows > 0:
            self.request_sample = RequestSample(
                cfg.request_sample_rows,
                model.n_sparse,
                model.n_dense,
                window_s=cfg.request_sample_seconds,
            )
        if m.data_reference is not None and cfg.data_drift_window_rows > 0:
            self.sketch = DriftSketch(
                m.data_reference,
                self._publish_psi,
                cfg.data_drift_window_rows,
                on_drop=self.metrics.feature_sketch_dropped.inc,
            )
            self.sketch.start()
        provider = model.providers[0] if model.providers else "none"
        self.metrics.variant_info.labels(
            m.name, m.artifact.sha256, m.recipe.precision, cfg.hardware, provider
        ).set(1)
        self.metrics.provider_fallback.labels(
            cfg.hardware, "fallback" if model.fallback_reason else provider, provider
        ).set(1 if model.fallback_reason else 0)
        if model.fallback_reason:
            log.warning("execution provider fallback: %s", model.fallback_reason)
        log.info(
            "model loaded variant=%s sha256=%s provider=%s load_seconds=%.3f",
            m.name, m.artifact.sha256[:16], provider, model.load_seconds,
        )  # fmt: skip
        self.not_ready_reason = None
        self.metrics.ready.set(1)

    async def shutdown(self) -> None:
        """Stop admitting, finish queued work, stop the workers."""
        self.draining = True
        self.metrics.ready.set(0)
        for task in (*self._watchers, self._lag_task):
            if task is not None:
                task.cancel()
        deadline = time.monotonic() + self.config.drain_timeout_s
        while (self.inflight or (self.batcher and self.batcher.busy)) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.stop, 5.0)
        if self.fidelity is not None:
            await asyncio.to_thread(self.fidelity.stop)
        if self.sketch is not None:
            await asyncio.to_thread(self.sketch.stop)
        log.info("drained and stopped inflight=%d", self.inflight)

    def _set_emulation(self, doc: Any) -> None:
        """Apply an emulated-device file: the per-row and per-batch costs (microseconds),
        divided by the speed-up of the variant's precision (an INT8 variant on a device
        with fast integer kernels: emulated variants then differ as their profiles say)."""
        cfg = self.config
        try:
            per_row = float(doc.get("emulate_us_per_row", cfg.emulate_us_per_row))
            per_batch = float(doc.get("emulate_us_per_batch", cfg.emulate_us_per_batch))
            precision = self.model.manifest.recipe.precision if self.model else "fp32"
            speedup = float((doc.get("speedup_by_precision") or {}).get(precision, 1.0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadInput("$", f"emulated-device costs must be numbers: {exc}") from None
        if per_row < 0 or per_batch < 0 or speedup <= 0:
            raise BadInput("$", "costs must be >= 0 and speed-ups > 0")
        if self.batcher is not None:
            self.batcher.set_emulation(per_row / speedup, per_batch / speedup)

    def _set_limits(self, doc: Any) -> Limits:
        limits = limits_from_doc(self.config.limits, doc)
        if self.batcher is not None:
            self.batcher.set_limits(limits)
        else:
            self.config.limits = limits
        if self.validator is not None:
            self.validator.max_batch_rows = limits.max_batch_rows
        return self.config.limits

    # --- dispatch -----------------------------------------------------------------

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request (never raises)."""
        endpoint = "other"
        start = time.perf_counter()
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            endpoint, resp = await self._route(method, path, headers, body)
        except BadInput as exc:
            resp = error(400, str(exc))
        except Exception as exc:  # last resort: the server survives any request
            log.exception("request failed path=%s", path)
            resp = error(500, f"internal error: {type(exc).__name__}")
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        self.metrics.requests.labels(endpoint, str(resp.status)).inc()
        if endpoint in ("infer", "rank"):
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
        return resp

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[str, Response]:
        parts = [p for p in path.split("/") if p]
        if parts == ["v1", "rank"]:
            return "rank", await self._only(method, "POST") or await self._rank(headers, body)
        if parts[:1] == ["v2"]:
            return await self._v2(method, parts[1:], headers, body)
        if parts == ["metrics"]:
            return "metrics", Response(200, self.metrics.render(), "text/plain; version=0.0.4")
        if parts[:1] == ["admin"]:
            # never on the inference port: anyone who may rank could set the limits
            return "other", error(404, "the admin API is served on its own port (--admin-port)")
        return "other", error(404, f"no route for {path}")

    @staticmethod
    async def _only(method: str, allowed: str) -> Response | None:
        return None if method == allowed else error(405, f"use {allowed}")

    async def _v2(
        self, method: str, parts: list[str], headers: dict[str, str], body: bytes
    ) -> tuple[str, Response]:
        if not parts:
            return "metadata", json_response(
                200,
                {"name": "recserve", "version": __version__, "extensions": ["binary_tensor_data"]},
            )
        if parts == ["health", "live"]:
            return "health", json_response(200, {"live": True})
        if parts == ["health", "ready"]:
            return "health", self._ready_response()
        if parts[0] != "models" or len(parts) < 2:
            return "other", error(404, f"no route for /v2/{'/'.join(parts)}")
        name, rest = parts[1], parts[2:]
        if name != self.name:
            return "other", error(404, f"unknown model {name!r}; this server serves {self.name!r}")
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != self.version:
                return "other", error(404, f"unknown version; this server has {self.version!r}")
            rest = rest[2:]
        if not rest:
            return "metadata", self._model_metadata()
        if rest == ["ready"]:
            return "health", self._ready_response()
        if rest == ["infer"]:
            return "infer", await self._only(method, "POST") or await self._infer(headers, body)
        return "other", error(404, f"no route for model path {'/'.join(rest)}")

    def _ready_response(self) -> Response:
        if self.draining:
            return json_response(503, {"ready": False, "reason": "draining"})
        if self.not_ready_reason is not None:
            return json_response(503, {"ready": False, "reason": self.not_ready_reason})
        return json_response(200, {"ready": True})

    def _model_metadata(self) -> Response:
        doc: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
        }
        if self.model is not None:
            from recserve_runtime.server.protocol import NUMPY_TO_DATATYPE

            m = self.model.manifest
            doc["inputs"] = [
                {"name": t.name, "datatype": NUMPY_TO_DATATYPE[t.dtype], "shape": t.shape}
                for t in m.inputs
            ]
            doc["outputs"] = [
                {"name": t.name, "datatype": NUMPY_TO_DATATYPE[t.dtype], "shape": t.shape}
                for t in m.outputs
            ]
            doc["parameters"] = {
                "variant": m.name,
                "sha256": m.artifact.sha256,
                "execution_provider": self.model.providers[0],
                "fallback_reason": self.model.fallback_reason,
                "feature_spec": m.feature_spec.model_dump(by_alias=True, mode="json"),
            }
        return json_response(200, doc)

    async def handle_admin(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Answer one request on the admin port (never raises): ``/admin/limits`` and
        ``GET /admin/request-sample``, with ``Authorization: Bearer <token>`` when the
        server was given a token."""
        token = self.config.admin_token
        if token is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                log.warning("admin request refused: missing or wrong token path=%s", path)
                return Response(
                    401,
                    orjson.dumps({"error": "the admin API needs Authorization: Bearer <token>"}),
                    JSON,
                    [("www-authenticate", "Bearer")],
                )
        route = [p for p in path.split("/") if p]
        if route == ["admin", "request-sample"]:
            return self._request_sample(method)
        if route != ["admin", "limits"]:
            return error(
                404,
                f"no route for {path} on the admin port (/admin/limits, /admin/request-sample)",
            )
        try:
            return await self._admin(method, body)
        except BadInput as exc:
            return error(400, str(exc))
        except Exception as exc:  # the server survives any request
            log.exception("admin request failed path=%s", path)
            return error(500, f"internal error: {type(exc).__name__}")

    def _request_sample(self, method: str) -> Response:
        """The recent rows kept for recalibration, as .npz (``request_sample``)."""
        if method != "GET":
            return error(405, "use GET")
        if self.request_sample is None:
            why = self.not_ready_reason if self.model is None else "--request-sample-rows is 0"
            return error(404, f"this server keeps no request sample ({why})")
        rows = self.request_sample.snapshot()
        return Response(200, rows.to_npz(), SAMPLE_CONTENT_TYPE)

    async def _admin(self, method: str, body: bytes) -> Response:
        if method == "GET":
            return json_response(200, limits_to_doc(self.config.limits))
        if method in ("PUT", "PATCH", "POST"):
            from recserve_runtime.server.protocol import parse_json

            self._set_limits(parse_json(body))
            log.info("limits changed via admin API: %s", limits_to_doc(self.config.limits))
            return json_response(200, limits_to_doc(self.config.limits))
        return error(405, "use GET or PUT")

    # --- inference ----------------------------------------------------------------

    def _unavailable(self) -> Response | None:
        """503 while not ready or draining; 429 when the queue or the event loop is full."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            return error(503, "server is draining", 1.0)
        if self.batcher is None or self.validator is None:
            self.metrics.rejected.labels("not_ready").inc()
            return error(503, f"model not ready: {self.not_ready_reason}", 1.0)
        over = self.batcher.precheck()
        if (
            over is None
            and self.inflight > LOOP_LAG_MIN_INFLIGHT
            and self.lag.lag_s > self.config.limits.slo_p99_s * LOOP_LAG_FRACTION
        ):
            over = Overloaded("loop_lag", self.lag.lag_s)
        if over is not None:
            self.metrics.rejected.labels(over.reason).inc()
            return error(429, f"overloaded ({over.reason}); retry later", over.retry_after_s)
        return None

    @staticmethod
    def _deadline(headers: dict[str, str]) -> float | None:
        raw = headers.get(DEADLINE_HEADER)
        if raw is None:
            return None
        try:
            ms = float(raw)
        except ValueError:
            raise BadInput(f"header {DEADLINE_HEADER}", f"must be a number, got {raw!r}") from None
        if not ms > 0:
            raise BadInput(f"header {DEADLINE_HEADER}", f"must be > 0, got {raw!r}")
        return time.perf_counter() + ms / 1000.0

    async def _score(
        self, sparse: np.ndarray, dense: np.ndarray, deadline: float | None
    ) -> np.ndarray | Response:
        assert self.batcher is not None
        try:
            fut = self.batcher.submit(sparse, dense, deadline)
        except Overloaded as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            status = 503 if exc.reason == "draining" else 429
            return error(status, f"overloaded ({exc.reason}); retry later", exc.retry_after_s)
        try:
            return await fut
        except DeadlineExceeded:
            return error(504, "deadline exceeded before compute")

    async def _infer(self, headers: dict[str, str], body: bytes) -> Response:
        if (resp := self._unavailable()) is not None:
            return resp
        assert self.validator is not None
        raw_len = headers.get(HEADER_LENGTH)
        try:
            header_len = int(raw_len) if raw_len is not None else None
        except ValueError:
            raise BadInput(
                "Inference-Header-Content-Length", f"not an integer: {raw_len!r}"
            ) from None
        req = self.validator.infer_request(body, header_len)
        deadline = self._deadline(headers)
        scores = await self._score(req.batch.sparse, req.batch.dense, deadline)
        if isinstance(scores, Response):
            return scores
        self._after_answer(req.batch.sparse, req.batch.dense, scores)
        doc: dict[str, Any] = {"model_name": self.name, "model_version": self.version}
        if req.id is not None:
            doc["id"] = req.id
        if req.binary_outputs:
            raw = scores.astype(np.float32).tobytes()
            doc["outputs"] = [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [len(scores)],
                    "parameters": {"binary_data_size": len(raw)},
                }
                for n in req.outputs
            ]
            head = orjson.dumps(doc)
            return Response(
                200,
                head + raw * len(req.outputs),
                "application/octet-stream",
                [(HEADER_LENGTH, str(len(head)))],
            )
        doc["outputs"] = [
            {"name": n, "datatype": "FP32", "shape": [len(scores)], "data": scores}
            for n in req.outputs
        ]
        return json_response(200, doc)

    def _after_answer(self, sparse: np.ndarray, dense: np.ndarray, scores: np.ndarray) -> None:
        """Offer an answered request to the off-path samplers (fidelity, data drift)."""
        if self.fidelity is not None:
            self.fidelity.offer(sparse, dense, scores)
        if self.sketch is not None:
            self.sketch.offer(sparse, dense)
        if self.request_sample is not None:
            self.request_sample.offer(sparse, dense)

    async def _rank(self, headers: dict[str, str], body: bytes) -> Response:
        if (resp := self._unavailable()) is not None:
            return resp
        assert self.validator is not None
        req = self.validator.rank_request(body)
        deadline = self._deadline(headers)
        scores = await self._score(req.batch.sparse, req.batch.dense, deadline)
        if isinstance(scores, Response):
            return scores
        self._after_answer(req.batch.sparse, req.batch.dense, scores)
        order = np.argsort(-scores, kind="stable")
        if req.top_k is not None:
            order = order[: req.top_k]
        items = [{"id": req.ids[i], "score": float(scores[i])} for i in order.tolist()]
        return json_response(
            200, {"model_name": self.name, "model_version": self.version, "items": items}
        )


def default_workers() -> int:
    """One model thread; the event loop needs the other core on small machines."""
    return 1 if (os.cpu_count() or 1) <= 4 else 2


async def _watch_json(path: Path, apply: Callable[[Any], Any], what: str) -> None:
    """Apply the JSON file at ``path`` whenever it changes (polled every second); a bad
    file is logged and the last good one stays in force."""
    seen = 0.0
    while True:
        try:
            mtime = path.stat().st_mtime
            if mtime != seen:
                seen = mtime
                apply(orjson.loads(path.read_bytes()))
                log.info("%s reloaded from %s", what, path)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:  # BadInput and JSONDecodeError among them
            log.error("%s file %s rejected: %s", what, path, exc)
        await asyncio.sleep(1.0)
