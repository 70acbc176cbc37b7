"""The tuning loop: ask the tuner, evaluate in parallel, journal, re-check the best on fresh seeds.

This is the I/O shell around the ask/tell `Tuner`: it owns the evaluator (processes or Ray), the
`trials.jsonl` journal and `best.yaml`. A winner is declared only after the best few candidates
are simulated again on seeds the search never saw and hold the constraints on every one of them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autotune.constrained import ConstrainedCostEngine
from autotune.evaluate import EvalTask, Evaluator, SimulatorEvaluator
from autotune.record import TrialLog, read_trials
from autotune.space import SearchSpace
from autotune.tuner import GaussianProcessEngine, Proposal, SearchEngine, Trial, Tuner
from simulator import PipelineSpec, ServingConfig
from simulator.errors import InputError
from simulator.spec import Objective

__all__ = ["Progress", "TuneResult", "initial_design", "make_engine", "run_strategy", "tune"]

RERUN_CANDIDATES = 3
RERUN_SEEDS = 3

# Called after every finished trial: (strategy, trials done, trials planned, best feasible value).
Progress = Callable[[str, int, int, float | None], None]


@dataclass
class TuneResult:
    spec: PipelineSpec
    trials: list[Trial]  # the Bayesian-optimisation trials, in order
    reruns: list[Trial]  # the best candidates on fresh seeds
    winner: Trial | None  # the candidate that held on every fresh seed (None: nothing feasible)
    winner_mean_value: float | None
    baselines: dict[str, list[Trial]] = field(default_factory=dict)


def initial_design(trials: int) -> int:
    """Points of the GP's space-filling initial design for a budget of `trials`."""
    return max(5, min(10, trials // 4))


def make_engine(
    space: SearchSpace, seed: int, trials: int, initial_points: int | None = None
) -> SearchEngine:
    """The BO engine `tune` uses: for `min_cost`, a GP on feasibility with the (known) cost
    (`ConstrainedCostEngine`); otherwise scikit-optimize's GP on the penalised objective."""
    points = initial_points or initial_design(trials)
    if space.spec.tuning.objective is Objective.MIN_COST:
        return ConstrainedCostEngine(space, seed, initial_points=points)
    return GaussianProcessEngine(space, seed, initial_points=points)


def run_strategy(
    tuner: Tuner,
    evaluator: Evaluator,
    budget: int,
    seed: int,
    batch: int,
    log: TrialLog | None = None,
    progress: Progress | None = None,
) -> list[Trial]:
    """Ask/evaluate/tell until the tuner holds `budget` trials; returns the tuner's trials."""
    while len(tuner.trials) < budget:
        proposals = tuner.ask(min(batch, budget - len(tuner.trials)))
        if not proposals:  # the engine has nothing left to propose (a finished sweep or climb)
            break
        by_key: dict[int, Proposal] = {p.trial: p for p in proposals}
        tasks = [EvalTask(p.trial, p.config, seed) for p in proposals]
        for outcome in evaluator.evaluate(tasks):
            trial = tuner.tell(by_key[outcome.key], outcome)
            if log is not None:
                log.append(trial)
            if progress is not None:
                best = tuner.best()
                progress(tuner.strategy, len(tuner.trials), budget, best[0].value if best else None)
    return tuner.trials


def _evaluate_seeds(
    tuner: Tuner,
    evaluator: Evaluator,
    configs: Sequence[ServingConfig],
    seed: int,
    log: TrialLog,
    planned: int,
    progress: Progress | None,
) -> None:
    """Evaluate configs chosen before the run (a warm start) and tell them to the engine."""
    proposals = tuner.propose(configs)
    by_key = {p.trial: p for p in proposals}
    for outcome in evaluator.evaluate([EvalTask(p.trial, p.config, seed) for p in proposals]):
        trial = tuner.tell(by_key[outcome.key], outcome)
        log.append(trial)
        if progress is not None:
            best = tuner.best()
            progress(tuner.strategy, len(tuner.trials), planned, best[0].value if best else None)


def _rerun(
    tuner: Tuner, evaluator: Evaluator, seed: int, log: TrialLog
) -> tuple[list[Trial], Trial | None, float | None]:
    """Evaluate the best candidates on fresh seeds; the winner holds on all of them."""
    candidates = tuner.best(RERUN_CANDIDATES)
    if not candidates:
        return [], None, None
    seeds = [seed + 1_000_003 * (i + 1) for i in range(RERUN_SEEDS)]
    tasks = [
        EvalTask(index * RERUN_SEEDS + j, c.config, s)
        for index, c in enumerate(candidates)
        for j, s in enumerate(seeds)
    ]
    reruns: dict[int, list[Trial]] = {i: [] for i in range(len(candidates))}
    for outcome in evaluator.evaluate(tasks):
        candidate = candidates[outcome.key // RERUN_SEEDS]
        proposal = Proposal(candidate.trial, candidate.point, candidate.config)
        trial = tuner.record_of(proposal, outcome, strategy="rerun")
        log.append(trial)
        reruns[outcome.key // RERUN_SEEDS].append(trial)
    held = [
        (statistics.fmean(t.value for t in runs), i)
        for i, runs in reruns.items()
        if runs and all(t.feasible for t in runs)
    ]
    all_reruns = [t for runs in reruns.values() for t in runs]
    if not held:
        return all_reruns, None, None
    mean_value, index = min(held)
    return all_reruns, candidates[index], mean_value


def tune(
    spec: PipelineSpec,
    *,
    trials: int,
    out_dir: Path,
    workers: int = 1,
    seed: int | None = None,
    resume: bool = False,
    ray_address: str | None = None,
    initial_points: int | None = None,
    progress: Progress | None = None,
    evaluator: Evaluator | None = None,
    seed_configs: Sequence[ServingConfig] = (),
) -> TuneResult:
    """Bayesian optimisation of `spec.tuning.knobs`; journal in `out_dir/trials.jsonl`.

    `seed_configs` (a warm start, e.g. the autopilot's live config and last winners) are
    evaluated first, on the run's seed, and told to the engine before its own proposals; they
    come on top of the `trials` it proposes, and may win like any trial."""
    space = SearchSpace(spec)
    if len(space) == 0:
        raise InputError(
            "the spec has no tuning.knobs: name the knobs to tune, e.g. ranker.replicas: {low: 1, high: 8}"
        )
    if trials < 1:
        raise InputError(f"--trials must be >= 1 (got {trials})")
    seed = spec.simulation.seed if seed is None else seed
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / "trials.jsonl"
    earlier = read_trials(journal, spec, space) if resume and journal.exists() else []
    log = TrialLog(journal, spec, space, resume=resume)
    engine = make_engine(space, seed, trials, initial_points)
    tuner = Tuner(spec, engine, space)
    tuner.warm_start([t for t in earlier if t.strategy == "bo"])
    own_evaluator = evaluator is None
    evaluator = evaluator or SimulatorEvaluator(spec, workers=workers, ray_address=ray_address)
    warm = list({c.to_yaml(): c for c in seed_configs}.values())  # once each, in order
    budget = trials + len(warm)
    try:
        if warm:
            _evaluate_seeds(tuner, evaluator, warm, seed, log, budget, progress)
        run_strategy(tuner, evaluator, budget, seed, max(1, workers), log, progress)
        reruns, winner, mean_value = _rerun(tuner, evaluator, seed, log)
    finally:
        log.close()
        if own_evaluator:
            evaluator.close()
    if winner is not None:
        (out_dir / "best.yaml").write_text(winner.config.to_yaml())
    return TuneResult(spec, list(tuner.trials), reruns, winner, mean_value)
