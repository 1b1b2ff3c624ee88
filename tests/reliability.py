"""The reliability table of docs/reliability.md, generated from a test run.

A test that injects a fault is marked ``@pytest.mark.fault("the fault", expect="what must
happen")`` and records what it measured with the ``measured`` fixture
(``measured("Ready 8.3 s after the API came back")``). When ``RECSERVE_RELIABILITY_JSON``
names a file, the run writes every fault test it ran there: its fault, expectation,
result and measurements. ``python -m tests.reliability RUN.json docs/reliability.md``
rewrites the table between the markers from it (``make reliability`` does both).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BEGIN = "<!-- reliability-table:begin (generated: make reliability) -->"
END = "<!-- reliability-table:end -->"
ENV = "RECSERVE_RELIABILITY_JSON"
_rows: dict[str, dict[str, Any]] = {}  # in the process that runs the test
_collected: dict[str, dict[str, Any]] = {}  # in the process that reports (the controller)
ROW_PROPERTY = "recserve_reliability_row"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fault(name, expect): a reliability test: the fault it injects and what must happen "
        "(docs/reliability.md's table is generated from these)",
    )


def _fault(item: pytest.Item) -> dict[str, Any] | None:
    mark = item.get_closest_marker("fault")
    if mark is None:
        return None
    return {"fault": mark.args[0], "expect": mark.kwargs.get("expect", "")}


@pytest.fixture()
def measured(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured outcome of this fault test (shown in the reliability table)."""
    if request.node.get_closest_marker("fault") is None:
        raise pytest.UsageError(f"{request.node.nodeid}: `measured` needs @pytest.mark.fault")

    def record(text: str) -> None:
        row = _rows.setdefault(request.node.nodeid, {"measured": []})
        row["measured"].append(text)
        print(f"\nmeasured: {text}")

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    fault = _fault(item)
    if fault is None:
        return
    row = _rows.setdefault(item.nodeid, {"measured": []})
    row.update(fault)
    if report.when == "call" or report.failed:  # a failed setup is the result too
        row["result"] = report.outcome
        row["seconds"] = round(report.duration, 1)
    # The row travels in every report of the test (the teardown's last, with what was
    # measured up to then): under pytest-xdist the test ran in a worker, and only the
    # controller's pytest_runtest_logreport sees every worker's reports.
    report.user_properties.append((ROW_PROPERTY, dict(row, measured=list(row["measured"]))))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == ROW_PROPERTY:
            _collected[report.nodeid] = value


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(ENV)
    if not target or not _collected or hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller writes the file
    rows = [{"test": k, **v} for k, v in sorted(_collected.items()) if "fault" in v]
    doc = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "cores": os.cpu_count(),
        "rows": rows,
    }
    Path(target).write_text(json.dumps(doc, indent=1) + "\n")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _grouped(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The run's rows per test function (a parametrized test's cases together)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["test"].split("[", 1)[0], []).append(r)
    return out


def render(run: dict[str, Any]) -> str:
    """The markdown table (with its heading line) for one run's JSON: a row per fault
    test function; a parametrized one says how many of its cases passed."""
    groups = _grouped(run["rows"])
    failed = [t for t, cases in groups.items() if any(c.get("result") != "passed" for c in cases)]
    lines = [
        f"Generated from the test run of {run['generated']} (commit {run['commit']}, "
        f"{run['cores']} cores): {len(groups)} fault test{'s' if len(groups) != 1 else ''}, "
        + (f"**{len(failed)} not passed**." if failed else "all passed."),
        "",
        "| fault | must | test | result | measured in that run |",
        "|---|---|---|---|---|",
    ]
    for test_id, cases in groups.items():
        path, _, name = test_id.partition("::")
        passed = sum(1 for c in cases if c.get("result") == "passed")
        seconds = sum(float(c.get("seconds", 0)) for c in cases)
        verdict = "passed" if passed == len(cases) else "FAILED"
        counted = f"{passed} of {len(cases)} cases, " if len(cases) > 1 else ""
        result = f"{verdict} ({counted}{seconds:.1f} s)"
        measured = "; ".join(
            (f"[{c['test'].partition('[')[2].rstrip(']')}] " if len(cases) > 1 else "") + text
            for c in cases
            for text in c["measured"]
        )
        cells = (
            cases[0]["fault"],
            cases[0]["expect"],
            f"`{Path(path).name}::{name}`",
            result,
            measured or "(asserted; no figure)",
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def rewrite(doc: str, table: str) -> str:
    """``doc`` with the text between the markers replaced by ``table``."""
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the document lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.reliability RUN.json docs/reliability.md", file=sys.stderr)
        return 2
    run = json.loads(Path(argv[0]).read_text())
    target = Path(argv[1])
    target.write_text(rewrite(target.read_text(), render(run)))
    print(f"{target}: {len(run['rows'])} rows from the run of {run['generated']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
