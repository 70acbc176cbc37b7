"""Samplers for service-time models: `sampler(rows) -> seconds`, drawing from a seeded generator.

Random numbers are drawn from numpy in blocks and handed out one at a time, which keeps a draw at
a few hundred nanoseconds inside the engine's hot path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.spec import (
    Deterministic,
    Exponential,
    Linear,
    Lognormal,
    Profile,
    ServiceTime,
    StoreSpec,
)

__all__ = ["Sampler", "load_profile_table", "make_sampler", "make_store_sampler", "mean_seconds"]

Sampler = Callable[[int], float]
_BLOCK = 4096


class _Blocks:
    """Hands out draws of `draw(n)` one by one, refilling `_BLOCK` at a time."""

    __slots__ = ("_buf", "_draw", "_i")

    def __init__(self, draw: Callable[[int], np.ndarray]) -> None:
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        i = self._i
        if i == len(self._buf):
            self._buf = self._draw(_BLOCK).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]


def _lognormal_unit(rng: np.random.Generator, cv: float) -> _Blocks:
    """Multiplicative noise with mean 1 and coefficient of variation `cv`."""
    sigma2 = math.log1p(cv * cv)
    mu, sigma = -sigma2 / 2.0, math.sqrt(sigma2)
    return _Blocks(lambda n: rng.lognormal(mu, sigma, n))


def load_profile_table(model: Profile) -> dict[int, list[float]]:
    """The profile's samples per batch size in rows, from the spec's table or a `jizhi profile` file."""
    if model.table is not None:
        return {int(k): list(v) for k, v in model.table.items()}
    assert model.file is not None
    try:
        data = json.loads(Path(model.file).read_text())
        table = {int(k): [float(x) for x in v] for k, v in data["latency_s"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{model.file}: not a latency profile with 'latency_s': {{rows: [seconds, ...]}} ({exc})"
        ) from None
    if not table or any(not v or min(v) <= 0 for v in table.values()):
        raise InputError(f"{model.file}: every profiled batch size needs positive latency samples")
    return table


class _ProfileSampler:
    """Draws a quantile u and reads it off the neighbouring profiled sizes' sorted samples."""

    def __init__(self, model: Profile, rng: np.random.Generator) -> None:
        table = load_profile_table(model)
        self._sizes = sorted(table)
        self._sorted = {k: sorted(v) for k, v in table.items()}
        self._scale = model.scale
        self._u = _Blocks(rng.random)

    def _at(self, size: int, u: float) -> float:
        samples = self._sorted[size]
        return samples[min(int(u * len(samples)), len(samples) - 1)]

    def __call__(self, rows: int) -> float:
        u = self._u.next()
        sizes = self._sizes
        if rows <= sizes[0]:
            return self._scale * self._at(sizes[0], u)
        if rows >= sizes[-1]:
            return self._scale * self._at(sizes[-1], u) * rows / sizes[-1]
        hi = next(s for s in sizes if s >= rows)
        if hi == rows:
            return self._scale * self._at(hi, u)
        lo = sizes[sizes.index(hi) - 1]
        w = (rows - lo) / (hi - lo)
        return self._scale * ((1.0 - w) * self._at(lo, u) + w * self._at(hi, u))


def make_sampler(model: ServiceTime, rng: np.random.Generator) -> Sampler:
    """A function of the rows in a batch returning that batch's service time in seconds."""
    if isinstance(model, Deterministic):
        seconds = model.seconds
        return lambda rows: seconds
    if isinstance(model, Exponential):
        mean = model.mean_s
        draws = _Blocks(lambda n: rng.exponential(mean, n))
        return lambda rows: draws.next()
    if isinstance(model, Lognormal):
        mean = model.mean_s
        noise = _lognormal_unit(rng, model.cv)
        return lambda rows: mean * noise.next()
    if isinstance(model, Linear):
        base, per_row = model.base_s, model.per_row_s
        if model.cv == 0:
            return lambda rows: base + per_row * rows
        linear_noise = _lognormal_unit(rng, model.cv)
        return lambda rows: (base + per_row * rows) * linear_noise.next()
    return _ProfileSampler(model, rng)


def make_store_sampler(store: StoreSpec, rng: np.random.Generator) -> Sampler:
    """Latency of one parameter-store multi-get as a function of the number of missed keys."""
    base, per_key = store.base_s, store.per_key_s
    if store.cv == 0:
        return lambda misses: base + per_key * misses
    noise = _lognormal_unit(rng, store.cv)
    return lambda misses: (base + per_key * misses) * noise.next()


def mean_seconds(model: ServiceTime, rows: int) -> float:
    """Expected service time of a batch of `rows` rows (for capacity estimates and theory checks)."""
    if isinstance(model, Deterministic):
        return model.seconds
    if isinstance(model, Exponential | Lognormal):
        return model.mean_s
    if isinstance(model, Linear):
        return model.base_s + model.per_row_s * rows
    sampler = _ProfileSampler(model, np.random.default_rng(0))
    u_grid = (np.arange(1000) + 0.5) / 1000
    sampler._u = _Blocks(lambda n: np.resize(u_grid, n))
    return float(np.mean([sampler(rows) for _ in range(1000)]))
