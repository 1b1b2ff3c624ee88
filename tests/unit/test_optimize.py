"""`recserve optimize` end to end on a tiny MovieLens model, and every bad-input case."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from recserve_runtime import optimize, train
from recserve_runtime.artifacts import load_manifest, verify
from recserve_runtime.data import load_dataset
from recserve_runtime.zoo.checkpoint import save_checkpoint
from recserve_runtime.zoo.models import ModelConfig, build_model
from tests.manifests import REPO

pytestmark = pytest.mark.unit
torch.set_num_threads(2)


def run_optimize(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    optimize.register(parser.add_subparsers())
    args = parser.parse_args(["optimize", "--threads", "2", *argv])
    return args.handler(args)  # type: ignore[no-any-return]


def no_valid_artifact(out: Path) -> bool:
    return not out.exists() or not list(out.rglob("manifest.json"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DLRM trained for two epochs on 30k real MovieLens rows."""
    data = load_dataset("movielens-100k")
    torch.manual_seed(0)
    model = build_model(ModelConfig("dlrm", data.vocab_sizes, data.n_dense, 8, [16], [64, 32]))
    cfg = train.FitConfig(epochs=2, batch_size=1024, lr=3e-3, weight_decay=3e-4)
    train.fit(model, data.train.sample(30_000), data.valid, cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, data.spec)


class _Good(nn.Module):
    def __init__(self, n_sparse: int = 9, vocab: int = 2000, n_dense: int = 19) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(vocab, 4) for _ in range(n_sparse))
        self.lin = nn.Linear(4 * n_sparse + n_dense, 1)

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        e = [emb(sparse_ids[:, k]) for k, emb in enumerate(self.embs)]
        return torch.sigmoid(self.lin(torch.cat(e + [dense], 1))).squeeze(1)  # noqa: RUF005


class _Branchy(_Good):
    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        e = [emb(sparse_ids[:, k]) for k, emb in enumerate(self.embs)]
        out = torch.sigmoid(self.lin(torch.cat(e + [dense], 1))).squeeze(1)  # noqa: RUF005
        if bool(dense.sum() > 0):
            out = out * 0.5
        return out


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user_bag = nn.EmbeddingBag(2000, 4, mode="sum")
        self.lin = nn.Linear(4 + 19, 1)

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lin(torch.cat([self.user_bag(sparse_ids), dense], 1))).squeeze(1)


def script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def spec_file(tmp_path: Path, n_sparse: int = 9, vocab: int = 2000) -> Path:
    spec = load_dataset("movielens-100k").spec.model_dump(by_alias=True, mode="json")
    spec["sparse"] = [dict(f, vocabSize=vocab) for f in spec["sparse"]][:n_sparse]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_optimize_end_to_end_with_accuracy_gate(tiny_ckpt: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "store", tmp_path / "report" / "r.json"
    rc = run_optimize(
        "--model",
        str(tiny_ckpt),
        "--out",
        str(out),
        "--json",
        str(report),
        "--quick",
        "--accuracy-budget-bp",
        "0",
        "--max-train-rows",
        "15000",
    )
    assert rc == 0
    data = json.loads(report.read_text())
    names = [v["name"] for v in data["variants"]]
    for want in (
        "fp32",
        "fp16",
        "int8-dynamic",
        "int8-static-qdq",
        "int4-rowwise-emb",
        "pruned-50",
        "pruned-50-int8",
    ):
        assert want in names
    assert any(n.startswith("student-") and n.endswith("-pruned50-int8") for n in names)
    by_name = {v["name"]: v for v in data["variants"]}
    assert by_name["fp32"]["metrics"]["aucDropRelPct"] == 0.0
    for v in data["variants"]:
        assert 0.5 < v["metrics"]["auc"] < 1.0
        assert [p["batchSize"] for p in v["profile"]["points"]] == [1, 8, 64, 256, 1024]
        assert v["accepted"] == (v["metrics"]["aucDropRelPct"] <= 0.0)
        folder = Path(v["location"])
        verify(folder)
        manifest = load_manifest(folder)
        assert manifest.name == v["name"] and manifest.metrics["accepted"] == float(v["accepted"])
        assert manifest.feature_spec.sparse[0].name == "user_id"
        # the training data's bins, for the servers' data drift figures: every column
        ref = manifest.data_reference
        assert ref is not None and ref.rows > 1000
        spec = manifest.feature_spec
        assert [f.feature for f in ref.features if f.kind == "sparse"] == [
            f.name for f in spec.sparse
        ]
        assert sum(f.kind == "dense" for f in ref.features) == spec.n_dense
    assert any(not v["accepted"] for v in data["variants"])  # budget 0 rejects some, kept
    chosen = by_name[data["selected"]]
    assert chosen["accepted"]
    accepted = [v for v in data["variants"] if v["accepted"]]
    assert chosen["p99UsAtSloBatch"] == min(v["p99UsAtSloBatch"] for v in accepted)
    assert set(data["paretoFront"]) <= set(names) and data["selected"] in data["paretoFront"]
    pruned = by_name["pruned-50"]["metrics"]["mlpParams"]
    assert pruned < 0.5 * sum(
        p.numel()
        for p in build_model(ModelConfig("dlrm", [2] * 9, 19, 8, [16], [64, 32])).top.parameters()
    )
    assert report.with_suffix(".png").stat().st_size > 10_000
    assert len(data["studentSearch"]) == 3 and sum(s["chosen"] for s in data["studentSearch"]) == 1


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    assert run_optimize("--model", str(tmp_path / "nope.pt"), "--out", str(out)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert no_valid_artifact(out)


@pytest.mark.parametrize("content", [b"", b"\x80garbage" * 100])
def test_corrupt_model_file(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, out = tmp_path / "bad.pt", tmp_path / "store"
    bad.write_bytes(content)
    assert run_optimize("--model", str(bad), "--out", str(out)) == 2
    assert "neither a recserve checkpoint, a TorchScript model nor an ONNX model" in (
        capsys.readouterr().err
    )
    assert no_valid_artifact(out)


def test_truncated_checkpoint(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut, out = tmp_path / "cut.pt", tmp_path / "store"
    cut.write_bytes(tiny_ckpt.read_bytes()[:5000])
    assert run_optimize("--model", str(cut), "--out", str(out)) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert no_valid_artifact(out)


def test_feature_spec_mismatch_zoo(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    spec = spec_file(tmp_path, n_sparse=3)
    rc = run_optimize("--model", str(tiny_ckpt), "--feature-spec", str(spec), "--out", str(out))
    assert rc == 2
    assert "has 3 sparse features but the model has 9 embedding tables" in capsys.readouterr().err
    assert no_valid_artifact(out)


def test_feature_spec_mismatch_torchscript(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = script(_Good(vocab=100), tmp_path / "ts.pt")  # tables smaller than the ids
    spec, out = spec_file(tmp_path, vocab=2000), tmp_path / "store"
    assert run_optimize("--model", str(model), "--feature-spec", str(spec), "--out", str(out)) == 2
    assert "does not match the model" in capsys.readouterr().err
    assert no_valid_artifact(out)


def test_torchscript_needs_feature_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = script(_Good(), tmp_path / "ts.pt")
    assert run_optimize("--model", str(model), "--out", str(tmp_path / "s")) == 2
    assert "--feature-spec" in capsys.readouterr().err


def test_unsupported_layers_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, out = spec_file(tmp_path), tmp_path / "store"
    bag = script(_Bag(), tmp_path / "bag.pt")
    assert run_optimize("--model", str(bag), "--feature-spec", str(spec), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "user_bag (EmbeddingBag)" in err and "nn.Embedding" in err
    branchy = script(_Branchy(), tmp_path / "branchy.pt")
    assert (
        run_optimize("--model", str(branchy), "--feature-spec", str(spec), "--out", str(out)) == 2
    )
    err = capsys.readouterr().err
    assert "data-dependent control flow" in err and "dense.sum()" in err
    assert no_valid_artifact(out)


def test_missing_dataset(
    tiny_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSERVE_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("RECSERVE_OFFLINE", "1")
    out = tmp_path / "store"
    assert run_optimize("--model", str(tiny_ckpt), "--out", str(out)) == 2
    assert "MovieLens-100k not found" in capsys.readouterr().err
    assert no_valid_artifact(out)
    assert run_optimize("--model", str(tiny_ckpt), "--dataset", "nope", "--out", str(out)) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_unwritable_output(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_optimize("--model", str(tiny_ckpt), "--out", str(blocker / "store")) == 2
    assert "cannot write to output location" in capsys.readouterr().err
    rc = run_optimize(
        "--model", str(tiny_ckpt), "--out", str(tmp_path / "ok"), "--json", str(blocker / "r.json")
    )
    assert rc == 2
    assert "cannot write report file" in capsys.readouterr().err
    assert no_valid_artifact(tmp_path / "ok")


def test_real_entry_point_exit_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recserve_runtime.cli",
            "optimize",
            "--model",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: model file" in done.stderr and "does not exist" in done.stderr


def test_torchscript_model_gets_onnx_level_variants(tmp_path: Path) -> None:
    model = script(_Good(), tmp_path / "ts.pt")
    out, report = tmp_path / "store", tmp_path / "r.json"
    rc = run_optimize(
        "--model",
        str(model),
        "--feature-spec",
        str(spec_file(tmp_path)),
        "--out",
        str(out),
        "--json",
        str(report),
        "--quick",
    )
    assert rc == 0
    data = json.loads(report.read_text())
    names = {v["name"] for v in data["variants"]}
    assert {"fp32", "int8-dynamic", "int8-static-qdq", "int4-rowwise-emb"} <= names
    assert not any(n.startswith(("pruned", "student")) for n in names)
    assert data["model"]["arch"] == "torchscript"
    for v in data["variants"]:
        verify(Path(v["location"]))


def test_torchscript_build_follows_the_precision_options(tmp_path: Path) -> None:
    model = script(_Good(), tmp_path / "ts.pt")
    report = tmp_path / "r.json"
    rc = run_optimize(
        "--model",
        str(model),
        "--feature-spec",
        str(spec_file(tmp_path)),
        "--out",
        str(tmp_path / "store"),
        "--json",
        str(report),
        "--quick",
        "--precisions=int8",
        "--no-static-quantization",
    )
    assert rc == 0
    data = json.loads(report.read_text())
    assert [v["name"] for v in data["variants"]] == ["fp32", "int8-dynamic"]
    assert data["policy"]["precisions"] == ["fp32", "int8"]
    assert data["policy"]["staticQuantization"] is False
    assert data["profileThreads"] == 1
    assert all(v["profile"]["threads"] == 1 for v in data["variants"])


def test_zoo_build_prunes_at_every_ratio_on_the_chosen_holdout(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    rc = run_optimize(
        "--model",
        str(tiny_ckpt),
        "--out",
        str(tmp_path / "store"),
        "--json",
        str(report),
        "--quick",
        "--precisions=fp32",
        "--prune-bp=3000,5000",
        "--no-distillation",
        "--max-train-rows",
        "5000",
        "--holdout-bp",
        "1000",
    )
    assert rc == 0
    data = json.loads(report.read_text())
    by_name = {v["name"]: v for v in data["variants"]}
    assert list(by_name) == ["fp32", "pruned-30", "pruned-50"]
    assert by_name["pruned-30"]["recipe"]["pruningRatioBasisPoints"] == 3000
    assert by_name["pruned-50"]["recipe"]["pruningRatioBasisPoints"] == 5000
    assert (
        by_name["pruned-30"]["metrics"]["mlpParams"] > by_name["pruned-50"]["metrics"]["mlpParams"]
    )
    assert data["studentSearch"] == [] and data["policy"]["distillation"] is False
    assert data["policy"]["holdoutBasisPoints"] == 1000
    assert 9_000 < data["heldOutRows"] < 12_000  # ~10% of 100k, not the default 20%


def test_student_shape_option() -> None:
    assert optimize.parse_shape("16:256x128") == (16, [256, 128])
    with pytest.raises(SystemExit):
        run_optimize("--student-shape", "sixteen")


def test_model_from_fsspec_uri(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fsspec

    from recserve_runtime.builder.source import fetch_model, load_source

    fs = fsspec.filesystem("memory")
    fs.pipe("/recserve-test/models/tiny.pt", tiny_ckpt.read_bytes())
    local = fetch_model("memory://recserve-test/models/tiny.pt")
    assert local.read_bytes() == tiny_ckpt.read_bytes()
    assert (
        load_source("memory://recserve-test/models/tiny.pt", None, "movielens-100k").kind == "zoo"
    )
    rc = run_optimize("--model", "memory://recserve-test/models/missing.pt", "--out", str(tmp_path))
    assert rc == 2 and "cannot be fetched" in capsys.readouterr().err


@pytest.fixture(scope="module")
def byom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The bring-your-own example: a TorchScript DeepFM taking (dense_feats, ids), the same
    model as ONNX, its spec and Parquet interactions with a planted signal."""
    out = tmp_path_factory.mktemp("byom")
    script = REPO / "examples" / "bring-your-own" / "make_model_and_data.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--rows", "20000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out, json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("model", ["deepfm.pt", "deepfm.onnx"])
def test_bring_your_own_model_is_measured_on_its_own_data(
    byom: tuple[Path, dict[str, Any]], tmp_path: Path, model: str
) -> None:
    folder, facts = byom
    report = tmp_path / "r.json"
    rc = run_optimize(
        *("--model", str(folder / model), "--feature-spec", str(folder / "spec.yaml")),
        *("--eval-data", str(folder / "interactions.parquet"), "--time-column", "ts"),
        *("--precisions", "fp32,int8", "--no-static-quantization", "--quick"),
        *("--out", str(tmp_path / "store"), "--json", str(report)),
    )
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["heldOutRows"] == facts["test_rows"]
    assert data["model"]["format"] == model.split(".")[1].replace("pt", "torchscript")
    variants = {v["name"]: v for v in data["variants"]}
    assert set(variants) == {"fp32", "int8-dynamic"}
    # the FP32 variant scores the held-out rows as the model itself does
    assert abs(variants["fp32"]["metrics"]["auc"] - facts["model_test_auc"]) < 1e-3
    assert variants["int8-dynamic"]["accepted"]
    manifest = load_manifest(Path(variants["int8-dynamic"]["location"]))
    assert [t.name for t in manifest.inputs] == ["ids", "dense_feats"]
    assert [t.name for t in manifest.outputs] == ["score"]


def test_custom_eval_data_errors_are_one_line_and_write_nothing(
    byom: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = byom
    out = tmp_path / "store"
    base = ("--model", str(folder / "deepfm.pt"), "--feature-spec", str(folder / "spec.yaml"))
    data = ("--eval-data", str(folder / "interactions.parquet"))
    assert run_optimize(*base, *data, "--out", str(out)) == 2
    assert "no split declared" in capsys.readouterr().err
    assert run_optimize(*base, "--time-column", "ts", "--out", str(out)) == 2
    assert "--time-column describe --eval-data, which is not given" in capsys.readouterr().err
    assert run_optimize(*base, *data, "--time-column", "when", "--out", str(out)) == 2
    assert "'when'" in capsys.readouterr().err
    assert no_valid_artifact(out)
