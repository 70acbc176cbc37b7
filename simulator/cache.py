"""The one embedding-key cache (LRU, LFU or none): the simulator replays keys through it to measure hit
rates, and the serving feature stage puts the same object in front of the parameter store.

The policies run in compiled code (`_cache.pyx`); this module names things and checks input.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator._cache import CacheCore

__all__ = ["CachePolicy", "CacheStatus", "KeyCache", "make_cache"]

_MAX_CAPACITY = 1 << 30
_POLICY_CODES = {"none": 0, "lru": 1, "lfu": 2}  # must match the enum in _cache.pyx


class CachePolicy(str, Enum):
    """Replacement policy. LFU is in-cache LFU: counts are kept only while a key is cached."""

    LRU = "lru"
    LFU = "lfu"
    NONE = "none"


class CacheStatus(IntEnum):
    """What `KeyCache.lookup` says about each position of a call."""

    HIT = 0  # the slot holds this key's value from before the call
    MISS = 1  # first occurrence, not cached: fetch it, then store it in the slot (unless the slot is -1)
    REPEAT = 2  # same key as an earlier position of this call; same slot as that position


class KeyCache:
    """A cache of int64 keys with `capacity` slots; one call handles one batch of keys.

    In each call the first occurrence of a key is a hit or a miss (a miss is inserted, evicting if
    full); later occurrences are repeats, which count as neither and do not touch recency or
    frequency. So hits + misses = distinct keys of the call, as in a feature stage that multi-gets
    each distinct missing key once. With more distinct keys than slots, a key handled earlier in the
    call can be evicted later in it: its value is gone before the caller reads it, so `lookup` gives
    its positions slot -1 (fetch, do not store) and a hit among them is reported, and counted, as a miss.

    >>> cache = make_cache("lru", 2)
    >>> cache.access(np.array([1, 2, 1]))  # 1 and 2 miss, the second 1 is a repeat
    (0, 2)
    >>> cache.access(np.array([1, 3])), cache.contains(2)  # 3 evicts 2, the least recently used
    ((1, 1), False)
    """

    __slots__ = ("_core", "capacity", "policy")

    def __init__(self, policy: CachePolicy | str, capacity: int) -> None:
        try:
            self.policy = CachePolicy(policy)
        except ValueError:
            names = ", ".join(p.value for p in CachePolicy)
            raise ValueError(f"cache policy must be one of {names} (got {policy!r})") from None
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer):
            raise ValueError(f"cache capacity must be an integer (got {capacity!r})")
        if not 0 <= capacity <= _MAX_CAPACITY:
            raise ValueError(f"cache capacity must be between 0 and 2**30 (got {capacity})")
        self._core = CacheCore(_POLICY_CODES[self.policy.value], int(capacity))
        # The policy NONE stores nothing: its effective capacity (rows of values to allocate) is 0.
        self.capacity: int = self._core.capacity

    def __len__(self) -> int:
        return len(self._core)

    def __repr__(self) -> str:
        return (
            f"KeyCache(policy={self.policy.value!r}, capacity={self.capacity}, size={len(self)}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    @property
    def hits(self) -> int:
        """Hits since creation or the last `clear()`."""
        return self._core.hits

    @property
    def misses(self) -> int:
        """Misses since creation or the last `clear()`."""
        return self._core.misses

    def access(self, keys: npt.ArrayLike) -> tuple[int, int]:
        """Replay one call's keys and update the cache; returns (hits, misses) over distinct keys."""
        try:  # NOTE: the common case (contiguous int64) goes straight to the compiled loop.
            return self._core.access(keys)
        except (ValueError, TypeError, BufferError):
            return self._core.access(_as_keys(keys))

    def lookup(
        self,
        keys: npt.ArrayLike,
        slots_out: npt.NDArray[np.int64],
        status_out: npt.NDArray[np.int8],
    ) -> tuple[int, int]:
        """As `access`, and for each position i writes slots_out[i] (the slot in [0, capacity) that
        holds or will hold keys[i]'s value, or -1 to bypass) and status_out[i] (a `CacheStatus`)."""
        try:
            return self._core.lookup(keys, slots_out, status_out)
        except (ValueError, TypeError, BufferError):
            keys = _as_keys(keys)
            _check_out(slots_out, np.int64, "slots_out")
            _check_out(status_out, np.int8, "status_out")
            return self._core.lookup(keys, slots_out, status_out)

    def contains(self, key: int) -> bool:
        """Whether `key` is cached now (does not change recency or counters)."""
        return self._core.contains(key)

    def clear(self) -> None:
        """Drop every key and zero the hit and miss counters."""
        self._core.clear()


def make_cache(policy: CachePolicy | str, capacity: int) -> KeyCache:
    """A `KeyCache` with `capacity` slots under `policy` ("lru", "lfu" or "none")."""
    return KeyCache(policy, capacity)


def _as_keys(keys: npt.ArrayLike) -> npt.NDArray[np.int64]:
    arr = np.asarray(keys)
    if arr.ndim != 1:
        raise ValueError(f"keys must be a 1-D array (got {arr.ndim}-D)")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"keys must be integers (got dtype {arr.dtype})")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_out(arr: Any, dtype: type[np.generic], name: str) -> None:
    if not (
        isinstance(arr, np.ndarray)
        and arr.ndim == 1
        and arr.dtype == dtype
        and arr.flags.c_contiguous
        and arr.flags.writeable
    ):
        raise ValueError(f"{name} must be a writable contiguous 1-D {np.dtype(dtype).name} array")
