"""Parameter stores against a real Redis server: same rows as the memory-mapped table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.stores import MmapStore, StoreError, load_redis, open_store
from simulator.errors import InputError

from .services import redis_server

pytestmark = pytest.mark.integration


def test_redis_store_matches_the_mmap_table(tmp_path: Path) -> None:
    table = np.random.default_rng(0).standard_normal((5000, 16)).astype(np.float32)
    path = tmp_path / "embeddings.npy"
    np.save(path, table)
    keys = np.random.default_rng(1).choice(5000, size=3000, replace=False).astype(np.int64)
    with redis_server(tmp_path) as url:
        with pytest.raises(InputError, match="no table under prefix"):
            open_store(url)
        assert load_redis(path, url) == 5000
        redis_store = open_store(url, dim=16)
        np.testing.assert_array_equal(redis_store.get(keys), MmapStore(path).get(keys))
        np.testing.assert_array_equal(redis_store.get(keys), table[keys])
        with pytest.raises(StoreError, match="key 5000 is missing"):
            redis_store.get(np.array([5000], dtype=np.int64))
        with pytest.raises(InputError, match="the model needs 8"):
            open_store(url, dim=8)
        redis_store.close()
