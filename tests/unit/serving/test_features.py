"""The serving feature lookup: same vectors as the table, cut keys zero, the cache saves store calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.features import FeatureLookup
from serving.stores import MmapStore


class CountingStore:
    """A table in memory that counts the keys it was asked for."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.rows, self.dim = table.shape
        self.fetched = 0

    def get(self, keys: np.ndarray) -> np.ndarray:
        assert len(np.unique(keys)) == len(keys), "the store is asked for distinct keys"
        self.fetched += len(keys)
        return self.table[keys].copy()

    def close(self) -> None:
        pass


TABLE = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
RANK = np.random.default_rng(1).permutation(1000).astype(np.int64)  # key → popularity rank


@pytest.mark.parametrize(
    ("policy", "capacity"), [("lru", 50), ("lfu", 50), ("none", 0), ("lru", 3)]
)
def test_vectors_equal_the_table_and_cut_keys_are_zero(policy: str, capacity: int) -> None:
    store = CountingStore(TABLE)
    lookup = FeatureLookup(store, RANK, policy, capacity, cutoff_rank=500)
    rng = np.random.default_rng(2)
    for _ in range(20):
        ids = rng.integers(0, 1000, size=(16, 3))
        vectors, stats = lookup.lookup(ids)
        expected = TABLE[ids] * (RANK[ids] < 500)[..., None]
        np.testing.assert_array_equal(vectors, expected)
        assert stats.keys == 48 and stats.cut == int((RANK[ids] >= 500).sum())
        assert stats.hits + stats.misses == len(np.unique(ids[RANK[ids] < 500]))


def test_the_cache_saves_store_lookups_and_reconfigure_applies_live() -> None:
    store = CountingStore(TABLE)
    lookup = FeatureLookup(store, RANK, "lru", 100)
    ids = np.arange(60).reshape(20, 3)
    lookup.lookup(ids)
    assert store.fetched == 60
    _, stats = lookup.lookup(ids)
    assert (stats.hits, stats.misses, store.fetched) == (60, 0, 60)
    lookup.reconfigure("lru", 100, cutoff_rank=10)
    vectors, stats = lookup.lookup(ids)
    assert stats.cut == int((RANK[ids] >= 10).sum())
    assert not vectors[RANK[ids] >= 10].any()
    lookup.reconfigure("lfu", 10, cutoff_rank=None)
    assert lookup.cache.capacity == 10 and len(lookup.cache) == 0


def test_mmap_store_gives_the_same_vectors(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, TABLE)
    lookup = FeatureLookup(MmapStore(path), RANK, "lru", 10)
    ids = np.array([[1, 2], [3, 1]])
    np.testing.assert_array_equal(lookup.lookup(ids)[0], TABLE[ids])
