"""Unit tests of recserve_runtime.server.request_sample: the reservoir and its wire form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from recserve_runtime.server.request_sample import RequestSample, SampleRows

pytestmark = pytest.mark.unit


def _rows(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows numbered ``start``..: the row number in every sparse and dense column."""
    ids = np.arange(start, start + n, dtype=np.int64)
    return np.stack([ids, ids], 1), ids.astype(np.float32).reshape(-1, 1)


def test_the_sample_fills_in_order_then_stays_bounded() -> None:
    sample = RequestSample(10, 2, 1, seed=0)
    assert len(sample.snapshot()) == 0
    sample.offer(*_rows(0, 4))
    got = sample.snapshot()
    assert got.seen == 4 and got.sparse[:, 0].tolist() == [0, 1, 2, 3]
    sample.offer(*_rows(4, 500))
    got = sample.snapshot()
    assert len(got) == 10 and got.seen == 504
    # rows stay whole: each kept row's columns come from the same answered row
    assert (got.sparse[:, 0] == got.sparse[:, 1]).all()
    assert (got.dense[:, 0] == got.sparse[:, 0]).all()
    assert len(set(got.sparse[:, 0].tolist())) == 10


def test_every_row_answered_is_equally_likely_to_be_kept() -> None:
    """10,000 rows in requests of 1 to 64 rows, a 100-row sample, 200 trials: how often
    each tenth of the stream is kept is uniform (chi-square), early and late alike."""
    counts = np.zeros(10)
    rng = np.random.default_rng(1)
    for trial in range(200):
        sample = RequestSample(100, 2, 1, seed=trial)
        start = 0
        while start < 10_000:
            n = min(int(rng.integers(1, 65)), 10_000 - start)
            sample.offer(*_rows(start, n))
            start += n
        kept = sample.snapshot().sparse[:, 0]
        counts += np.bincount(kept // 1000, minlength=10)
    assert counts.sum() == 200 * 100
    assert stats.chisquare(counts).pvalue > 0.001, counts


def test_the_wire_form_round_trips_and_refuses_other_bytes() -> None:
    sample = RequestSample(8, 2, 1, seed=0)
    sample.offer(*_rows(0, 20))
    rows = sample.snapshot()
    back = SampleRows.from_npz(rows.to_npz())
    assert back.seen == 20 and np.array_equal(back.sparse, rows.sparse)
    assert np.array_equal(back.dense, rows.dense) and back.dense.dtype == np.float32
    both = SampleRows.concat([rows, back])
    assert len(both) == 16 and both.seen == 40
    for junk in (b"", b"not an npz", b'{"sparse": []}'):
        with pytest.raises(ValueError, match="not a request sample"):
            SampleRows.from_npz(junk)


def test_a_sample_needs_room_for_a_row() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestSample(0, 1, 1)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_windowed_sample_holds_only_the_last_one_to_two_windows() -> None:
    """15 minutes of rows, then the inputs move: a sample over the server's whole life
    is almost all old rows (what `recserve bench drift` recalibrated on, and failed);
    one over 20 s windows holds only rows of the last 20 to 40 s."""
    clock = _Clock()
    whole = RequestSample(200, 2, 1, seed=0)
    lately = RequestSample(200, 2, 1, seed=0, window_s=20, clock=clock)
    row = 0
    for second in range(900 + 30):  # 100 rows a second; the inputs move at 900 s
        clock.now = float(second)
        for sample in (whole, lately):
            sample.offer(*_rows(row, 100))
        row += 100
    moved = 900 * 100  # the first row after the move
    old_share = lambda s: float(np.mean(s.snapshot().sparse[:, 0] < moved))  # noqa: E731
    assert old_share(whole) > 0.9
    got = lately.snapshot()
    assert len(got) == 200 and (got.sparse[:, 0] == got.sparse[:, 1]).all()
    oldest = (row - got.sparse[:, 0].min()) / 100  # seconds back
    assert oldest <= 40, oldest
    assert got.seen == 100 * (20 + 10)  # the rows of the two windows it covers
    assert old_share(lately) < 0.5  # at 30 s after the move: 10 of 30 s before it


def test_a_windowed_sample_is_uniform_over_its_two_windows() -> None:
    """The current window's reservoir and the previous one's are thinned to their share
    of the rows: each second of the 30 s covered is kept alike (chi-square)."""
    counts = np.zeros(30)
    for trial in range(200):
        clock = _Clock()
        sample = RequestSample(60, 2, 1, seed=trial, window_s=20, clock=clock)
        for second in range(40 + 30):
            clock.now = float(second)
            sample.offer(*_rows(second * 50, 50))
        kept = sample.snapshot().sparse[:, 0] // 50 - 40  # seconds 40..69
        assert kept.min() >= 0
        counts += np.bincount(kept, minlength=30)
    assert stats.chisquare(counts).pvalue > 0.001, counts


def test_a_quiet_spell_of_two_windows_empties_the_sample() -> None:
    clock = _Clock()
    sample = RequestSample(10, 2, 1, seed=0, window_s=5, clock=clock)
    sample.offer(*_rows(0, 30))
    clock.now = 6.0
    assert sample.snapshot().seen == 30  # the previous window
    clock.now = 11.0
    assert len(sample.snapshot()) == 0  # both windows over: nothing lately
    sample.offer(*_rows(30, 3))
    assert sample.snapshot().sparse[:, 0].tolist() == [30, 31, 32]
    with pytest.raises(ValueError, match="window_s"):
        RequestSample(10, 1, 1, window_s=-1)
