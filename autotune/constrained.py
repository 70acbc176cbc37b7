"""Constrained Bayesian optimisation for `min_cost`: the cost is known, only feasibility is learnt.

A config's cost is replicas × price per replica, summed over stages — arithmetic, not a
measurement. What a trial measures is whether the config holds the constraints. So instead of a
GP on a penalised cost (whose cliff between the cheapest feasible configs and their infeasible
neighbours is exactly where the optimum sits, and which the GP smooths away), this engine fits a
GP to the *constraint margin* — `objective.constraint_margin`: log(p99 / SLO) or the relative
excess of shed rate and quality loss, ≤ 0 exactly when the trial is feasible — and proposes the
config that maximises constrained expected improvement with a deterministic objective
(Gardner et al., 2014): `(best feasible cost − cost(x))⁺ × P(margin(x) ≤ 0)`, or the probability
of feasibility alone until something is feasible. Quality loss of a cut-off is computed, not
learnt: candidates over the budget are never proposed.

Candidates each round: random points of the space, plus every one-step neighbour (±1 on an
integer knob, ×/÷ 1.5 on a log knob, another category) of the best few trials. The first points
are the spec's own baseline config and a Latin hypercube. Batches use the kriging believer: each
pick joins the GP's data at its predicted margin before the next pick.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from autotune.objective import MARGIN_FAILED, QualityModel
from autotune.space import Dimension, DimensionKind, SearchSpace
from simulator import ServingConfig
from simulator.spec import Device

__all__ = ["ConstrainedCostEngine"]

CANDIDATES = 3000
NEIGHBOURHOOD_OF = 4
MARGIN_CLIP = MARGIN_FAILED  # log(p99 / SLO) beyond this (p99 ≈ 3000 × SLO) is all the same


class ConstrainedCostEngine:
    """Ask/tell engine for `min_cost`: told constraint margins (not values); see the module doc."""

    models = "margin"  # what `Tuner` tells it: `objective.constraint_margin`, not the value

    def __init__(
        self, space: SearchSpace, seed: int, initial_points: int = 10, candidates: int = CANDIDATES
    ) -> None:
        self.space = space
        self._n_candidates = candidates
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._prices = _price_table(space)
        self._quality = QualityModel(space.spec)
        self._cutoff = next(
            (i for i, d in enumerate(space.dimensions) if d.knob == "cutoff_rank"), None
        )
        self._x: list[list[Any]] = []
        self._m: list[float] = []
        self._design = self._initial_design(initial_points)
        self._asked = 0

    # --- ask / tell --------------------------------------------------------------------------

    def ask(self, n: int) -> list[list[Any]]:
        # The design is consumed by what was asked or told (a warm start tells without asking).
        start = max(self._asked, len(self._x))
        picks = self._design[start : start + n]
        if len(picks) < n:
            with threadpool_limits(limits=1, user_api="blas"):
                picks += self._propose(n - len(picks), picks)
        self._asked = start + len(picks)
        return picks

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None:
        for point, margin in zip(points, values, strict=True):
            self._x.append(list(point))
            self._m.append(float(np.clip(margin, -MARGIN_CLIP, MARGIN_CLIP)))

    # --- the model ---------------------------------------------------------------------------

    def cost(self, points: Sequence[Sequence[Any]]) -> np.ndarray:
        """Cost per hour of each point, from replicas and device prices (no simulation)."""
        total = np.zeros(len(points))
        for stage_price in self._prices:
            total += np.array([stage_price(p) for p in points])
        return total

    def _quality_ok(self, points: Sequence[Sequence[Any]]) -> np.ndarray:
        if self._cutoff is None:
            return np.ones(len(points), dtype=bool)
        limit = self.space.spec.tuning.quality.max_loss
        i = self._cutoff
        return np.array([self._quality.loss(round(p[i])) <= limit for p in points])

    def _fit(self, x: np.ndarray, m: np.ndarray, kernel: Any = None) -> Any:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        fixed = kernel is not None
        if kernel is None:
            kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
                length_scale=np.ones(x.shape[1]), length_scale_bounds=(0.05, 20.0), nu=2.5
            ) + WhiteKernel(1e-3, (1e-6, 1e-1))
        gp = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=0 if fixed else 2,
            optimizer=None if fixed else "fmin_l_bfgs_b",
            random_state=self._seed,
        )
        with warnings.catch_warnings():  # hyperparameters at a bound are expected, not news
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gp.fit(x, m)

    def _propose(self, n: int, pending: list[list[Any]]) -> list[list[Any]]:
        if len(self._x) < 2:  # nothing to learn from yet
            return [self.space.sample_point(_Random(self._rng)) for _ in range(n)]
        x_seen = self._unit(self._x)
        m_seen = np.array(self._m)
        gp = self._fit(x_seen, m_seen)
        candidates = self._candidates()
        ok = self._quality_ok(candidates)
        candidates = [c for c, keep in zip(candidates, ok, strict=True) if keep]
        if not candidates:  # no candidate keeps the quality budget: keep sampling
            return [self.space.sample_point(_Random(self._rng)) for _ in range(n)]
        cost = self.cost(candidates)
        x_cand = self._unit(candidates)
        seen = {_key(p) for p in self._x + pending}
        feasible_costs = self.cost(self._x)[m_seen <= 0.0]
        best = float(feasible_costs.min()) if feasible_costs.size else math.inf
        picks: list[list[Any]] = []
        x_data, m_data = x_seen, m_seen
        for _ in range(n):
            mean, std = gp.predict(x_cand, return_std=True)
            # NOTE: in logs — far from the edge P(feasible) underflows to 0 for every candidate,
            # and the argmax of zeros would be arbitrary instead of the least unlikely one.
            score = norm.logcdf(-mean / np.maximum(std, 1e-9))
            gain = best - cost
            if math.isfinite(best) and np.any(gain > 0):
                score = np.where(gain > 0, np.log(np.maximum(gain, 1e-12)) + score, -np.inf)
            for index in np.argsort(-score):
                if _key(candidates[index]) not in seen:
                    break
            else:  # every candidate was measured already
                index = int(self._rng.integers(len(candidates)))
            pick = candidates[int(index)]
            picks.append(pick)
            seen.add(_key(pick))
            if len(picks) == n:
                break
            # Kriging believer: pretend the pick came back at its predicted margin.
            x_data = np.vstack([x_data, x_cand[index]])
            m_data = np.append(m_data, mean[index])
            gp = self._fit(x_data, m_data, kernel=gp.kernel_)
        return picks

    # --- candidates and encodings ------------------------------------------------------------

    def _initial_design(self, count: int) -> list[list[Any]]:
        """The spec's baseline config, then a Latin hypercube of `count - 1` points."""
        design = [self.space.encode(ServingConfig.from_spec(self.space.spec))]
        k = max(count - 1, 0)
        if k:
            u = np.empty((k, len(self.space)))
            for j in range(len(self.space)):
                u[:, j] = (self._rng.permutation(k) + self._rng.random(k)) / k
            design += [self._from_unit(row) for row in u]
        return design[: max(count, 1)]

    def _candidates(self) -> list[list[Any]]:
        rng = _Random(self._rng)
        out = [self.space.sample_point(rng) for _ in range(self._n_candidates)]
        order = np.argsort(self._anchor_scores())
        for i in order[:NEIGHBOURHOOD_OF]:
            out += self._neighbours(self._x[int(i)])
        return out

    def _anchor_scores(self) -> np.ndarray:
        """Where to look around: the cheapest feasible trials, then the nearest misses."""
        m = np.array(self._m)
        cost = self.cost(self._x)
        return np.where(m <= 0.0, cost - 1e6, m)

    def _neighbours(self, point: list[Any]) -> list[list[Any]]:
        out = []
        for i, d in enumerate(self.space.dimensions):
            for value in _steps(d, point[i]):
                neighbour = list(point)
                neighbour[i] = value
                out.append(neighbour)
        return out

    def _unit(self, points: Sequence[Sequence[Any]]) -> np.ndarray:
        """Points in [0, 1]^d: log where the dimension is, one-hot categories."""
        columns = []
        for i, d in enumerate(self.space.dimensions):
            values = [p[i] for p in points]
            if d.kind is DimensionKind.CATEGORICAL:
                for choice in d.choices:
                    columns.append(np.array([v == choice for v in values], dtype=float))
                continue
            v = np.asarray(values, dtype=float)
            if d.log:
                columns.append(np.log(v / d.low) / math.log(d.high / d.low))
            else:
                columns.append((v - d.low) / (d.high - d.low))
        return np.column_stack(columns)

    def _from_unit(self, row: np.ndarray) -> list[Any]:
        point: list[Any] = []
        for d, u in zip(self.space.dimensions, row, strict=True):
            if d.kind is DimensionKind.CATEGORICAL:
                point.append(d.choices[min(int(u * len(d.choices)), len(d.choices) - 1)])
                continue
            value = d.low * (d.high / d.low) ** u if d.log else d.low + (d.high - d.low) * u
            point.append(_clamp_int(d, value) if d.kind is DimensionKind.INTEGER else float(value))
        return point


def _clamp_int(d: Dimension, value: float) -> int:
    return min(max(round(value), int(d.low)), int(d.high))


def _steps(d: Dimension, value: Any) -> list[Any]:
    if d.kind is DimensionKind.CATEGORICAL:
        return [c for c in d.choices if c != value]
    if d.kind is DimensionKind.INTEGER:
        moves = [value * 1.5, value / 1.5] if d.log else [value + 1, value - 1]
        steps = {_clamp_int(d, v) for v in moves}
        if d.log:
            steps |= {_clamp_int(d, value + 1), _clamp_int(d, value - 1)}
        return sorted(steps - {value})
    moves = (
        [value * 1.5, value / 1.5]
        if d.log
        else [value + 0.1 * (d.high - d.low), value - 0.1 * (d.high - d.low)]
    )
    return [min(max(v, d.low), d.high) for v in moves if d.low <= v <= d.high]


def _key(point: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(round(v, 6) if isinstance(v, float) else v for v in point)


class _Random:
    """`random.Random`'s `random`/`uniform` over a numpy Generator (for `sample_point`)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def random(self) -> float:
        return float(self._rng.random())

    def uniform(self, a: float, b: float) -> float:
        return float(self._rng.uniform(a, b))


def _price_table(space: SearchSpace) -> list[Any]:
    """One function per stage: point → replicas × price of the point's device for that stage."""
    spec = space.spec
    index = {d.name: i for i, d in enumerate(space.dimensions)}
    table = []
    for stage in spec.stages:
        prices = {dev.value: spec.replica_cost_per_hour(stage, dev) for dev in Device}
        r = index.get(f"{stage.name}.replicas")
        dv = index.get(f"{stage.name}.device")

        def price(p: Sequence[Any], r: int | None = r, dv: int | None = dv, s: Any = stage,
                  prices: dict[str, float] = prices) -> float:  # fmt: skip
            replicas = round(p[r]) if r is not None else s.replicas
            device = p[dv] if dv is not None else s.device.value
            return replicas * prices[device]

        table.append(price)
    return table
