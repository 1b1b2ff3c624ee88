"""Which variants a build makes (`builder.plan`): every compression option of
`recserve optimize` changes the plan, bad values are one-line errors, and the profiler
measures with the server's thread count. Pure functions: no training, no torch."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import pytest

from recserve_runtime import optimize, profile_cmd, profiler
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.builder.plan import (
    DEFAULT_STUDENTS,
    QUICK_STUDENTS,
    STUDENT_SHAPES,
    BuildOptions,
    plan_variants,
    student_shapes,
)
from recserve_runtime.server import cli as server_cli
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS

pytestmark = pytest.mark.unit

STUDENT = (16, [256])


def options(*argv: str) -> BuildOptions:
    """The BuildOptions `recserve optimize` makes of these flags."""
    parser = argparse.ArgumentParser()
    optimize.add_arguments(parser)
    result: BuildOptions = optimize.build_options(parser.parse_args(list(argv)))
    return result


def names(*argv: str, zoo: bool = True) -> list[str]:
    return [p.name for p in plan_variants(options(*argv), zoo, STUDENT)]


def recipes(*argv: str) -> dict[str, dict[str, Any]]:
    return {
        p.name: p.recipe.model_dump(by_alias=True, mode="json")
        for p in plan_variants(options(*argv), True, STUDENT)
    }


def test_default_plan_is_the_full_grid() -> None:
    assert names() == [
        "fp32",
        "fp16",
        "int8-dynamic",
        "int8-static-qdq",
        "int4-rowwise-emb",
        "int4-rowwise-emb-int8",
        "pruned-50",
        "pruned-50-int8",
        "student-d16-256",
        "student-d16-256-int8",
        "student-d16-256-int4emb-int8",
        "student-d16-256-pruned50-int8",
        "student-d16-256-pruned50-int4emb-int8",
    ]
    r = recipes()
    assert r["fp32"] == {
        "precision": "fp32",
        "quantization": "none",
        "pruningRatioBasisPoints": 0,
        "student": None,
    }
    assert r["int8-static-qdq"]["quantization"] == "static"
    assert r["student-d16-256-pruned50-int4emb-int8"] == {
        "precision": "int4",
        "quantization": "rowwise",
        "pruningRatioBasisPoints": 5000,
        "student": {"embeddingDim": 16, "mlpLayers": [256]},
    }


def test_torchscript_models_get_the_onnx_level_variants_only() -> None:
    assert names(zoo=False) == [
        "fp32",
        "fp16",
        "int8-dynamic",
        "int8-static-qdq",
        "int4-rowwise-emb",
        "int4-rowwise-emb-int8",
    ]


def test_precisions_choose_the_variants_and_fp32_is_always_built() -> None:
    got = names("--precisions=fp32,int8")
    assert "fp32" in got and "int8-dynamic" in got and "pruned-50-int8" in got
    assert not any("fp16" in n or "int4" in n for n in got)
    got = names("--precisions=fp16")
    assert got[0] == "fp32" and "fp16" in got
    assert not any("int8" in n or "int4" in n for n in got)
    # with no quantized precision the float pruned student is the combination
    assert "student-d16-256-pruned50" in got
    got = names("--precisions=int4")
    assert {"int4-rowwise-emb", "student-d16-256-int4emb", "student-d16-256-pruned50-int4emb"} <= {
        *got
    }
    assert not any(n.endswith("int8") for n in got)
    assert {r["precision"] for r in recipes("--precisions=fp32").values()} == {"fp32"}


def test_static_quantization_switch() -> None:
    assert "int8-static-qdq" in names("--static-quantization")
    assert "int8-static-qdq" not in names("--no-static-quantization")
    assert "int8-static-qdq" not in names("--precisions=fp32,fp16", "--static-quantization")


def test_every_pruning_ratio_is_built_with_its_combinations() -> None:
    got = names("--prune-bp=5000,3000", "--precisions=fp32,int8")
    for pct in ("50", "30"):
        assert f"pruned-{pct}" in got and f"pruned-{pct}-int8" in got
        assert f"student-d16-256-pruned{pct}-int8" in got
    r = recipes("--prune-bp=5000,3000")
    assert r["pruned-30"]["pruningRatioBasisPoints"] == 3000
    assert r["student-d16-256-pruned30-int8"]["pruningRatioBasisPoints"] == 3000
    assert r["pruned-50-int8"]["pruningRatioBasisPoints"] == 5000
    assert next(n for n in names("--prune-bp=2500") if "prun" in n) == "pruned-25"
    assert names("--prune-bp=5050")[6] == "pruned-50p5"  # no name clash with 5000
    assert names("--prune-bp=3000,3000").count("pruned-30") == 1
    assert options("--prune-bp=3000,5000").pruning_ratios_bp == (3000, 5000)
    assert not any("prun" in n for n in names("--no-pruning"))


def test_max_students_quick_and_distillation() -> None:
    assert len(student_shapes(options())) == DEFAULT_STUDENTS
    assert len(student_shapes(options("--quick"))) == QUICK_STUDENTS
    assert student_shapes(options("--max-students=2")) == STUDENT_SHAPES[:2]
    # an explicit --max-students wins over --quick, in both directions
    assert len(student_shapes(options("--quick", "--max-students=5"))) == 5
    assert len(student_shapes(options("--quick", "--max-students=1"))) == 1
    assert len(student_shapes(options("--max-students=16"))) == 16
    explicit = [(8, [32]), (8, [16]), (4, [16])]
    assert student_shapes(options(), explicit) == explicit
    assert student_shapes(options("--max-students=2"), explicit) == explicit[:2]
    assert student_shapes(options("--no-distillation", "--max-students=3")) == []
    assert student_shapes(options("--no-distillation"), explicit) == []
    assert not any("student" in n for n in names("--no-distillation"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precisions=fp32,int3"], "unknown precision 'int3'"),
        (["--precisions=,"], "names no precision"),
        (["--prune-bp=50"], "out of range 100..9500"),
        (["--prune-bp=5000,9600"], "out of range 100..9500"),
        (["--prune-bp=half"], "comma-separated integers"),
        (["--prune-bp=5000", "--no-pruning"], "contradict"),
        (["--holdout-bp=99"], "out of range 100..5000"),
        (["--holdout-bp=5001"], "out of range 100..5000"),
        (["--max-students=0"], "out of range 1..16"),
        (["--max-students=17"], "out of range 1..16"),
    ],
)
def test_bad_values_are_one_line_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BuildError, match=message):
        options(*argv)
    parser = argparse.ArgumentParser()
    optimize.register(parser.add_subparsers())
    args = parser.parse_args(["optimize", *argv])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_good_values_pass_through() -> None:
    opts = options(
        "--precisions=INT8, fp16",
        "--no-static-quantization",
        "--prune-bp=100,9500",
        "--max-students=4",
        "--holdout-bp=1000",
    )
    assert opts.precisions == {"fp32", "fp16", "int8"}
    assert not opts.static_quantization and opts.pruning_ratios_bp == (100, 9500)
    assert opts.max_students == 4 and opts.holdout_bp == 1000
    assert opts.summary()["precisions"] == ["fp32", "fp16", "int8"]
    assert options().pruning_ratios_bp == (5000,) and options().holdout_bp == 2000


def _default(parser_of: Any, subcommand: str, flag: str, *required: str) -> Any:
    parser = argparse.ArgumentParser()
    parser_of(parser.add_subparsers())
    return getattr(parser.parse_args([subcommand, *required]), flag)


def test_profiles_use_the_server_thread_count() -> None:
    serve = _default(server_cli.register, "serve", "intra_op_threads", "--variant=x")
    prof = _default(profile_cmd.register, "profile", "threads", "--variants=x", "--json=y")
    assert serve == prof == SERVER_INTRA_OP_THREADS
    assert inspect.signature(profiler.profile).parameters["threads"].default == serve
