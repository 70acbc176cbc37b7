"""The latency profiler and the `jizhi train` / `jizhi profile` commands (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from jizhi.cli import main
from serving.models import LatencyProfile, ModelArtifact, profile_dense, read_artifact

TINY_TRAIN = [
    "--vocab-size", "400", "--sparse-fields", "3", "--dense-features", "2",
    "--source-rows", "2000", "--target-rows", "1000", "--test-rows", "500",
    "--embedding-dim", "4", "--repeats", "1", "--fractions", "1", "--quiet",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_profile_dense_structure(tiny_artifact: ModelArtifact) -> None:
    ticks = iter(range(10_000))
    profile = profile_dense(
        tiny_artifact.dense_torchscript(),
        num_fields=3,
        embedding_dim=4,
        num_dense=2,
        device="cpu",
        batch_rows=(4, 1, 2),
        min_samples=5,
        max_samples=8,
        time_budget_s=3.0,
        warmup=1,
        clock=lambda: float(next(ticks)),  # every timed call takes exactly 1 "second"
    )
    assert profile.batch_rows == [1, 2, 4]
    assert {k: len(v) for k, v in profile.latency_s.items()} == {"1": 5, "2": 5, "4": 5}
    assert profile.p50_s == {"1": 1.0, "2": 1.0, "4": 1.0}
    assert profile.torch_threads == torch.get_num_threads()
    LatencyProfile.model_validate_json(profile.model_dump_json())


def test_train_then_profile_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["train", *TINY_TRAIN, "--out", str(out), "--threads", "1"]) == 0
    assert "served model: auto_freeze" in capsys.readouterr().out
    artifact = read_artifact(out)
    assert artifact.metadata.vocab_size == 400 and artifact.config.embedding_dim == 4
    args = ["profile", str(out), "--device", "cpu", "--max-batch", "4", "--min-samples", "3"]
    assert main([*args, "--max-samples", "3", "--budget-s", "0.5"]) == 0
    profile = json.loads((out / "profile_cpu.json").read_text())
    assert profile["batch_rows"] == [1, 2, 4] and len(profile["latency_s"]["4"]) == 3
    assert profile["device"] == "cpu" and set(profile["p99_s"]) == {"1", "2", "4"}
    # A second train into the same directory needs --force.
    assert main(["train", *TINY_TRAIN, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_spec_workload_sets_vocabulary_and_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simulator

    workload = SimpleNamespace(
        vocab_size=300, zipf_alpha=1.2, sparse_features_per_row=2, dense_features_per_row=1
    )
    monkeypatch.setattr(simulator, "load_spec", lambda path: SimpleNamespace(workload=workload))
    out = tmp_path / "model"
    small = ["--source-rows", "1500", "--target-rows", "600", "--test-rows", "300"]
    args = ["train", "--spec", "spec.yaml", *small, "--no-compare", "--quiet", "--out", str(out)]
    assert main(args) == 0
    meta = read_artifact(out).metadata
    assert [f.vocab_size for f in meta.sparse_fields] == [150, 150]
    assert meta.dense_features == ["dense_0"]
    assert meta.training["data"]["zipf_alpha"] == 1.2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--source-logs", "a.csv"], "go together"),
        (["train", "--fractions", "0,1"], "--fractions"),
        (["train", "--vocab-size", "2", "--sparse-fields", "3"], "at least the number of fields"),
        (["train", "--repeats", "0"], "--repeats must be >= 1"),
        (["profile", "absent-model"], "no such model directory"),
        (["profile", "absent-model", "--max-batch", "1000"], "power of 2"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, *(["--out", str(tmp_path / "m")] if args[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_malformed_target_logs_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "source.csv"
    good.write_text("label,sparse_0,dense_0\n1,3,0.5\n0,4,0.1\n")
    bad = tmp_path / "target.csv"
    bad.write_text("label,sparse_0,dense_0\n1,3,0.5\n0,99,0.1\n")
    out = tmp_path / "model"
    args = ["train", "--source-logs", str(good), "--target-logs", str(bad), "--out", str(out)]
    assert main([*args, "--vocab-size", "10", "--sparse-fields", "1", "--dense-features", "1"]) == 2
    assert "'sparse_0' needs integer ids in [0, 10) (data row 2 has 99)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.csv", "target.csv"]
