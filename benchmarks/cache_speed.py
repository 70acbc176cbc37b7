"""Speed of the key cache: ns per key for KeyCache.access on a Zipf(1.0) stream over 10^6 keys, calls of
256 keys, capacity 10^5, per policy, against a pure-Python OrderedDict LRU.

Run: .venv/bin/python benchmarks/cache_speed.py  (about 15 s; best of several repeats, since the
numbers move with whatever else the machine is doing).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from simulator.cache import CachePolicy, make_cache

N_KEYS = 1_000_000
ALPHA = 1.0
CAPACITY = 100_000
CALL_KEYS = 256
STREAM_KEYS = 1_000_000  # timed, after as many keys of warm-up
PYTHON_KEYS = 200_000  # the pure-Python loop is timed on a prefix
REPEATS = 5


def zipf_stream(size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    p = np.arange(1, N_KEYS + 1, dtype=np.float64) ** -ALPHA
    return rng.choice(N_KEYS, size, p=p / p.sum()).astype(np.int64)


def compiled_ns_per_key(
    policy: CachePolicy, warmup: list[np.ndarray], timed: list[np.ndarray]
) -> tuple[float, float]:
    cache = make_cache(policy, CAPACITY)
    for call in warmup:
        cache.access(call)
    best = float("inf")
    hits = misses = 0
    for _ in range(REPEATS):
        h0, m0 = cache.hits, cache.misses
        start = time.perf_counter_ns()
        for call in timed:
            cache.access(call)
        best = min(best, (time.perf_counter_ns() - start) / STREAM_KEYS)
        hits, misses = cache.hits - h0, cache.misses - m0
    return best, hits / max(hits + misses, 1)


def python_lru_ns_per_key(warmup: list[list[int]], timed: list[list[int]]) -> float:
    lru: OrderedDict[int, None] = OrderedDict()

    def replay(calls: list[list[int]]) -> None:
        for call in calls:
            for key in call:
                if key in lru:
                    lru.move_to_end(key)
                else:
                    lru[key] = None
                    if len(lru) > CAPACITY:
                        lru.popitem(last=False)

    replay(warmup)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        replay(timed)
        best = min(best, (time.perf_counter_ns() - start) / sum(len(c) for c in timed))
    return best


def per_call_overhead_ns() -> float:
    cache = make_cache(CachePolicy.LRU, CAPACITY)
    one = np.zeros(1, dtype=np.int64)
    cache.access(one)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(100_000):
            cache.access(one)
        best = min(best, (time.perf_counter_ns() - start) / 100_000)
    return best


def main() -> None:
    stream = zipf_stream(2 * STREAM_KEYS, np.random.default_rng(0))
    calls = [stream[i : i + CALL_KEYS] for i in range(0, len(stream), CALL_KEYS)]
    half = len(calls) // 2
    warmup, timed = calls[:half], calls[half:]
    print(
        f"KeyCache.access, Zipf(alpha={ALPHA}) over {N_KEYS:,} keys, {CALL_KEYS} keys per call, "
        f"capacity {CAPACITY:,}; best of {REPEATS}"
    )
    results = {}
    for policy in CachePolicy:
        ns, hit_rate = compiled_ns_per_key(policy, warmup, timed)
        results[policy] = ns
        print(
            f"  {policy.value:<5} {ns:6.1f} ns/key   hit rate {hit_rate:.3f} (distinct keys per call)"
        )
    print(f"  1-key call: {per_call_overhead_ns():.0f} ns per call")
    n_calls = PYTHON_KEYS // CALL_KEYS
    python_ns = python_lru_ns_per_key(
        [c.tolist() for c in warmup], [c.tolist() for c in timed[:n_calls]]
    )
    print(
        f"  pure-Python OrderedDict LRU: {python_ns:.1f} ns/key "
        f"({python_ns / results[CachePolicy.LRU]:.1f}x the compiled LRU)"
    )


if __name__ == "__main__":
    main()
