"""The ask/tell tuner: proposes configs, is told outcomes, keeps the history. No I/O.

Like scikit-optimize's `Optimizer`, you provide the loop (`autotune.run` is one):

>>> from simulator import load_spec
>>> from autotune.evaluate import EvalTask, evaluate_task
>>> spec = load_spec("examples/queueing/mm1.yaml")
>>> tuner = Tuner(spec, engine=RandomEngine(SearchSpace(spec), seed=0))
>>> for proposal in tuner.ask(2):
...     outcome = evaluate_task(spec, EvalTask(proposal.trial, proposal.config, seed=0))
...     trial = tuner.tell(proposal, outcome)
>>> len(tuner.trials)
2

The search engine behind `Tuner` is an interface (`SearchEngine`): `GaussianProcessEngine` wraps
scikit-optimize's GP optimiser; `RandomEngine` is the random-search baseline.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from autotune.evaluate import Outcome
from autotune.objective import (
    MARGIN_FAILED,
    TrialMetrics,
    constraint_margin,
    cost_ceiling,
    objective_value,
)
from autotune.space import DimensionKind, SearchSpace
from simulator import PipelineSpec, ServingConfig
from simulator.spec import Objective

__all__ = [
    "GaussianProcessEngine",
    "Proposal",
    "RandomEngine",
    "SearchEngine",
    "Trial",
    "Tuner",
]


class SearchEngine(Protocol):
    """Proposes points of a `SearchSpace` and learns from their values (lower is better)."""

    def ask(self, n: int) -> list[list[Any]]: ...

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None: ...


class GaussianProcessEngine:
    """scikit-optimize's GP optimiser (expected improvement after a Latin-hypercube design)."""

    def __init__(self, space: SearchSpace, seed: int, initial_points: int = 10) -> None:
        from skopt import Optimizer
        from skopt.space import Categorical, Integer, Real

        dims: list[Any] = []
        for d in space.dimensions:
            prior = "log-uniform" if d.log else "uniform"
            if d.kind is DimensionKind.CATEGORICAL:
                dims.append(Categorical(list(d.choices), name=d.name))
            elif d.kind is DimensionKind.INTEGER:
                dims.append(Integer(int(d.low), int(d.high), prior=prior, name=d.name))
            else:
                dims.append(Real(d.low, d.high, prior=prior, name=d.name))
        self._optimizer = Optimizer(
            dims,
            base_estimator="GP",
            acq_func="EI",
            n_initial_points=initial_points,
            initial_point_generator="lhs",
            random_state=seed,
        )
        self._pending: tuple[list[list[Any]], list[float]] = ([], [])

    def ask(self, n: int) -> list[list[Any]]:
        # NOTE: BLAS limited to one thread: the GP's matrices are tiny, and multithreaded OpenBLAS
        # spinning on a busy machine made each fit 20-40x slower (21 s instead of 0.6 s).
        with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
            # skopt warns when it re-proposes a point and substitutes a random one: expected.
            warnings.filterwarnings("ignore", "The objective has been evaluated", UserWarning)
            self._flush()
            points = [self._optimizer.ask()] if n == 1 else self._optimizer.ask(n_points=n)
        return [[_native(v) for v in p] for p in points]

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None:
        """Remember outcomes; the GP is refitted once, at the next `ask` (one fit per batch)."""
        self._pending[0].extend(list(p) for p in points)
        self._pending[1].extend(values)

    def _flush(self) -> None:
        xs, ys = self._pending
        if xs:
            self._optimizer.tell(xs, ys)
            self._pending = ([], [])


def _native(value: Any) -> Any:
    """numpy scalars (what scikit-optimize returns) as plain Python values."""
    return value.item() if hasattr(value, "item") else value


class RandomEngine:
    """Uniform (log-uniform on log dimensions) random search; ignores what it is told."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self._space = space
        self._rng = random.Random(seed)

    def ask(self, n: int) -> list[list[Any]]:
        return [self._space.sample_point(self._rng) for _ in range(n)]

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None:
        return None


@dataclass(frozen=True)
class Proposal:
    trial: int
    point: tuple[Any, ...]
    config: ServingConfig


@dataclass(frozen=True)
class Trial:
    """One finished evaluation, as recorded in `trials.jsonl`."""

    trial: int
    strategy: str
    point: tuple[Any, ...]
    config: ServingConfig
    seed: int
    metrics: TrialMetrics | None
    value: float
    feasible: bool
    error: str | None
    wall_s: float


class Tuner:
    """Ask for configs, tell their outcomes; the best feasible trial so far is `best()`."""

    def __init__(
        self,
        spec: PipelineSpec,
        engine: SearchEngine,
        space: SearchSpace | None = None,
        strategy: str = "bo",
    ) -> None:
        self.spec = spec
        self.space = space or SearchSpace(spec)
        self.engine = engine
        self.strategy = strategy
        self.ceiling = cost_ceiling(spec)
        self.trials: list[Trial] = []
        self._next = 0

    def ask(self, n: int = 1) -> list[Proposal]:
        proposals = []
        for point in self.engine.ask(n):
            proposals.append(Proposal(self._next, tuple(point), self.space.decode(point)))
            self._next += 1
        return proposals

    def propose(self, configs: Sequence[ServingConfig]) -> list[Proposal]:
        """Proposals for configs chosen outside the engine (a warm start's: configs that won
        before); `tell` their outcomes as usual. Each config is evaluated as it is, and the
        engine learns it at its point in the space (clamped to the knob ranges)."""
        proposals = []
        for config in configs:
            proposals.append(Proposal(self._next, tuple(self.space.encode(config)), config))
            self._next += 1
        return proposals

    def judge(self, outcome: Outcome) -> tuple[float, bool]:
        """Objective value and feasibility of an outcome; a failed evaluation is the worst case."""
        if outcome.metrics is None:
            return self._failed_value(), False
        return objective_value(self.spec, outcome.metrics, self.ceiling)

    def record_of(self, proposal: Proposal, outcome: Outcome, strategy: str | None = None) -> Trial:
        """The judged record of an outcome, without telling the engine or keeping it."""
        value, feasible = self.judge(outcome)
        return Trial(
            trial=proposal.trial,
            strategy=strategy or self.strategy,
            point=proposal.point,
            config=proposal.config,
            seed=outcome.seed,
            metrics=outcome.metrics,
            value=value,
            feasible=feasible,
            error=outcome.error,
            wall_s=outcome.wall_s,
        )

    def tell(self, proposal: Proposal, outcome: Outcome) -> Trial:
        trial = self.record_of(proposal, outcome)
        self.trials.append(trial)
        self.engine.tell([list(proposal.point)], [self._target(trial)])
        return trial

    def warm_start(self, trials: Sequence[Trial]) -> None:
        """Feed earlier trials (a resumed run) to the engine and the history."""
        if not trials:
            return
        self.trials.extend(trials)
        self._next = max(self._next, max(t.trial for t in trials) + 1)
        self.engine.tell([list(t.point) for t in trials], [self._target(t) for t in trials])

    def _target(self, trial: Trial) -> float:
        """What the engine learns from a trial: its value, or (an engine that models
        feasibility, `models = "margin"`) its constraint margin."""
        if getattr(self.engine, "models", "value") == "margin":
            if trial.metrics is None:
                return MARGIN_FAILED
            return constraint_margin(self.spec, trial.metrics)
        return self.engine_value(trial.value)

    def engine_value(self, value: float) -> float:
        """What the engine models: log of cost or p99 (they span orders of magnitude)."""
        if self.spec.tuning.objective is Objective.MAX_RATE:
            return value / (self.spec.workload.rate_rps or 1.0)
        return math.log(max(value, 1e-12))

    def best(self, k: int = 1) -> list[Trial]:
        """The k best feasible trials (lowest value first)."""
        feasible = sorted((t for t in self.trials if t.feasible), key=lambda t: t.value)
        return feasible[:k]

    def _failed_value(self) -> float:
        objective = self.spec.tuning.objective
        if objective is Objective.MIN_COST:
            return self.ceiling * 11.0
        if objective is Objective.MIN_P99:
            return self.spec.slo.p99_s * 11.0
        return 10.0
