"""The torch model: pooling, freezing, batched predict, TorchScript export, seeded init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serving.models import (
    FeatureSchema,
    ModelConfig,
    RankerModel,
    export_dense_torchscript,
    load_dense_torchscript,
)

CONFIG = ModelConfig(FeatureSchema((5, 7, 9), num_dense=2), embedding_dim=4, top_hidden=(8, 6))


def _inputs(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    schema = CONFIG.schema
    local = np.stack([rng.integers(0, n, rows) for n in schema.field_vocab_sizes], axis=1)
    return local + schema.offsets, rng.normal(size=(rows, schema.num_dense)).astype(np.float32)


def test_schema_split_and_offsets() -> None:
    schema = FeatureSchema.split(10, 3, 1)
    assert schema.field_vocab_sizes == (4, 3, 3)
    assert schema.offsets.tolist() == [0, 4, 7]
    assert schema.sparse_columns == ("sparse_0", "sparse_1", "sparse_2")


def test_multi_hot_pooling_sums_rows_and_skips_padding_and_dropped_keys() -> None:
    model = RankerModel(CONFIG, seed=0)
    table = model.sparse.table.weight.detach()
    ids = torch.tensor([[[0, 1], [5, -1], [12, 13]]])  # [B=1, F=3, H=2], -1 = padding
    keep = torch.tensor([[[True, True], [True, True], [True, False]]])
    pooled = model.sparse(ids, keep).detach()
    assert torch.allclose(pooled[0, 0], table[0] + table[1])
    assert torch.allclose(pooled[0, 1], table[5])
    assert torch.allclose(pooled[0, 2], table[12])
    single = model.sparse(torch.tensor([[0, 5, 12]])).detach()
    assert torch.allclose(single[0], table[[0, 5, 12]])


def test_torchscript_dense_part_gives_the_eager_scores(tmp_path: Path) -> None:
    model = RankerModel(CONFIG, seed=1).eval()
    path = tmp_path / "dense.pt"
    export_dense_torchscript(model.dense, path)
    scripted = load_dense_torchscript(path)
    ids, dense = _inputs(64)
    pooled = model.sparse(torch.as_tensor(ids)).detach()
    with torch.no_grad():
        eager = torch.sigmoid(model.dense(pooled, torch.as_tensor(dense)))
        script = scripted(pooled, torch.as_tensor(dense))
    assert torch.allclose(eager, script, atol=1e-6)
    assert np.allclose(model.predict(ids, dense), script.numpy(), atol=1e-6)


def test_no_dense_features_is_a_valid_model(tmp_path: Path) -> None:
    config = ModelConfig(FeatureSchema((4, 4), num_dense=0), embedding_dim=3, top_hidden=(5,))
    model = RankerModel(config, seed=0)
    export_dense_torchscript(model.dense, tmp_path / "dense.pt")
    scores = load_dense_torchscript(tmp_path / "dense.pt")(torch.zeros(2, 2, 3), torch.zeros(2, 0))
    assert scores.shape == (2,)


def test_predict_in_batches_equals_one_batch() -> None:
    model = RankerModel(CONFIG, seed=2)
    ids, dense = _inputs(100)
    assert np.allclose(model.predict(ids, dense, batch_rows=7), model.predict(ids, dense))


def test_same_seed_same_weights_other_seed_different() -> None:
    a, b, c = RankerModel(CONFIG, 4), RankerModel(CONFIG, 4), RankerModel(CONFIG, 5)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_freeze_depth_freezes_the_lowest_blocks() -> None:
    model = RankerModel(CONFIG, 0)
    assert CONFIG.freeze_blocks == 3
    model.freeze(1)
    assert not model.sparse.table.weight.requires_grad
    assert not any(p.requires_grad for p in model.dense.bottom.parameters())
    assert all(p.requires_grad for p in model.dense.top.parameters())
    model.freeze(3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"dense.head.weight", "dense.head.bias"}
    model.freeze(0)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="freeze depth"):
        model.freeze(4)
