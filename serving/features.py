"""The sparse-feature lookup of the serving path: cut-off, cache, parameter store. No Ray here.

For a batch of rows' global key ids [rows, fields]: keys whose popularity rank is ≥ the cut-off
rank K are skipped (a zero vector, counted); the distinct remaining keys go through the replica's
`KeyCache` — the same LRU/LFU implementation the simulator replays —, whose slots index a value
array; the misses are fetched from the parameter store in one multi-get and stored in their slots.
The simulator models exactly this: distinct keys per batch, one store call for the misses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from serving.stores import ParameterStore
from simulator.cache import CachePolicy, CacheStatus, make_cache

__all__ = ["FeatureLookup", "LookupStats"]


@dataclass(frozen=True)
class LookupStats:
    keys: int  # key references in the batch (rows × fields)
    cut: int  # skipped by the cut-off
    hits: int  # distinct kept keys found in the cache
    misses: int  # distinct kept keys fetched from the store
    store_seconds: float  # time spent in the store's multi-get (0 without misses)


class FeatureLookup:
    """Embedding vectors for key ids, through a cut-off, a cache and a parameter store.

    `popularity_rank[k]` is key k's rank (0 = most popular), from the model's metadata.
    """

    def __init__(
        self,
        store: ParameterStore,
        popularity_rank: NDArray[np.int64],
        cache_policy: CachePolicy | str = CachePolicy.LRU,
        cache_capacity: int = 0,
        cutoff_rank: int | None = None,
    ) -> None:
        self.store = store
        self.dim = store.dim
        self.popularity_rank = popularity_rank
        self.cutoff_rank = cutoff_rank
        self.cache = make_cache(cache_policy, cache_capacity)
        self._values = np.zeros((self.cache.capacity, self.dim), dtype=np.float32)

    def reconfigure(
        self, cache_policy: CachePolicy | str, cache_capacity: int, cutoff_rank: int | None
    ) -> None:
        """Change cache and cut-off in place (a new policy or capacity starts an empty cache)."""
        self.cutoff_rank = cutoff_rank
        policy = CachePolicy(cache_policy)
        if policy is not self.cache.policy or cache_capacity != self.cache.capacity:
            self.cache = make_cache(policy, cache_capacity)
            self._values = np.zeros((self.cache.capacity, self.dim), dtype=np.float32)

    def lookup(self, ids: NDArray[np.int64]) -> tuple[NDArray[np.float32], LookupStats]:
        """Vectors [*ids.shape, dim] (zero where cut) and what the lookup did."""
        flat = ids.reshape(-1)
        out = np.zeros((flat.size, self.dim), dtype=np.float32)
        kept = np.ones(flat.size, dtype=bool)
        if self.cutoff_rank is not None:
            kept = self.popularity_rank[flat] < self.cutoff_rank
        keys, inverse = np.unique(flat[kept], return_inverse=True)
        vectors = np.empty((keys.size, self.dim), dtype=np.float32)
        slots = np.empty(keys.size, dtype=np.int64)
        status = np.empty(keys.size, dtype=np.int8)
        hits, misses = self.cache.lookup(keys, slots, status)
        hit = status == CacheStatus.HIT
        vectors[hit] = self._values[slots[hit]]
        missed = ~hit  # keys are distinct: no REPEAT
        store_seconds = 0.0
        if missed.any():
            started = time.perf_counter()
            fetched = self.store.get(keys[missed])
            store_seconds = time.perf_counter() - started
            vectors[missed] = fetched
            stored = slots[missed] >= 0  # -1: evicted again within this batch, not kept
            self._values[slots[missed][stored]] = fetched[stored]
        out[kept] = vectors[inverse]
        stats = LookupStats(
            keys=int(flat.size),
            cut=int(flat.size - kept.sum()),
            hits=hits,
            misses=misses,
            store_seconds=store_seconds,
        )
        return out.reshape(*ids.shape, self.dim), stats
