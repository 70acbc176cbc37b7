"""Evaluators: what turns a config into metrics. One interface; the simulator is the first.

`Evaluator.evaluate(tasks)` yields each task's outcome as soon as it finishes (so the runner can
append it to `trials.jsonl` at once), in whatever order they finish. `SimulatorEvaluator` runs the
simulator inline, in a process pool (`workers`), or as Ray tasks on a cluster (`ray_address`).
All trials of a run share one seed — common random numbers: the same arrivals and keys for every
config, so differences between trials are the configs', not the dice's.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from autotune.objective import QualityModel, TrialMetrics, metrics_of
from simulator import PipelineSpec, ServingConfig, apply_config, simulate
from simulator.spec import Objective

__all__ = ["EvalTask", "Evaluator", "Outcome", "SimulatorEvaluator", "evaluate_task"]


@dataclass(frozen=True)
class EvalTask:
    """One evaluation to run: a config on a seed. `key` lets the caller match the outcome."""

    key: int
    config: ServingConfig
    seed: int


@dataclass(frozen=True)
class Outcome:
    key: int
    seed: int
    metrics: TrialMetrics | None  # None when the evaluation raised
    error: str | None
    wall_s: float


class Evaluator(Protocol):
    def evaluate(self, tasks: Sequence[EvalTask]) -> Iterator[Outcome]:
        """Run the tasks; yield each outcome as it finishes."""
        ...

    def close(self) -> None: ...


def _sustainable_rate(spec: PipelineSpec, requests: int, warmup: int, seed: int) -> float:
    """Highest request rate (req/s) at which the config holds the SLO: bisection on the rate.

    Brackets [rate/8, 8 × rate] around the spec's rate, 7 simulations; 0 when even the lowest fails.
    """
    base = spec.workload.rate_rps or 1.0

    def holds(rate: float) -> bool:
        trial = spec.model_copy(
            update={"workload": spec.workload.model_copy(update={"rate_rps": rate})}
        )
        report = simulate(trial, requests=requests, warmup_requests=warmup, seed=seed)
        return report.slo.holds

    lo, hi = base / 8.0, base * 8.0
    if not holds(lo):
        return 0.0
    if holds(hi):
        return hi
    for _ in range(5):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def evaluate_task(spec: PipelineSpec, task: EvalTask) -> Outcome:
    """Simulate one config; never raises (an error becomes a failed outcome)."""
    started = time.perf_counter()
    tuning = spec.tuning
    try:
        trial_spec = apply_config(spec, task.config)
        report = simulate(
            trial_spec,
            requests=tuning.trial_requests,
            warmup_requests=tuning.trial_warmup_requests,
            seed=task.seed,
        )
        cutoff = next((s.cutoff_rank for s in trial_spec.stages if s.cutoff_rank is not None), None)
        metrics = metrics_of(report, QualityModel(spec), cutoff)
        if tuning.objective is Objective.MAX_RATE:
            rate = _sustainable_rate(
                trial_spec, tuning.trial_requests, tuning.trial_warmup_requests, task.seed
            )
            metrics = TrialMetrics(**{**asdict(metrics), "sustainable_rps": rate})
        return Outcome(task.key, task.seed, metrics, None, time.perf_counter() - started)
    except Exception as exc:  # a trial that raises is recorded as failed; the run goes on
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return Outcome(task.key, task.seed, None, detail, time.perf_counter() - started)


_WORKER_SPEC: PipelineSpec | None = None


def _init_worker(spec_json: str) -> None:
    global _WORKER_SPEC  # noqa: PLW0603 - one spec per worker process, set once
    _WORKER_SPEC = PipelineSpec.model_validate_json(spec_json)


def _run_in_worker(task: EvalTask) -> Outcome:
    assert _WORKER_SPEC is not None
    return evaluate_task(_WORKER_SPEC, task)


class SimulatorEvaluator:
    """Evaluates configs on the simulator: inline (workers=1), a process pool, or Ray tasks."""

    def __init__(
        self, spec: PipelineSpec, workers: int = 1, ray_address: str | None = None
    ) -> None:
        self.spec = spec
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None
        if ray_address is not None:
            from autotune.ray_backend import RayTrials

            self._ray = RayTrials(spec, ray_address)
        elif self.workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                initializer=_init_worker,
                initargs=(spec.model_dump_json(),),
            )

    def evaluate(self, tasks: Sequence[EvalTask]) -> Iterator[Outcome]:
        if self._ray is not None:
            yield from self._ray.evaluate(tasks)
        elif self._pool is None:
            for task in tasks:
                yield evaluate_task(self.spec, task)
        else:
            pending: set[Future[Outcome]] = {self._pool.submit(_run_in_worker, t) for t in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None
