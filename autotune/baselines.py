"""The baselines `jizhi tune --compare` runs beside Bayesian optimisation, on the same terms.

Every baseline is a `SearchEngine` behind the same `Tuner`, evaluated by the same evaluator on the
same seed (common random numbers) and journalled in the same `trials.jsonl`, so its numbers are
comparable trial for trial:

- `random`: `RandomEngine`, the same budget as BO.
- `sweep`: Triton Model Analyzer's brute search. It sweeps only what Model Analyzer sweeps —
  batch size in powers of two (inner loop) and instance count 1..N (outer loop) of the batched
  stage(s) — with `max_ongoing_requests = max_batch_size × max_concurrent_batches` and every other
  knob at the spec's baseline; enumerated in that order and cut at the budget. (Model Analyzer
  also stops walking batch sizes once throughput plateaus; the full sweep here is the stronger
  baseline.)
- `hill-climb`: Model Analyzer's quick search: start at the minimal config (every tuned stage at
  its fewest replicas, batch 1), measure the neighbours one step away on one axis (±1 replica,
  ×2 or ÷2 batch), move to the best neighbour while it improves, stop at a local optimum or the
  budget.
- `ray-defaults`: one evaluation of Ray Serve's defaults (`ray_defaults_config`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.evaluate import EvalTask, Evaluator, Outcome, SimulatorEvaluator, evaluate_task
from autotune.record import TrialLog, read_trials
from autotune.run import Progress, run_strategy
from autotune.space import Dimension, SearchSpace
from autotune.tuner import Proposal, RandomEngine, SearchEngine, Trial, Tuner
from simulator import PipelineSpec, ServingConfig
from simulator.spec import StageKnobs

__all__ = [
    "HillClimbEngine",
    "SweepEngine",
    "batched_stages",
    "ray_defaults_config",
    "ray_defaults_trial",
    "run_baselines",
]

STRATEGIES = ("random", "sweep", "hill-climb", "ray-defaults")


def batched_stages(spec: PipelineSpec) -> list[str]:
    """Stages that batch: those whose tuning knobs include max_batch_size, in stage order."""
    return [s.name for s in spec.stages if f"{s.name}.max_batch_size" in spec.tuning.knobs]


def ray_defaults_config(spec: PipelineSpec) -> ServingConfig:
    """Ray Serve's defaults: 1 replica, max_ongoing_requests 5, unbounded queue; `@serve.batch`'s
    max_batch_size 10 and batch_wait_timeout_s 0.01 on batching stages (10 > 5 is what the defaults
    are: Ray warns and caps); the spec's device and cache; no cut-off."""
    batching = set(batched_stages(spec)) | {s.name for s in spec.stages if s.max_batch_size > 1}
    stages = {}
    for s in spec.stages:
        stages[s.name] = StageKnobs(
            replicas=1,
            max_ongoing_requests=5,
            max_queued_requests=-1,
            max_batch_size=10 if s.name in batching else 1,
            batch_wait_timeout_s=0.01,
            max_concurrent_batches=1,
            device=s.device,
            cache_policy=s.cache_policy,
            cache_capacity=s.cache_capacity,
            cutoff_rank=None,
        )
    return ServingConfig(stages=stages)


def ray_defaults_trial(spec: PipelineSpec, seed: int | None = None) -> Trial:
    """Ray Serve's defaults evaluated inline (one simulation) and judged like any trial."""
    seed = spec.simulation.seed if seed is None else seed
    tuner = Tuner(spec, RandomEngine(SearchSpace(spec), seed), strategy="ray-defaults")
    proposal = _defaults_proposal(tuner)
    return tuner.tell(proposal, evaluate_task(spec, EvalTask(0, proposal.config, seed)))


def _defaults_proposal(tuner: Tuner) -> Proposal:
    config = ray_defaults_config(tuner.spec)
    # The defaults lie outside the space (max_ongoing < batch, no cut-off): the point is the
    # nearest one, for the record; the config is what runs.
    return Proposal(0, tuple(tuner.space.encode(config)), config)


def _index(space: SearchSpace, stage: str, knob: str) -> int | None:
    return next(
        (i for i, d in enumerate(space.dimensions) if d.stage == stage and d.knob == knob), None
    )


def _powers_of_two(dim: Dimension) -> list[int]:
    low, high = max(1, int(dim.low)), int(dim.high)
    values = [2**k for k in range(high.bit_length() + 1) if low <= 2**k <= high]
    return values or [low]


def _baseline_point(space: SearchSpace) -> list[Any]:
    """The spec's baseline config as a point; max_ongoing headrooms at 0 (exactly the product)."""
    point = space.encode(ServingConfig.from_spec(space.spec))
    for i, d in enumerate(space.dimensions):
        if d.headroom is not None:
            point[i] = 0.0
    return point


class SweepEngine:
    """Model Analyzer's brute sweep: replicas (outer) × power-of-two batch sizes (inner) of the
    batched stages; everything else at the spec's baseline. Returns [] when exhausted."""

    def __init__(self, space: SearchSpace) -> None:
        base = _baseline_point(space)
        targets = batched_stages(space.spec) or [
            d.stage for d in space.dimensions if d.knob == "replicas"
        ]
        axes: list[tuple[int, list[Any]]] = []  # (dimension index, values), outermost first
        for stage in targets:
            replicas = _index(space, stage, "replicas")
            if replicas is not None:
                d = space.dimensions[replicas]
                axes.append((replicas, list(range(int(d.low), int(d.high) + 1))))
        for stage in targets:
            batch = _index(space, stage, "max_batch_size")
            if batch is not None:
                axes.append((batch, _powers_of_two(space.dimensions[batch])))
        self.points: list[list[Any]] = []
        for combo in itertools.product(*(values for _, values in axes)):
            point = list(base)
            for (i, _), value in zip(axes, combo, strict=True):
                point[i] = value
            self.points.append(point)
        self._next = 0

    def ask(self, n: int) -> list[list[Any]]:
        points = self.points[self._next : self._next + n]
        self._next += len(points)
        return [list(p) for p in points]

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None:
        return None


class HillClimbEngine:
    """Model Analyzer's quick search: coordinate hill-climbing from the minimal config.

    Axes: replicas of every stage with tuned replicas, power-of-two batch size of every batched
    stage; other knobs at the spec's baseline, max_ongoing exactly batch × concurrent batches.
    `ask` returns the current point, then its unmeasured neighbours; once all are told, it moves
    to the best neighbour if that improves, else it is done and returns [].
    """

    def __init__(self, space: SearchSpace) -> None:
        self._base = _baseline_point(space)
        self._axes: list[tuple[int, list[Any]]] = []
        for i, d in enumerate(space.dimensions):
            if d.knob == "replicas":
                self._axes.append((i, list(range(int(d.low), int(d.high) + 1))))
            elif d.knob == "max_batch_size":
                self._axes.append((i, _powers_of_two(d)))
        self._current: tuple[int, ...] = tuple(0 for _ in self._axes)
        self._values: dict[tuple[int, ...], float] = {}
        self._asked: set[tuple[int, ...]] = set()
        self.done = not self._axes

    def _point(self, coord: tuple[int, ...]) -> list[Any]:
        point = list(self._base)
        for (i, values), k in zip(self._axes, coord, strict=True):
            point[i] = values[k]
        return point

    def _coord(self, point: Sequence[Any]) -> tuple[int, ...]:
        return tuple(values.index(point[i]) for i, values in self._axes)

    def _neighbours(self, coord: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for axis, (_, values) in enumerate(self._axes):
            for step in (1, -1):
                k = coord[axis] + step
                if 0 <= k < len(values):
                    out.append((*coord[:axis], k, *coord[axis + 1 :]))
        return out

    def ask(self, n: int) -> list[list[Any]]:
        while not self.done:
            wanted = [self._current, *self._neighbours(self._current)]
            fresh = [c for c in wanted if c not in self._values and c not in self._asked]
            if fresh:
                self._asked.update(fresh[:n])
                return [self._point(c) for c in fresh[:n]]
            if any(c not in self._values for c in wanted):
                return []  # waiting for outcomes still in flight
            best = min(self._neighbours(self._current), key=lambda c: self._values[c], default=None)
            if best is None or self._values[best] >= self._values[self._current]:
                self.done = True  # a local optimum
            else:
                self._current = best
        return []

    def tell(self, points: Sequence[Sequence[Any]], values: Sequence[float]) -> None:
        for point, value in zip(points, values, strict=True):
            coord = self._coord(point)
            self._values[coord] = value
            self._asked.discard(coord)


def run_baselines(
    spec: PipelineSpec,
    *,
    budget: int,
    out_dir: Path,
    workers: int = 1,
    seed: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    evaluator: Evaluator | None = None,
) -> dict[str, list[Trial]]:
    """Run every baseline with `budget` evaluations (ray-defaults: one), appending to
    `out_dir/trials.jsonl`; with `resume`, trials already journalled are replayed, not re-run."""
    space = SearchSpace(spec)
    seed = spec.simulation.seed if seed is None else seed
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / "trials.jsonl"
    earlier = read_trials(journal, spec, space) if resume and journal.exists() else []
    engines: dict[str, SearchEngine] = {
        "random": RandomEngine(space, seed),
        "sweep": SweepEngine(space),
        "hill-climb": HillClimbEngine(space),
    }
    own_evaluator = evaluator is None
    evaluator = evaluator or SimulatorEvaluator(spec, workers=workers, ray_address=ray_address)
    log = TrialLog(journal, spec, space, resume=True)
    results: dict[str, list[Trial]] = {}
    try:
        for name, engine in engines.items():
            tuner = Tuner(spec, engine, space, strategy=name)
            _replay(tuner, [t for t in earlier if t.strategy == name], budget, evaluator, seed, log)
            run_strategy(tuner, evaluator, budget, seed, max(1, workers), log, progress)
            results[name] = list(tuner.trials)
        tuner = Tuner(spec, RandomEngine(space, seed), space, strategy="ray-defaults")
        done = [t for t in earlier if t.strategy == "ray-defaults"]
        if done:
            results["ray-defaults"] = done[:1]
        else:
            proposal = _defaults_proposal(tuner)
            for outcome in evaluator.evaluate([EvalTask(0, proposal.config, seed)]):
                log.append(tuner.tell(proposal, outcome))
            results["ray-defaults"] = list(tuner.trials)
        if progress is not None:
            best = tuner.best()
            progress("ray-defaults", 1, 1, best[0].value if best else None)
    finally:
        log.close()
        if own_evaluator:
            evaluator.close()
    return results


def _replay(
    tuner: Tuner,
    recorded: list[Trial],
    budget: int,
    evaluator: Evaluator,
    seed: int,
    log: TrialLog,
) -> None:
    """Re-ask a deterministic engine and tell it the journalled outcomes of its first trials; a
    proposal that differs from the journal (another seed) is evaluated, and the replay ends."""
    by_number = {t.trial: t for t in recorded}
    while len(tuner.trials) < budget and len(tuner.trials) in by_number:
        proposals = tuner.ask(1)
        if not proposals:
            return
        proposal = proposals[0]
        t = by_number[proposal.trial]
        if list(t.point) == list(proposal.point):
            tuner.tell(proposal, Outcome(t.trial, t.seed, t.metrics, t.error, t.wall_s))
            continue
        for outcome in evaluator.evaluate([EvalTask(proposal.trial, proposal.config, seed)]):
            log.append(tuner.tell(proposal, outcome))
        return
