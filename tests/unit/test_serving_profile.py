"""The served-path calibration's pure parts: the fit, the compute share, the requests,
the report type (the real server run is tests/integration/test_serving_capacity.py)."""

from __future__ import annotations

import orjson
import pytest

from recserve_runtime.artifacts import (
    DenseFeature,
    FeatureSpec,
    ProfilePoint,
    ProfileReport,
    ServingOverhead,
    Side,
    SparseFeature,
    call_microseconds,
    log_interpolate,
)
from recserve_runtime.serving_profile import fit_overhead, rank_bodies, raw_requests

pytestmark = pytest.mark.unit


def test_fit_recovers_per_request_per_row_and_per_batch_costs() -> None:
    def cost(r: int, k: float) -> float:
        return 300 + 8 * r + 200 / k

    points = [(r, k, cost(r, k)) for r in (8, 256) for k in (1.0, 4.0)]
    a, b, c = fit_overhead(points)
    assert (a, b, c) == pytest.approx((300, 8, 200))


def test_fit_never_goes_below_zero() -> None:
    # noise that would make the per-batch term negative: it is dropped, the rest refitted
    a, b, c = fit_overhead(
        [(8, 1.0, 360.0), (8, 5.0, 380.0), (256, 1.0, 2350.0), (256, 4.0, 2360.0)]
    )
    assert c == 0.0 and a > 0 and b == pytest.approx((2355 - 370) / 248, rel=0.01)
    assert fit_overhead([(8, 1.0, -50.0), (256, 1.0, -10.0)]) == (0.0, 0.0, 0.0)


def test_compute_per_call_interpolates_between_profiled_batches() -> None:
    points = [
        ProfilePoint(batch_size=b, p50_us=0, p99_us=0, samples_per_second=b / (80 + b) * 1e6)
        for b in (8, 64, 256)
    ]  # 80 us per call + 1 us per row
    assert call_microseconds(points, 64) == pytest.approx(144)
    assert call_microseconds(points, 160) == pytest.approx(240)
    assert call_microseconds(points, 4) == pytest.approx(88)  # below: the smallest call
    assert call_microseconds(points, 512) == pytest.approx(336 * 2)  # above: per row
    assert call_microseconds([], 64) == 0.0


def test_log_interpolation_between_and_beyond_its_points() -> None:
    pairs = [(256, 1.5), (8, 3.0)]
    assert log_interpolate(pairs, 64) == pytest.approx(3.0 - 1.5 * 3 / 5)
    assert log_interpolate(pairs, 2) == 3.0 and log_interpolate(pairs, 1024) == 1.5
    assert log_interpolate([], 64) is None


def test_rank_bodies_fit_the_feature_spec() -> None:
    spec = FeatureSpec(
        sparse=[
            SparseFeature(name="user", vocab_size=5, side=Side.USER),
            SparseFeature(name="item", vocab_size=7, side=Side.ITEM),
            SparseFeature(name="decade", vocab_size=3, side=Side.ITEM),
        ],
        dense=[
            DenseFeature(name="age", side=Side.USER),
            DenseFeature(name="genres", width=4, side=Side.ITEM),
        ],
    )
    bodies = rank_bodies(spec, candidates=16, count=3)
    assert len(bodies) == 3
    for body in bodies:
        doc = orjson.loads(body)
        assert len(doc["user"]["sparse"]) == 1 and len(doc["user"]["dense"]) == 1
        assert 0 <= doc["user"]["sparse"][0] < 5
        assert len(doc["candidates"]) == 16
        for item in doc["candidates"]:
            assert len(item["dense"]) == 4
            assert 0 <= item["sparse"][0] < 7 and 0 <= item["sparse"][1] < 3
    raw = raw_requests("127.0.0.1", 8080, "/v1/rank", bodies[:1])[0]
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/rank HTTP/1.1\r\n")
    assert f"Content-Length: {len(payload)}".encode() in head and payload == bodies[0]


def test_reports_without_the_calibration_still_load() -> None:
    old = ProfileReport.model_validate({"hardware": "cpu", "threads": 1, "variants": {}})
    assert old.serving is None
    serving = ServingOverhead(
        per_request_microseconds=300.0,
        per_row_microseconds=8.0,
        variant="student",
        threads=1,
        concurrency=8,
    )  # written before the per-batch term: 0
    assert serving.microseconds_per_request(64, 4) == pytest.approx(300 + 8 * 64)
    again = ProfileReport.model_validate_json(
        ProfileReport(hardware="cpu", serving=serving).model_dump_json(by_alias=True)
    )
    assert again.serving == serving
