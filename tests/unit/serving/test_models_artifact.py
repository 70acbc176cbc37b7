"""The model directory: round trip, and one clear InputError for anything incomplete or foreign."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.models import (
    DomainData,
    ModelArtifact,
    TrainOutcome,
    read_artifact,
    write_artifact,
)
from simulator.errors import InputError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _write(
    out: Path,
    data: DomainData,
    outcome: TrainOutcome,
    overwrite: bool = False,
    before_rename: Callable[[Path], None] | None = None,
) -> ModelArtifact:
    return write_artifact(
        out,
        outcome.model,
        data.popularity_rank,
        quality=outcome.quality,
        report=outcome.report,
        training=outcome.training,
        overwrite=overwrite,
        before_rename=before_rename,
    )


def _copy(artifact: ModelArtifact, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact.path, tmp_path / "copy"))


def test_round_trip(
    tiny_artifact: ModelArtifact, tiny_data: DomainData, tiny_outcome: TrainOutcome
) -> None:
    artifact = read_artifact(tiny_artifact.path)
    schema = tiny_data.schema
    assert artifact.config == tiny_outcome.model.config
    table = artifact.embeddings()
    assert isinstance(table, np.memmap) and table.dtype == np.float32
    assert table.shape == (schema.vocab_size, artifact.config.embedding_dim)
    assert np.array_equal(artifact.popularity_rank(), tiny_data.popularity_rank)
    assert artifact.metadata.sparse_fields[1].offset == schema.offsets[1]
    assert artifact.quality_curve() == tiny_outcome.quality
    assert artifact.training_report()["final_model"]["strategy"] == "auto_freeze"
    # What serving does: pool rows of the mapped table, run the TorchScript dense part.
    test = tiny_data.target_test
    pooled = torch.from_numpy(np.asarray(table[test.ids]))
    served = artifact.dense_torchscript()(pooled, torch.from_numpy(test.dense)).numpy()
    assert np.allclose(served, tiny_outcome.model.predict(test.ids, test.dense), atol=1e-6)
    assert np.allclose(artifact.ranker().predict(test.ids, test.dense), served, atol=1e-6)


def test_missing_file_is_incomplete(tiny_artifact: ModelArtifact, tmp_path: Path) -> None:
    path = _copy(tiny_artifact, tmp_path)
    (path / "dense.pt").unlink()
    with pytest.raises(InputError, match=r"incomplete model directory: dense\.pt is missing"):
        read_artifact(path)
    (path / "metadata.json").unlink()
    with pytest.raises(InputError, match=r"metadata\.json is missing"):
        read_artifact(path)


def test_other_version_or_format_is_rejected(tiny_artifact: ModelArtifact, tmp_path: Path) -> None:
    path = _copy(tiny_artifact, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="format version 99 is not supported"):
        read_artifact(path)
    (path / "metadata.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(InputError, match="not a jizhi model"):
        read_artifact(path)
    (path / "metadata.json").write_text(json.dumps({**meta, "embedding_dim": 5}))
    with pytest.raises(InputError, match=r"embeddings.npy: expected float32 \[600, 5\]"):
        read_artifact(path)
    (path / "metadata.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_artifact(path)
    with pytest.raises(InputError, match="no such model directory"):
        read_artifact(tmp_path / "absent")


def test_existing_output_needs_force_and_must_be_a_model(
    tiny_data: DomainData, tiny_outcome: TrainOutcome, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    _write(out, tiny_data, tiny_outcome)
    with pytest.raises(InputError, match="already exists; pass --force"):
        _write(out, tiny_data, tiny_outcome)
    assert read_artifact(_write(out, tiny_data, tiny_outcome, overwrite=True).path)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a jizhi model directory"):
        _write(other, tiny_data, tiny_outcome, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes"]


def test_failure_while_writing_leaves_nothing_behind(
    tiny_data: DomainData, tiny_outcome: TrainOutcome, tmp_path: Path
) -> None:
    def crash(tmp: Path) -> None:
        assert (tmp / "embeddings.npy").is_file()
        raise RuntimeError("disk full")

    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="disk full"):
        _write(out, tiny_data, tiny_outcome, before_rename=crash)
    assert list(tmp_path.iterdir()) == []
    # Replacing an existing model and failing keeps the old one intact.
    first = _write(out, tiny_data, tiny_outcome)
    before = sorted(p.name for p in first.path.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        _write(out, tiny_data, tiny_outcome, overwrite=True, before_rename=crash)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
