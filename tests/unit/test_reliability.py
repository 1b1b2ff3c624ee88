"""The reliability table's generator (tests/reliability.py): a run's JSON to markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.manifests import REPO
from tests.reliability import BEGIN, END, ENV, render, rewrite

pytestmark = pytest.mark.unit

RUN = {
    "generated": "2026-12-06 09:00 UTC",
    "commit": "abc1234",
    "cores": 2,
    "rows": [
        {
            "test": "tests/integration/test_x.py::test_a[server]",
            "fault": "etcd | restarted",
            "expect": "Ready again",
            "result": "passed",
            "seconds": 21.3,
            "measured": ["API back 15.5 s after the stop", "edit reconciled 1.1 s later"],
        },
        {
            "test": "tests/integration/test_x.py::test_a[router]",
            "fault": "etcd | restarted",
            "expect": "Ready again",
            "result": "passed",
            "seconds": 1.0,
            "measured": ["API back 9 s after the stop"],
        },
        {
            "test": "tests/unit/test_y.py::test_b",
            "fault": "bad input",
            "expect": "400",
            "result": "failed",
            "seconds": 0.2,
            "measured": [],
        },
    ],
}


def test_each_fault_test_is_a_row_with_its_result_and_measurements() -> None:
    table = render(RUN)
    assert "2 fault tests, **1 not passed**" in table
    assert (
        "| etcd \\| restarted | Ready again | `test_x.py::test_a` | passed (2 of 2 cases, 22.3 s) "
        "| [server] API back 15.5 s after the stop; [server] edit reconciled 1.1 s later; "
        "[router] API back 9 s after the stop |"
    ) in table
    assert "| bad input | 400 | `test_y.py::test_b` | FAILED (0.2 s) | (asserted; no figure) |" in (
        table
    )


def test_all_passed_is_said() -> None:
    run = {**RUN, "rows": RUN["rows"][:2]}
    assert "1 fault test, all passed." in render(run)


def test_only_the_text_between_the_markers_is_replaced() -> None:
    doc = f"intro\n{BEGIN}\nold table\n{END}\nnotes\n"
    assert rewrite(doc, "new") == f"intro\n{BEGIN}\nnew\n{END}\nnotes\n"
    with pytest.raises(ValueError, match="markers"):
        rewrite("no markers here", "new")


FAULT_TEST = """
import pytest

@pytest.mark.fault("{fault}", expect="Ready again")
def test_fault(measured):
    measured("back after {fault}")

def test_plain():
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2", "--dist", "loadfile"]])
def test_every_fault_test_reaches_the_run_file_from_any_worker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: list[str]
) -> None:
    run = tmp_path / "run.json"
    monkeypatch.setenv(ENV, str(run))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["tests.reliability"]')
    pytester.makepyfile(
        test_a=FAULT_TEST.format(fault="etcd stopped"), test_b=FAULT_TEST.format(fault="oom")
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=4)
    rows = json.loads(run.read_text())["rows"]
    assert [(r["test"], r["result"], r["measured"]) for r in rows] == [
        ("test_a.py::test_fault", "passed", ["back after etcd stopped"]),
        ("test_b.py::test_fault", "passed", ["back after oom"]),
    ]
