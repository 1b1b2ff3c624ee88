"""`recserve serve` as a real process on 127.0.0.1, driven by real clients.

No Kubernetes needed. Each server picks a free port; the model is the synthetic DLRM
fixture (``recserve_dev.testmodel``) in the real artifact format.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from recserve_dev import testmodel as tm
from recserve_dev.loadgen import Target, closed_loop, open_loop
from recserve_dev.servertesting import Running, free_port, http, run_server
from recserve_runtime import artifacts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPEC = tm.TestModelSpec(vocab_size=500)
MODEL = "synthetic-dlrm-fp32"


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.write_variant(tmp_path_factory.mktemp("store"), SPEC)


@pytest.fixture(scope="module")
def server(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_server(variant, tmp_path_factory.mktemp("logs")) as running:
        yield running


def reference(variant: Path, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(variant / "model.onnx"))
    return np.asarray(sess.run(["score"], {"sparse_ids": sparse, "dense": dense})[0])


def post(url: str, doc: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    status, _, body = http(
        "POST", url, raw, {"content-type": "application/json", **(headers or {})}
    )
    return status, orjson.loads(body)


def infer_doc(sparse: np.ndarray, dense: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "sparse_ids", "datatype": "INT64", "shape": list(sparse.shape),
             "data": sparse.ravel().tolist()},
            {"name": "dense", "datatype": "FP32", "shape": list(dense.shape),
             "data": dense.ravel().tolist()},
        ]
    }  # fmt: skip


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infer(server: Running, variant: Path, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == ["sparse_ids", "dense"]
    sparse, dense = tm.random_batch(SPEC, 7, seed=3)
    a = httpclient.InferInput("sparse_ids", list(sparse.shape), "INT64")
    a.set_data_from_numpy(sparse, binary_data=binary)
    b = httpclient.InferInput("dense", list(dense.shape), "FP32")
    b.set_data_from_numpy(dense, binary_data=binary)
    out = httpclient.InferRequestedOutput("score", binary_data=binary)
    result = client.infer(MODEL, [a, b], outputs=[out], request_id="r1")
    assert result.get_response()["id"] == "r1"
    np.testing.assert_allclose(
        result.as_numpy("score"), reference(variant, sparse, dense), rtol=1e-5
    )


def test_rank_returns_candidates_sorted_by_score(server: Running, variant: Path) -> None:
    manifest = artifacts.load_manifest(variant)
    doc = orjson.loads(tm.rank_bodies(manifest, 1, candidates=20, seed=5)[0])
    doc["top_k"] = 5
    status, body = post(f"{server.url}/v1/rank", doc)
    assert status == 200, body
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    # same numbers as running the model on the broadcast rows
    full = dict(doc, top_k=None)
    _, everything = post(f"{server.url}/v1/rank", full)
    ids = [c["id"] for c in doc["candidates"]]
    by_id = {item["id"]: item["score"] for item in everything["items"]}
    sparse = np.array([doc["user"]["sparse"] + c["sparse"] for c in doc["candidates"]])
    dense = np.array([doc["user"]["dense"] + c["dense"] for c in doc["candidates"]], np.float32)
    want = reference(variant, sparse, dense)
    np.testing.assert_allclose([by_id[i] for i in ids], want, rtol=1e-5)


def _good_doc() -> dict[str, Any]:
    return infer_doc(*tm.random_batch(SPEC, 2, seed=1))


def _bad(mutate: Any) -> bytes:
    doc = _good_doc()
    mutate(doc)
    return orjson.dumps(doc)


def _set(path: list[Any], value: Any) -> Any:
    def mutate(doc: Any) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


N_SPARSE = SPEC.n_sparse
BAD_CASES = {
    "unknown tensor": (_bad(_set(["inputs", 0, "name"], "user_ids")), "inputs[0].name"),
    "wrong dtype": (_bad(_set(["inputs", 1, "datatype"], "INT64")), "inputs[1].datatype"),
    "wrong shape": (_bad(_set(["inputs", 0, "shape"], [2, 3])), "inputs[0].shape"),
    "data does not fill shape": (_bad(_set(["inputs", 1, "data"], [0.5])), "inputs[1].data"),
    "oversized batch": (
        _bad(_set(["inputs", 0, "shape"], [100000, N_SPARSE])),
        "inputs[0].shape[0]",
    ),
    "out-of-vocab id": (_bad(_set(["inputs", 0, "data", 5], 10**6)), "inputs[0].data"),
    "negative id": (_bad(_set(["inputs", 0, "data", 0], -3)), "inputs[0].data"),
    "NaN as string": (_bad(_set(["inputs", 1, "data", 2], "nan")), "inputs[1].data"),
    "NaN literal": (
        _good_doc_text := orjson.dumps(_good_doc()).replace(b"]}]}", b",NaN]}]}"),
        "body",
    ),
    "malformed JSON": (b'{"inputs": [', "body"),
    "missing input": (_bad(lambda d: d["inputs"].pop()), "inputs"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.fault(
    "wrong dtype or shape, oversized batch, NaN, non-JSON to the server",
    expect="400 naming the field; the server unharmed",
)
def test_bad_input_is_400_naming_the_field_and_server_unharmed(server: Running, case: str) -> None:
    body, field = BAD_CASES[case]
    status, _, raw = http(
        "POST", f"{server.url}/v2/models/{MODEL}/infer", body, {"content-type": "application/json"}
    )
    assert status == 400, raw
    message = orjson.loads(raw)["error"]
    assert message.startswith(field + ":"), message
    status, doc = post(f"{server.url}/v2/models/{MODEL}/infer", _good_doc())
    assert status == 200 and len(doc["outputs"][0]["data"]) == 2


def test_bad_rank_input_is_400_naming_the_field(server: Running, variant: Path) -> None:
    doc = orjson.loads(tm.rank_bodies(artifacts.load_manifest(variant), 1, 4)[0])
    doc["candidates"][2]["sparse"][0] = SPEC.vocab_size
    status, body = post(f"{server.url}/v1/rank", doc)
    assert status == 400 and body["error"].startswith("candidates[2].sparse.i_cat0:"), body


def test_unknown_model_and_path_are_404(server: Running) -> None:
    assert http("GET", f"{server.url}/v2/models/other")[0] == 404
    assert http("GET", f"{server.url}/nope")[0] == 404
    assert http("GET", f"{server.url}/v2/models/{MODEL}/infer")[0] == 405


def test_metrics_are_exposed(server: Running) -> None:
    post(f"{server.url}/v2/models/{MODEL}/infer", _good_doc())
    status, _, raw = http("GET", f"{server.url}/metrics")
    text = raw.decode()
    assert status == 200
    for name in (
        'recserve_requests_total{code="200",endpoint="infer"}',
        "recserve_request_duration_seconds_bucket",
        "recserve_queue_duration_seconds_bucket",
        "recserve_compute_duration_seconds_bucket",
        "recserve_batch_size_rows_bucket",
        "recserve_queue_depth",
        "recserve_inflight_requests",
        "recserve_model_load_seconds",
        "recserve_variant_info{",
        "recserve_execution_provider_fallback{",
        "recserve_ready 1.0",
    ):
        assert name in text, name


def _psi(url: str) -> dict[str, float]:
    _, _, raw = http("GET", f"{url}/metrics")
    found = {}
    for line in raw.decode().splitlines():
        if line.startswith("recserve_feature_psi{"):
            feature = line.split('feature="', 1)[1].split('"', 1)[0]
            found[feature] = float(line.rsplit(" ", 1)[1])
    return found


def test_inputs_unlike_the_training_data_raise_the_exported_psi(
    variant: Path, tmp_path: Path
) -> None:
    """The server bins what it is sent against the manifest's training-data bins and
    exports each column's PSI per window of rows: like the training data, every column
    stays low; dense columns shifted by two standard deviations, theirs go far past 0.25
    while the ids' stay low."""
    with run_server(variant, tmp_path, "--data-drift-window-rows=300") as running:
        url = f"{running.url}/v2/models/{MODEL}/infer"
        # 32 of each request's 128 rows are binned, 160 rows a second at most: ten
        # requests 0.2 s apart fill one window
        for seed in range(10):
            sparse, dense = tm.random_batch(SPEC, 128, seed=seed)
            assert post(url, infer_doc(sparse, dense))[0] == 200
            time.sleep(0.2)
        reference = artifacts.load_manifest(variant).data_reference
        assert reference is not None
        sides = {f.feature: (f.side, f.kind) for f in reference.features}
        items = {k for k, (side, _) in sides.items() if side == "item"}
        like = eventually_value(lambda: _psi(running.url))
        # a column's PSI needs 250 samples: every item column has 320 rows here, a user
        # column one sample per request (10), so theirs is not published yet
        assert set(like) == items, like
        assert max(like.values()) < 0.1, like
        for seed in range(10, 20):
            sparse, dense = tm.random_batch(SPEC, 128, seed=seed)
            assert post(url, infer_doc(sparse, dense + 2.0))[0] == 200
            time.sleep(0.2)
        shifted = eventually_value(lambda: _psi(running.url) if _psi(running.url) != like else {})
        dense_psi = [v for k, v in shifted.items() if sides[k][1] == "dense"]
        sparse_psi = [v for k, v in shifted.items() if sides[k][1] == "sparse"]
        assert dense_psi and sparse_psi
        assert min(dense_psi) > 1.0 and max(sparse_psi) < 0.1, shifted


def eventually_value(read: Any, timeout_s: float = 10.0) -> Any:
    """The first truthy value ``read()`` gives (the sketch publishes off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_admin_limits_change_at_run_time(server: Running) -> None:
    admin = server.admin_url
    status, _, raw = http("GET", f"{admin}/admin/limits")
    assert status == 200 and orjson.loads(raw)["max_queue"] == 1024
    status, doc = post(f"{admin}/admin/limits", {"max_batch_rows": 8, "min_batch_rows": 8})
    assert status == 200 and doc["max_batch_rows"] == 8
    try:
        status, body = post(
            f"{server.url}/v2/models/{MODEL}/infer", infer_doc(*tm.random_batch(SPEC, 9))
        )
        assert status == 400 and body["error"].startswith("inputs[0].shape[0]:"), body
        status, body = post(f"{admin}/admin/limits", {"max_queue": -1})
        assert status == 400 and "max_queue" in body["error"]
        status, body = post(f"{admin}/admin/limits", {"bogus": 1})
        assert status == 400 and body["error"].startswith("bogus:")
    finally:
        post(f"{admin}/admin/limits", {"max_batch_rows": 4096, "min_batch_rows": 64})


def test_the_request_sample_holds_answered_rows_on_the_admin_port_only(
    variant: Path, tmp_path: Path, server: Running
) -> None:
    """With --request-sample-rows, the rows the server answered (ids and values as the
    model ran them) come back from GET /admin/request-sample, at most that many; the
    inference port has no such route; a server without the flag says it keeps none."""
    from recserve_runtime.server.request_sample import SampleRows

    with run_server(variant, tmp_path, "--request-sample-rows", "50") as srv:
        sent = [tm.random_batch(SPEC, 20, seed=k) for k in range(4)]
        for sparse, dense in sent:
            status, _ = post(f"{srv.url}/v2/models/{MODEL}/infer", infer_doc(sparse, dense))
            assert status == 200
        status, headers, raw = http("GET", f"{srv.admin_url}/admin/request-sample")
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        rows = SampleRows.from_npz(raw)
        assert rows.seen == 80 and len(rows) == 50
        answered = {(tuple(s), tuple(d)) for b in sent for s, d in zip(*b, strict=True)}
        assert all(
            (tuple(s), tuple(d)) in answered for s, d in zip(rows.sparse, rows.dense, strict=True)
        )
        assert http("GET", f"{srv.url}/admin/request-sample")[0] == 404
        assert http("PUT", f"{srv.admin_url}/admin/request-sample", b"")[0] == 405
    status, _, raw = http("GET", f"{server.admin_url}/admin/request-sample")
    assert status == 404 and b"--request-sample-rows is 0" in raw, raw


@pytest.mark.fault(
    "/admin/limits asked on the inference port", expect="404: the admin API is on its own port only"
)
def test_admin_api_is_not_on_the_inference_port(server: Running) -> None:
    """Anyone who may rank must not set the limits: the inference port has no /admin, and
    the admin port serves nothing else."""
    for method in ("GET", "PUT"):
        status, _, raw = http(method, f"{server.url}/admin/limits", b'{"max_queue": 1}')
        assert status == 404 and b"own port" in raw, raw
    assert http("GET", f"{server.admin_url}/admin/limits")[0] == 200
    for path in ("/v1/rank", "/v2/health/ready", "/metrics"):
        assert http("GET", f"{server.admin_url}{path}")[0] == 404
    assert orjson.loads(http("GET", f"{server.admin_url}/admin/limits")[2])["max_queue"] == 1024


@pytest.mark.fault(
    "/metrics asked on the inference port of a server with a metrics port",
    expect="404 there; served on the metrics port (the one Prometheus alone may reach)",
)
def test_metrics_on_their_own_port_are_not_on_the_inference_port(
    variant: Path, tmp_path: Path
) -> None:
    metrics = free_port()
    with run_server(variant, tmp_path, "--metrics-port", str(metrics)) as srv:
        status, _, raw = http("GET", f"{srv.url}/metrics")
        assert status == 404 and b"own port (--metrics-port)" in raw, raw
        assert http("GET", f"{srv.url}/v2/health/ready")[0] == 200
        status, _, raw = http("GET", f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and b"recserve_ready 1.0" in raw, raw[:300]
        for path in ("/v1/rank", "/v2/health/ready", "/admin/limits"):
            assert http("GET", f"http://127.0.0.1:{metrics}{path}")[0] == 404, path


@pytest.mark.fault(
    "an admin request without or with a wrong token",
    expect="401 (WWW-Authenticate: Bearer); the token never logged",
)
def test_admin_api_with_a_token_refuses_requests_without_it(variant: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with run_server(variant, tmp_path, "--admin-token-file", str(token)) as srv:
        url = f"{srv.admin_url}/admin/limits"
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}):
            status, answer_headers, _ = http("PUT", url, b'{"max_queue": 1}', headers)
            assert status == 401 and answer_headers["www-authenticate"] == "Bearer"
        good = {"authorization": "Bearer s3cret-token"}
        status, _, raw = http("PUT", url, b'{"max_queue": 7}', good)
        assert status == 200 and orjson.loads(raw)["max_queue"] == 7
        assert "s3cret-token" not in srv.logs()
    empty = tmp_path / "empty"
    empty.write_text("")
    with (
        pytest.raises(RuntimeError, match="exited"),
        run_server(variant, tmp_path, "--admin-token-file", str(empty)),
    ):
        pass


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
@pytest.mark.fault(
    "the model file truncated or bit-flipped before load", expect="ChecksumMismatch; not Ready"
)
def test_damaged_model_keeps_server_not_ready(variant: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "variant"
    shutil.copytree(variant, broken)
    model = broken / "model.onnx"
    data = bytearray(model.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10
    model.write_bytes(bytes(data))
    with run_server(broken, tmp_path, wait_ready=False) as srv:
        status, _, raw = http("GET", f"{srv.url}/v2/health/ready")
        for _ in range(50):
            if b"loading" not in raw:
                break
            status, _, raw = http("GET", f"{srv.url}/v2/health/ready")
        assert status == 503
        reason = orjson.loads(raw)["reason"]
        assert reason.startswith("ChecksumMismatch"), reason
        assert ("size" in reason) if damage == "truncate" else ("sha256" in reason)
        assert http("GET", f"{srv.url}/v2/health/live")[0] == 200
        status, headers, _ = http(
            "POST", f"{srv.url}/v2/models/{MODEL}/infer", orjson.dumps(_good_doc())
        )
        assert status == 503 and "retry-after" in headers
        text = http("GET", f"{srv.url}/metrics")[2].decode()
        assert 'recserve_model_load_failures_total{reason="ChecksumMismatch"} 1.0' in text
        assert "recserve_ready 0.0" in text
        assert "ChecksumMismatch" in srv.logs()


@pytest.mark.fault(
    "load at 3x a server's capacity",
    expect="429 with Retry-After; accepted requests within the SLO",
)
def test_overload_3x_sheds_with_429_and_keeps_accepted_within_slo(
    variant: Path, tmp_path: Path
) -> None:
    """A slow device (emulated: 300 us per row, sleeping, so the HTTP side has headroom) at
    3x its capacity: accepted requests keep the SLO, the rest get 429 with Retry-After."""
    slo_ms = 150.0
    with run_server(
        variant, tmp_path, "--emulate-us-per-row", "300", "--slo-p99-ms", str(slo_ms)
    ) as srv:
        # leave half the SLO as margin for this shared, noisy test machine
        assert post(f"{srv.admin_url}/admin/limits", {"admit_fraction": 0.5})[0] == 200
        bodies = tm.rank_bodies(artifacts.load_manifest(variant), 16, 64)
        target = Target("127.0.0.1", srv.port, "/v1/rank", bodies)

        async def scenario() -> tuple[Any, Any, list[tuple[int, str | None]]]:
            capacity = await closed_loop(target, 4, 2.0)
            load = asyncio.create_task(open_loop(target, 3 * capacity.throughput, 4.0))
            await asyncio.sleep(1.0)
            probes = await asyncio.gather(
                *(asyncio.to_thread(_probe, srv.url, bodies[0]) for _ in range(10))
            )
            return capacity, await load, probes

        capacity, result, probes = asyncio.run(scenario())
    assert capacity.throughput > 10, capacity.summary()
    codes = result.codes
    accepted, rejected = codes.get("200", 0), codes.get("429", 0)
    assert rejected > 0.3 * result.sent, result.summary()
    assert accepted > 0.5 * capacity.throughput * result.duration_s, result.summary()
    assert set(codes) <= {"200", "429"}, result.summary()
    assert result.pct(99) * 1000 <= slo_ms, result.summary()
    retry_after = [ra for status, ra in probes if status == 429]
    assert retry_after and all(ra is not None and int(ra) >= 1 for ra in retry_after), probes


def _probe(url: str, body: bytes) -> tuple[int, str | None]:
    status, headers, _ = http("POST", f"{url}/v1/rank", body, {"content-type": "application/json"})
    return status, headers.get("retry-after")


def test_client_deadline_drops_expired_requests_before_compute(
    variant: Path, tmp_path: Path
) -> None:
    with run_server(
        variant, tmp_path, "--emulate-us-per-row", "1000", "--slo-p99-ms", "5000"
    ) as srv:
        body = tm.rank_bodies(artifacts.load_manifest(variant), 1, 64)[0]
        headers = {"content-type": "application/json", "x-deadline-ms": "1"}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda _: http("POST", f"{srv.url}/v1/rank", body, headers)[0], range(16))
            )
        assert 504 in results, results
        text = http("GET", f"{srv.url}/metrics")[2].decode()
        assert 'recserve_rejected_total{reason="deadline"}' in text
        bad = http("POST", f"{srv.url}/v1/rank", body, {**headers, "x-deadline-ms": "soon"})
        assert bad[0] == 400 and b"x-deadline-ms" in bad[2]


@pytest.mark.fault("SIGTERM to a busy server", expect="in-flight requests answered, then it exits")
def test_sigterm_drains_in_flight_requests_then_exits(variant: Path, tmp_path: Path) -> None:
    with run_server(
        variant, tmp_path, "--emulate-us-per-row", "2000", "--slo-p99-ms", "5000"
    ) as srv:
        body = tm.rank_bodies(artifacts.load_manifest(variant), 1, 64)[0]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(http, "POST", f"{srv.url}/v1/rank", body,
                            {"content-type": "application/json"})
                for _ in range(6)
            ]  # fmt: skip
            import time

            time.sleep(0.3)
            os.kill(srv.proc.pid, signal.SIGTERM)
            statuses = [f.result(timeout=30)[0] for f in futures]
        assert statuses == [200] * 6
        assert srv.proc.wait(30) == 0
        assert "drained and stopped" in srv.logs()


def test_the_emulated_device_file_slows_the_server_while_it_runs(
    variant: Path, tmp_path: Path
) -> None:
    """`--emulate-file` is a live limit: written mid-run, a batch costs what it says (the
    drift benchmark slows a pool 2x this way), divided by its precision's speed-up; a bad
    file keeps the last good costs."""
    import time

    device = tmp_path / "device.json"
    with run_server(
        variant, tmp_path, "--emulate-us-per-batch", "50000", "--emulate-file", str(device),
        "--slo-p99-ms", "5000",
    ) as srv:  # fmt: skip
        body = tm.rank_bodies(artifacts.load_manifest(variant), 1, 8)[0]
        headers = {"content-type": "application/json"}

        def median_s() -> float:
            took = []
            for _ in range(5):
                began = time.perf_counter()
                assert http("POST", f"{srv.url}/v1/rank", body, headers)[0] == 200
                took.append(time.perf_counter() - began)
            return sorted(took)[2]

        before = median_s()
        device.write_text('{"emulate_us_per_batch": 150000}')
        time.sleep(2.5)  # polled every second
        slowed = median_s()
        # the variant's precision (fp32) run 3x as fast by the device
        device.write_text('{"emulate_us_per_batch": 150000, "speedup_by_precision": {"fp32": 3}}')
        time.sleep(2.5)
        faster = median_s()
        device.write_text('{"emulate_us_per_batch": "slow"}')
        time.sleep(2.5)
        kept = median_s()
        assert 0.05 <= before < 0.1, before
        assert 0.15 <= slowed < 0.2, slowed
        assert 0.05 <= faster < 0.1, faster
        assert 0.05 <= kept < 0.1, kept
        assert "emulated device file" in srv.logs() and "must be numbers" in srv.logs()
