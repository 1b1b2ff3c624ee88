"""The console scripts answer, and the repository root never shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.manifests import EXAMPLES, REPO, example

pytestmark = pytest.mark.unit


def _run(*args: str, cwd: object = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_stdlib_operator_is_not_shadowed_from_repo_root() -> None:
    result = _run(sys.executable, "-c", "import operator, collections; print(operator.__file__)")
    assert result.returncode == 0, result.stderr
    assert "site-packages" not in result.stdout and "/operator/" not in result.stdout


@pytest.mark.parametrize("script", ["recserve", "recserve-operator"])
def test_help_answers(script: str) -> None:
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_validate_accepts_examples_and_rejects_bad_file(tmp_path: object) -> None:
    ok = _run("recserve", "validate", str(EXAMPLES))
    assert ok.returncode == 0, ok.stderr
    assert "valid: RecModel/movielens-dlrm" in ok.stdout
    import yaml

    doc = example("latency-first")
    doc["spec"]["autoscaling"]["minReplicas"] = -2
    bad = tmp_path / "bad.yaml"  # type: ignore[operator]
    bad.write_text(yaml.safe_dump(doc))
    result = _run("recserve", "validate", str(bad))
    assert result.returncode == 1
    assert "spec.autoscaling.minReplicas" in result.stderr
    missing = _run("recserve", "validate", str(tmp_path) + "/nope.yaml")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_crds_check_passes_on_the_repository() -> None:
    result = _run("recserve", "crds", "--check")
    assert result.returncode == 0, result.stderr


# `recserve` with the dev kit hidden, as in the product's images (sys.modules[name] = None
# makes its import fail and importlib.util.find_spec answer None).
_WITHOUT_DEVKIT = (
    "import sys; sys.modules['recserve_dev'] = None; "
    "from recserve_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    "argv", [["demo"], ["demo", "--help"], ["cluster", "up", "--root", "x"], ["bench", "serving"]]
)
def test_devkit_commands_without_devkit_say_how_to_install_it(argv: list[str]) -> None:
    result = _run(sys.executable, "-c", _WITHOUT_DEVKIT, *argv)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"`recserve {argv[0]}` needs the recserve dev kit" in lines[0]
    assert "pip install -e ./devkit" in lines[0] and "make install" in lines[0]


def test_help_without_devkit_lists_its_commands() -> None:
    result = _run(sys.executable, "-c", _WITHOUT_DEVKIT, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("demo", "cluster", "bench", "serve", "optimize"):
        assert f"    {command} " in result.stdout
    assert "needs the dev kit" in result.stdout


@pytest.mark.parametrize("command", ["demo", "cluster", "bench"])
def test_devkit_commands_answer_when_installed(command: str) -> None:
    result = _run("recserve", command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: recserve {command}" in result.stdout
