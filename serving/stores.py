"""Parameter stores: where embedding rows live, looked up by key id.

- `MmapStore`: the table `jizhi train` writes (a float32 `.npy`), memory-mapped; the embedded
  default for one machine.
- `RedisStore`: one Redis string per key (`PREFIX` + id → the row's float32 bytes), shared by
  every replica on every machine; a lookup is one pipelined MGET per chunk of keys.
  `load_redis(table, url)` (`jizhi store load MODEL redis://…`) fills it from a table.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.npy"
>>> np.save(path, np.arange(6, dtype=np.float32).reshape(3, 2))
>>> open_store(str(path)).get(np.array([2, 0])).tolist()
[[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from simulator.errors import InputError, ServiceError

__all__ = ["MmapStore", "ParameterStore", "RedisStore", "StoreError", "load_redis", "open_store"]

DEFAULT_PREFIX = "jizhi:emb:"
_CHUNK = 2048


class StoreError(ServiceError):
    """The store cannot answer (unreachable, or a key it should hold is missing)."""


class ParameterStore(Protocol):
    dim: int
    rows: int

    def get(self, keys: NDArray[np.int64]) -> NDArray[np.float32]:
        """Rows for `keys` (distinct, in range), as a new [len(keys), dim] float32 array."""
        ...

    def close(self) -> None: ...


class MmapStore:
    def __init__(self, path: str | Path) -> None:
        try:
            table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"parameter store {path}: cannot memory-map it ({exc})") from None
        if table.ndim != 2 or table.dtype != np.float32:
            raise InputError(
                f"parameter store {path}: expected a float32 [vocab, dim] table "
                f"(got {table.dtype} {list(table.shape)})"
            )
        self._table = table
        self.rows, self.dim = int(table.shape[0]), int(table.shape[1])

    def get(self, keys: NDArray[np.int64]) -> NDArray[np.float32]:
        return np.asarray(self._table[keys], dtype=np.float32)

    def close(self) -> None:
        self._table = np.zeros((0, self.dim), dtype=np.float32)


class RedisStore:
    def __init__(self, url: str, dim: int | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(url, socket_timeout=5.0)
        self._prefix = prefix
        try:
            meta = self._client.hgetall(f"{prefix}meta")
        except redis.RedisError as exc:
            raise StoreError(f"parameter store {url}: unreachable ({exc})") from None
        if not meta:
            raise InputError(
                f"parameter store {url}: no table under prefix {prefix!r}; "
                f"load one with `jizhi store load MODEL {url}`"
            )
        self.rows, self.dim = int(meta[b"rows"]), int(meta[b"dim"])
        if dim is not None and dim != self.dim:
            raise InputError(
                f"parameter store {url}: rows have dim {self.dim}, the model needs {dim}"
            )

    def get(self, keys: NDArray[np.int64]) -> NDArray[np.float32]:
        import redis

        out = np.empty((len(keys), self.dim), dtype=np.float32)
        prefix = self._prefix
        try:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.mget([f"{prefix}{k}" for k in keys[start : start + _CHUNK].tolist()])
            chunks = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"parameter store: lookup failed ({exc})") from None
        row = 0
        for values in chunks:
            for value in values:
                if value is None:
                    raise StoreError(f"parameter store: key {int(keys[row])} is missing")
                out[row] = np.frombuffer(value, dtype=np.float32)
                row += 1
        return out

    def close(self) -> None:
        self._client.close()


def open_store(location: str, dim: int | None = None) -> ParameterStore:
    """`redis://…` → `RedisStore`; anything else is the path of a `.npy` table."""
    if location.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(location, dim)
    store = MmapStore(location)
    if dim is not None and store.dim != dim:
        raise InputError(
            f"parameter store {location}: rows have dim {store.dim}, the model needs {dim}"
        )
    return store


def load_redis(table_path: str | Path, url: str, prefix: str = DEFAULT_PREFIX) -> int:
    """Copy a `.npy` table into Redis (one key per row, pipelined); returns rows written."""
    import redis

    source = MmapStore(table_path)
    client: Any = redis.Redis.from_url(url, socket_timeout=30.0)
    table = source._table
    try:
        for start in range(0, source.rows, 10_000):
            block = np.ascontiguousarray(table[start : start + 10_000])
            pipe = client.pipeline(transaction=False)
            pipe.mset({f"{prefix}{start + i}": row.tobytes() for i, row in enumerate(block)})
            pipe.execute()
        client.hset(f"{prefix}meta", mapping={"rows": source.rows, "dim": source.dim})
    except redis.RedisError as exc:
        raise StoreError(f"parameter store {url}: load failed ({exc})") from None
    finally:
        client.close()
    return source.rows
