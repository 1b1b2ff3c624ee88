"""Batching and admission policy, limits parsing, provider choice (pure logic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recserve_runtime.server.model import choose_providers
from recserve_runtime.server.policy import AIMD, Admission, CostModel, Limits, retry_after_header
from recserve_runtime.server.protocol import BadInput
from recserve_runtime.server.service import limits_from_doc, limits_to_doc

pytestmark = pytest.mark.unit


def test_aimd_grows_additively_while_under_budget() -> None:
    aimd = AIMD(Limits(slo_p99_s=0.020, max_batch_rows=1024, min_batch_rows=64), step=64)
    start = aimd.current
    for _ in range(3):
        aimd.observe(rows=aimd.current, compute_s=0.001)  # far under 5 ms budget
    assert aimd.current == start + 3 * 64


def test_aimd_halves_when_a_batch_breaks_the_budget() -> None:
    aimd = AIMD(Limits(slo_p99_s=0.020, max_batch_rows=4096), current=1024)
    aimd.observe(rows=1024, compute_s=0.006)  # budget is 0.25 * 20 ms = 5 ms
    assert aimd.current == 512


def test_aimd_stays_within_bounds() -> None:
    limits = Limits(slo_p99_s=0.020, max_batch_rows=256, min_batch_rows=64)
    aimd = AIMD(limits)
    for _ in range(50):
        aimd.observe(rows=aimd.current, compute_s=0.0001)
    assert aimd.current == 256
    for _ in range(50):
        aimd.observe(rows=aimd.current, compute_s=1.0)
    assert aimd.current == 64


def test_aimd_does_not_grow_when_the_limit_is_not_used() -> None:
    aimd = AIMD(Limits(), current=512)
    aimd.observe(rows=64, compute_s=0.0001)
    assert aimd.current == 512


def test_cost_model_learns_per_row_cost() -> None:
    cost = CostModel(alpha=0.5, per_call_s=0.0001)
    for _ in range(20):
        cost.observe(rows=1000, compute_s=0.0101)  # 10 us per row + 100 us per call
    assert cost.per_row_s == pytest.approx(10e-6, rel=0.05)
    assert cost.seconds(2000, 1000) == pytest.approx(2000 * cost.per_row_s + 2 * 0.0001)
    assert cost.seconds(0, 1000) == 0


def test_admission_rejects_when_queue_wait_would_break_the_slo() -> None:
    limits = Limits(slo_p99_s=0.025, admit_fraction=0.6)  # 15 ms allowed (default 0.8)
    adm = Admission(limits, CostModel(per_row_s=10e-6, per_call_s=0.0))
    # 640 rows ahead (6.4 ms) + its own batch of up to 512 rows (5.12 ms) = 11.5 ms
    ok, _ = adm.admit(queued_requests=10, rows_ahead=640, rows=64, batch_rows=512, workers=1)
    assert ok
    # 1600 rows ahead: 16 + 5.12 ms > 15 ms
    ok, retry = adm.admit(queued_requests=25, rows_ahead=1600, rows=64, batch_rows=512, workers=1)
    assert not ok
    assert retry == pytest.approx(0.016)
    # two workers share the work ahead: 8 + 5.12 ms, admitted
    ok, _ = adm.admit(queued_requests=25, rows_ahead=1600, rows=64, batch_rows=512, workers=2)
    assert ok


def test_admission_own_batch_term() -> None:
    adm = Admission(Limits(slo_p99_s=0.025), CostModel(per_row_s=10e-6, per_call_s=0.0))
    # nothing ahead: the request runs alone, whatever the batch limit
    assert adm.wait_estimate_s(0, 64, 4096, 1) == pytest.approx(0.00064)
    assert adm.admit(0, 0, 64, 4096, 1)[0]
    # something ahead and no batch seen yet: later arrivals may fill its batch to the limit
    assert adm.wait_estimate_s(64, 64, 512, 1) == pytest.approx(0.00064 + 0.00512)
    # batches have been 100 rows: its own batch is taken as 200 rows
    adm.cost.batch_rows = 100.0
    assert adm.wait_estimate_s(64, 64, 512, 1) == pytest.approx(0.00064 + 0.002)
    # a request bigger than any batch budget is refused even on an idle server
    assert not adm.admit(0, 0, 4000, 512, 1)[0]


def test_admission_enforces_the_hard_queue_cap() -> None:
    adm = Admission(Limits(max_queue=3), CostModel(per_row_s=1e-9, per_call_s=0.0))
    assert adm.admit(2, 10, 1, 512, 1)[0]
    assert not adm.admit(3, 10, 1, 512, 1)[0]


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.02, "1"), (1.2, "2"), (5.0, "5")])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize(
    "bad",
    [
        Limits(slo_p99_s=0),
        Limits(min_batch_rows=128, max_batch_rows=64),
        Limits(max_queue=0),
        Limits(max_queue_delay_s=-1),
        Limits(admit_fraction=1.5),
    ],
)
def test_limits_validate_rejects_inconsistent_values(bad: Limits) -> None:
    with pytest.raises(ValueError):
        bad.validate()


def test_admin_document_merges_and_converts_milliseconds() -> None:
    current = Limits()
    new = limits_from_doc(current, {"slo_p99_ms": 40, "max_queue": 7, "max_queue_delay_ms": 2})
    assert new.slo_p99_s == pytest.approx(0.040)
    assert new.max_queue == 7 and new.max_queue_delay_s == pytest.approx(0.002)
    assert new.max_batch_rows == current.max_batch_rows  # untouched
    doc = limits_to_doc(new)
    assert doc["slo_p99_ms"] == pytest.approx(40) and "slo_p99_s" not in doc


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"nope": 1}, "nope"),
        ({"slo_p99_s": 1}, "slo_p99_s"),  # the seconds name is internal
        ({"max_queue": "many"}, "max_queue"),
        ({"max_queue": 2.5}, "max_queue"),
        ({"max_queue": True}, "max_queue"),
        ({"min_batch_rows": 9000}, "body"),  # min > max
        ([1, 2], "body"),
    ],
)
def test_admin_document_errors_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(BadInput) as err:
        limits_from_doc(Limits(), doc)
    assert err.value.field == field


def test_provider_choice_and_stated_fallback() -> None:
    assert choose_providers("cpu", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], None)
    got, why = choose_providers("gpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got == ["CUDAExecutionProvider", "CPUExecutionProvider"] and why is None
    got, why = choose_providers("gpu", ["CPUExecutionProvider"])
    assert got == ["CPUExecutionProvider"]
    assert why is not None and "fell back to CPUExecutionProvider" in why
    got, why = choose_providers("fpga", ["CPUExecutionProvider"])
    assert why is not None and "VitisAI" in why
    with pytest.raises(ValueError):
        choose_providers("tpu", [])


def test_cost_model_limits_the_pull_of_one_stall() -> None:
    cost = CostModel(alpha=0.5, per_call_s=0.0)
    cost.observe(rows=100, compute_s=0.001)  # 10 us/row
    cost.observe(rows=100, compute_s=1.0)  # a 1 s stall: counted as at most 40 us/row
    assert cost.per_row_s == pytest.approx(25e-6)
    assert cost.batch_rows == pytest.approx(100.0)


def test_cost_model_first_observation_replaces_the_prior() -> None:
    cost = CostModel()
    cost.observe(rows=100, compute_s=0.01)
    assert math.isclose(cost.per_row_s, (0.01 - cost.per_call_s) / 100)


def test_cost_model_fits_a_fixed_cost_per_call() -> None:
    # a device of 40 ms per call + 0.15 ms per row (a GPU-like fixed cost), batches of
    # 1 to 8 requests of 64 rows as a loaded server forms them, with 5% noise
    rng = np.random.default_rng(0)
    cost = CostModel()
    for _ in range(200):
        rows = 64 * int(rng.integers(1, 9))
        cost.observe(rows, (0.040 + 0.00015 * rows) * float(rng.uniform(0.95, 1.05)))
    assert cost.per_call_s == pytest.approx(0.040, rel=0.15)
    assert cost.per_row_s == pytest.approx(0.00015, rel=0.15)
    # a backlog of 1024 rows in batches of 512: two calls, not 16 calls' worth of rows
    assert cost.seconds(1024, 512) == pytest.approx(2 * 0.040 + 1024 * 0.00015, rel=0.1)


def test_cost_model_keeps_the_fixed_cost_while_batch_sizes_do_not_vary() -> None:
    cost = CostModel()
    for rows in (64, 128, 256, 512) * 20:
        cost.observe(rows, 0.040 + 0.00015 * rows)
    for _ in range(100):  # light load: one request per batch
        cost.observe(64, 0.040 + 0.00015 * 64)
    assert cost.per_call_s == pytest.approx(0.040, rel=0.05)
    assert cost.seconds(64, 512) == pytest.approx(0.040 + 0.00015 * 64, rel=0.01)


def test_admission_on_a_fixed_cost_device_admits_what_fits_the_slo() -> None:
    # 500 ms SLO, 400 ms for the queue: 6 requests of 64 rows ahead, in batches of up to
    # 512 rows, take one call (40 + 58 ms) and its own batch of up to 512 rows another
    # 117 ms: 214 ms, admitted. A per-row-only model fitted on single-request batches
    # (0.775 ms per row) puts the same at 695 ms and refuses it.
    cost = CostModel()
    rng = np.random.default_rng(1)
    for _ in range(100):
        rows = 64 * int(rng.integers(1, 9))
        cost.observe(rows, 0.040 + 0.00015 * rows)
    adm = Admission(Limits(slo_p99_s=0.5, max_batch_rows=512), cost)
    assert adm.admit(6, 6 * 64, 64, 512, 1)[0]
    per_row_only = Admission(Limits(slo_p99_s=0.5), CostModel(per_row_s=0.0496 / 64, per_call_s=0))
    per_row_only.cost.batch_rows = 64 * 4
    assert not per_row_only.admit(6, 6 * 64, 64, 512, 1)[0]
