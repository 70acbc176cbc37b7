"""The estimators calibration uses: ratios and straight lines across sub-windows with standard
errors, and the Zipf exponent that explains an observed cache hit rate (or cut-off fraction).

Pure and seeded: no I/O, and the same inputs give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.cache import CachePolicy, make_cache
from simulator.zipf import ZipfSampler

__all__ = [
    "ALPHA_RANGE",
    "AlphaFit",
    "CacheSetting",
    "Line",
    "alpha_from_cut",
    "alpha_from_hit_rate",
    "line",
    "line_or_why",
    "ratio",
    "simulated_hit_rate",
]

ALPHA_RANGE = (0.05, 4.0)  # the Zipf exponents the inversions search
_MAX_WINDOW_KEYS = 300_000  # keys one simulated window replays; longer ones every k-th call
_MAX_WARM_KEYS = 1_000_000  # keys replayed before the window, to warm the cache
_TARGET_KEYS = 200_000  # measured keys per evaluation: short windows are repeated to reach it
_MAX_REPEATS = 16
_GRID = 13  # alphas scanned for crossings, geometrically spaced over ALPHA_RANGE
_BISECTIONS = 11  # refines a grid bracket (≤ 0.5 wide) to about 2e-4
_STEP = 0.02  # half-width of the difference that gives the curve's slope


def ratio(y: Sequence[float], x: Sequence[float]) -> tuple[float, float]:
    """Σy / Σx and its standard error across the k pairs (the ratio estimator; NaN when k < 2).

    SE² = Σ (y_i − R x_i)² / (k (k − 1) x̄²): sub-windows with more traffic weigh more.
    """
    ys, xs = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    total = float(xs.sum())
    if total <= 0:
        return math.nan, math.nan
    r = float(ys.sum()) / total
    k = len(xs)
    if k < 2:
        return r, math.nan
    mean_x = total / k
    return r, math.sqrt(float(((ys - r * xs) ** 2).sum()) / (k * (k - 1))) / mean_x


@dataclass(frozen=True)
class Line:
    """y = intercept + slope × x, with standard errors from the residuals (k − 2 d.o.f.)."""

    intercept: float
    slope: float
    intercept_se: float
    slope_se: float


def line(x: Sequence[float], y: Sequence[float], w: Sequence[float]) -> Line:
    """Weighted least squares; weight w_i ∝ 1 / Var(y_i) (a mean over w_i events: its count)."""
    xs, ys, ws = (np.asarray(v, dtype=float) for v in (x, y, w))
    if len(xs) < 3:
        raise ValueError(f"a line with standard errors needs at least 3 points (got {len(xs)})")
    total = float(ws.sum())
    mx, my = float((ws * xs).sum()) / total, float((ws * ys).sum()) / total
    sxx = float((ws * (xs - mx) ** 2).sum())
    if sxx <= 0:
        raise ValueError("the points share one x: the slope is not identifiable")
    slope = float((ws * (xs - mx) * (ys - my)).sum()) / sxx
    intercept = my - slope * mx
    residual = ys - intercept - slope * xs
    s2 = float((ws * residual**2).sum()) / (len(xs) - 2)
    return Line(
        intercept=intercept,
        slope=slope,
        intercept_se=math.sqrt(s2 * (1.0 / total + mx * mx / sxx)),
        slope_se=math.sqrt(s2 / sxx),
    )


def line_or_why(
    x: Sequence[float], y: Sequence[float], w: Sequence[float], min_spread: float
) -> Line | str:
    """The regression where the data can carry a slope; otherwise why not (for the note)."""
    if len(x) < 3:
        return f"{len(x)} sub-window(s) cannot carry a slope (3 needed): the spec's is kept"
    if min(x) <= 0 or max(x) < min_spread * min(x):
        return (
            f"x varied too little for a slope ({min(x):.3g}–{max(x):.3g}, {min_spread:g}× "
            "needed): the spec's is kept"
        )
    fitted = line(x, y, w)
    if fitted.intercept < 0 or fitted.slope < 0:
        return (
            f"the regression gave a negative term ({fitted.intercept:.3g} "
            f"{fitted.slope:+.3g} × x): the spec's slope is kept"
        )
    return fitted


@dataclass(frozen=True)
class CacheSetting:
    """What one replica's cache saw: its policy and size, the keys of a request, the cut-off, how
    many calls came before the window (warm-up), and the window's calls as segments (one per
    sub-window) of (calls, requests per call): 1 for a lookup per request, the mean batch size for
    a lookup per batch."""

    policy: CachePolicy
    capacity: int
    vocab_size: int
    keys_per_request: int
    cutoff_rank: int | None
    warm_calls: int
    segments: tuple[tuple[int, float], ...]


def simulated_hit_rate(setting: CacheSetting, alpha: float, seed: int) -> tuple[float, int]:
    """(hit rate, keys measured) of the replica cache replaying Zipf(alpha) keys, as the real one
    counts them: distinct keys per call, after the cut-off. The same seed for every alpha (common
    random numbers) keeps the curve over alpha smooth. Long windows are replayed scaled down."""
    sizes = _call_sizes(setting)
    warm = min(setting.warm_calls, _MAX_WARM_KEYS // max(setting.keys_per_request, 1))
    warm_sizes, sizes = sizes[:warm], sizes[warm:]
    window_keys = max(int(sizes.sum()), 1)
    if window_keys > _MAX_WINDOW_KEYS:  # every segment scaled alike, in order
        sizes = sizes[:: math.ceil(window_keys / _MAX_WINDOW_KEYS)]
    warm_sizes = warm_sizes[np.cumsum(warm_sizes[::-1])[::-1] <= _MAX_WARM_KEYS]
    repeats = max(1, min(_MAX_REPEATS, math.ceil(_TARGET_KEYS / max(int(sizes.sum()), 1))))
    hits = misses = 0
    cut = setting.cutoff_rank
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        ends = np.cumsum(np.concatenate([warm_sizes, sizes])).tolist()
        keys = ZipfSampler(setting.vocab_size, alpha, rng).sample(int(ends[-1]))
        cache = make_cache(setting.policy, setting.capacity)
        start, hits0, misses0 = 0, 0, 0
        for i, end in enumerate(ends):
            if i == len(warm_sizes):
                hits0, misses0 = cache.hits, cache.misses
            call = keys[start:end]
            start = end
            cache.access(call if cut is None else call[call < cut])
        hits += cache.hits - hits0
        misses += cache.misses - misses0
    lookups = hits + misses
    return (hits / lookups if lookups else math.nan), lookups


def _call_sizes(setting: CacheSetting) -> np.ndarray:
    """Keys in each call, warm-up first: whole requests, spread as evenly as the mean allows."""
    first = setting.segments[0][1] if setting.segments else 1.0
    warm = min(setting.warm_calls, _MAX_WARM_KEYS // max(setting.keys_per_request, 1))
    segments = [(warm, first), *setting.segments]
    requests = [
        np.diff(np.round(np.linspace(0.0, calls * per_call, calls + 1))).astype(np.int64)
        for calls, per_call in segments
        if calls > 0
    ]
    joined = np.concatenate(requests) if requests else np.zeros(0, dtype=np.int64)
    return np.maximum(joined, 1) * setting.keys_per_request


def _bisect(curve: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The root of curve(alpha) = target in [lo, hi], where curve − target changes sign."""
    rising = curve(lo) < target
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if (curve(mid) < target) == rising:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class AlphaFit:
    alpha: float
    se: float
    at_bound: bool  # the observation lies outside what ALPHA_RANGE can produce
    roots: tuple[float, ...] = ()  # every alpha that explains the observation, when several do


def alpha_from_hit_rate(
    setting: CacheSetting,
    hit_rate: float,
    lookups: float,
    seed: int = 0,
    prefer: float | None = None,
) -> AlphaFit:
    """The Zipf exponent whose simulated hit rate equals the observed one.

    A warm cache smaller than the hot set hits more as alpha grows; a cold or never-full one (a
    short window after a restart, a cut-off below the capacity) need not: the curve is scanned on
    a grid for crossings. With several, the one nearest `prefer` (another estimate, or the spec's
    alpha) is taken, refined by bisection, and all are returned. SE: the binomial SE of the
    observed and the simulated hit rates over the curve's slope at the estimate.
    """
    memo: dict[float, float] = {}

    def curve(alpha: float) -> float:
        if alpha not in memo:
            memo[alpha] = simulated_hit_rate(setting, alpha, seed)[0]
        return memo[alpha]

    lo, hi = ALPHA_RANGE
    grid = np.geomspace(lo, hi, _GRID).tolist()
    values = [curve(a) - hit_rate for a in grid]
    brackets = [
        (a, b, fa, fb)
        for a, b, fa, fb in zip(grid, grid[1:], values, values[1:], strict=False)
        if (fa < 0) != (fb < 0)
    ]
    if not brackets:
        nearest = grid[int(np.argmin(np.abs(values)))]
        return AlphaFit(nearest, math.nan, True)
    # Each crossing, interpolated in its bracket; only the one taken is refined by bisection.
    roots = [a + (b - a) * fa / (fa - fb) for a, b, fa, fb in brackets]
    anchor = prefer if prefer is not None else roots[0]
    chosen = min(range(len(roots)), key=lambda i: abs(roots[i] - anchor))
    alpha = _bisect(curve, hit_rate, brackets[chosen][0], brackets[chosen][1])
    roots[chosen] = alpha
    below, above = max(alpha - _STEP, lo), min(alpha + _STEP, hi)
    h_below, _ = simulated_hit_rate(setting, below, seed)
    h_above, n_sim = simulated_hit_rate(setting, above, seed)
    slope = abs(h_above - h_below) / (above - below)
    variance = hit_rate * (1 - hit_rate)
    se_h = math.sqrt(variance / max(lookups, 1.0) + variance / max(n_sim, 1))
    several = tuple(roots) if len(roots) > 1 else ()
    return AlphaFit(alpha, se_h / slope if slope > 0 else math.nan, False, several)


def alpha_from_cut(vocab_size: int, cutoff_rank: int, cut_fraction: float, keys: float) -> AlphaFit:
    """The Zipf exponent at which P(rank ≥ cutoff_rank) equals the observed fraction of key
    references cut (exact sums; the tail shrinks as alpha grows). SE: binomial, via the slope."""
    log_rank = np.log(np.arange(1, vocab_size + 1, dtype=np.float64))

    def tail(alpha: float) -> float:
        weights = np.exp(-alpha * (log_rank - log_rank[0]))
        return float(weights[cutoff_rank:].sum() / weights.sum())

    lo, hi = ALPHA_RANGE
    if cut_fraction >= tail(lo):
        return AlphaFit(lo, math.nan, True)
    if cut_fraction <= tail(hi):
        return AlphaFit(hi, math.nan, True)
    alpha = _bisect(tail, cut_fraction, lo, hi)
    step = 0.01
    slope = (tail(alpha - step) - tail(alpha + step)) / (2 * step)
    se_f = math.sqrt(cut_fraction * (1 - cut_fraction) / max(keys, 1.0))
    return AlphaFit(alpha, se_f / slope if slope > 0 else math.nan, False)
