"""The autopilot loop: each interval measure, re-calibrate, re-tune warm-started, decide, roll out.

All I/O comes in through `PilotIO` (live metrics, calibration, tuning, prediction, the rollout,
jizhi's exporter, the clock), so the loop runs in tests against fakes; `jizhi autopilot` wires the
real ones. The decision is `autotune.autopilot.step`; this module only gathers its observation and
carries it out. Whatever fails in an interval — metrics, calibration, tuning, the deploy — keeps
the live config, becomes the interval's reason, is counted, and the next interval tries again.
Ctrl-C ends the run with the live config consistent: between rollouts nothing is half-applied, and
a rollout restores the old config before it lets the interrupt through.

The least re-calibration, and the default: the spec at the live request rate.

>>> from simulator import load_spec
>>> stats = LiveStats(window_s=60, requests_per_s=12.5, ok_per_s=12.5, shed_rate=0.0,
...                   error_rate=0.0, p50_s=0.02, p95_s=0.03, p99_s=0.04)
>>> rate_only(load_spec("examples/ctr.yaml"), stats, []).workload.rate_rps
12.5
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.autopilot import (
    Action,
    Candidate,
    Observation,
    PilotState,
    Policy,
    Traffic,
    at_risk,
    fingerprint,
    missing_metric,
    step,
)
from serving.monitoring.exporter import AutopilotError, RolloutOutcome
from serving.monitoring.live import LiveStats, Snapshot
from simulator import PipelineSpec, ServingConfig
from simulator.spec import ArrivalProcess

__all__ = [
    "WARM_CONFIGS",
    "Measure",
    "PilotIO",
    "PilotRun",
    "Prediction",
    "Recalibrate",
    "Row",
    "Tuned",
    "rate_only",
    "run_autopilot",
]

WARM_CONFIGS = 4  # configs re-evaluated first in each tuning run: the live one and the last best

Measure = Callable[[float], tuple[LiveStats, list[Snapshot]]]  # a window of `seconds` from now
Recalibrate = Callable[[PipelineSpec, LiveStats, list[Snapshot]], PipelineSpec]


def rate_only(spec: PipelineSpec, stats: LiveStats, snapshots: list[Snapshot]) -> PipelineSpec:
    """The least calibration: Poisson arrivals at the live offered rate (answered, shed and failed
    requests alike, plus the growth of those in flight: an overloaded service answers at its
    capacity, not at its load). A fuller one fits service times too, with this signature."""
    if not stats.offered_per_s > 0:
        raise ValueError("no requests in the window to take the rate from")
    workload = spec.workload.model_copy(
        update={
            "arrival": ArrivalProcess.POISSON,
            "rate_rps": stats.offered_per_s,
            "schedule": [],
            "trace_file": None,
        }
    )
    return spec.model_copy(update={"workload": workload})


@dataclass(frozen=True)
class Prediction:
    """What the simulator predicts for a config at the (re-calibrated) live rate."""

    p50_s: float
    p99_s: float
    cost_per_hour: float


@dataclass(frozen=True)
class Tuned:
    """A tuning run's answer: the winner (None: nothing feasible) and the best few configs, which
    the next interval re-evaluates first."""

    winner: ServingConfig | None
    prediction: Prediction | None
    best: tuple[ServingConfig, ...] = ()
    trials: int = 0


@dataclass(frozen=True)
class PilotIO:
    """The loop's I/O. `tune(spec, warm configs, iteration)`; `roll_out(spec, new, old, stats)`
    applies, verifies and keeps or restores (serving.rollout) and says how it ended — `stats` is
    the interval's window of the live config, the rollout's before."""

    measure: Measure
    tune: Callable[[PipelineSpec, Sequence[ServingConfig], int], Tuned]
    predict: Callable[[PipelineSpec, ServingConfig], Prediction]
    roll_out: Callable[[PipelineSpec, ServingConfig, ServingConfig, LiveStats], RolloutOutcome]
    recalibrate: Recalibrate = rate_only
    generation: Callable[[], int] = lambda: 0
    record: Callable[[Action, AutopilotError | None], None] = lambda action, error: None
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Row:
    """One interval of the timeline."""

    iteration: int
    started_at: float  # the measurement window, epoch seconds
    ended_at: float
    generation: int  # the config generation live during the window
    observation: Observation
    action: Action
    reason: str  # the rules' reason for the action
    error: AutopilotError | None = None
    rollout: RolloutOutcome | None = None
    note: str | None = None  # how the rollout went when it did not simply apply
    live_p99_predicted_s: float | None = None
    tuned_config: dict[str, Any] | None = None  # knobs of the tuning run's winner
    trials: int = 0
    tune_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "generation": self.generation,
            "observation": self.observation.to_json(),
            "action": self.action.value,
            "reason": self.reason,
            "error": None if self.error is None else self.error.value,
            "rollout": None if self.rollout is None else self.rollout.value,
            "note": self.note,
            "live_p99_predicted_s": self.live_p99_predicted_s,
            "tuned_config": self.tuned_config,
            "trials": self.trials,
            "tune_s": self.tune_s,
        }


@dataclass(frozen=True)
class PilotRun:
    rows: list[Row]
    live: ServingConfig  # the config live at the end
    interrupted: bool


@dataclass(frozen=True)
class _Look:
    """What one interval saw before the decision."""

    started_at: float  # the measurement window
    ended_at: float
    stats: LiveStats | None = None
    spec: PipelineSpec | None = None  # re-calibrated
    live: Prediction | None = None
    tuned: Tuned | None = None
    error: AutopilotError | None = None
    why: str | None = None
    tune_s: float = 0.0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _look(
    io: PilotIO,
    spec: PipelineSpec,
    live: ServingConfig,
    warm: Sequence[ServingConfig],
    policy: Policy,
    interval_s: float,
    iteration: int,
) -> _Look:
    """Measure a window; when it shows traffic, re-calibrate, predict the live config, re-tune."""
    started = io.clock()
    io.say(f"[{iteration}] measuring {interval_s:.0f} s of live traffic ...")
    try:
        stats, snapshots = io.measure(interval_s)
    except Exception as exc:
        why = f"metrics: {_describe(exc)}"
        return _Look(started, io.clock(), error=AutopilotError.METRICS, why=why)
    ended = io.clock()
    traffic = Traffic.of(stats)
    missing = missing_metric(traffic)
    if missing is not None:
        return _Look(started, ended, stats, error=AutopilotError.METRIC_MISSING, why=missing)
    if not traffic.busy and at_risk(traffic, policy) is None:
        return _Look(started, ended, stats)  # too little traffic: hold; nothing to tune for
    try:
        calibrated = io.recalibrate(spec, stats, snapshots)
    except Exception as exc:
        why = f"calibration: {_describe(exc)}"
        return _Look(started, ended, stats, error=AutopilotError.CALIBRATION, why=why)
    began = time.perf_counter()
    io.say(f"[{iteration}] tuning at {calibrated.workload.rate_rps:.1f} req/s ...")
    try:
        prediction = io.predict(calibrated, live)
        tuned = io.tune(calibrated, warm, iteration)
    except Exception as exc:
        return _Look(
            started,
            ended,
            stats,
            calibrated,
            error=AutopilotError.TUNING,
            why=f"tuning: {_describe(exc)}",
            tune_s=time.perf_counter() - began,
        )
    tune_s = time.perf_counter() - began
    look = _Look(started, ended, stats, calibrated, prediction, tuned, tune_s=tune_s)
    if tuned.winner is None or tuned.prediction is None:
        why = f"no config holds the constraints at {calibrated.workload.rate_rps:.1f} req/s"
        return replace(look, error=AutopilotError.NO_FEASIBLE, why=why)
    return look


def _observation(look: _Look, live: ServingConfig, previous: RolloutOutcome | None) -> Observation:
    tuned = look.tuned
    return Observation(
        traffic=None if look.stats is None else Traffic.of(look.stats),
        live=None if look.live is None else Candidate(fingerprint(live), look.live.cost_per_hour),
        tuned=None
        if tuned is None or tuned.winner is None or tuned.prediction is None
        else Candidate(fingerprint(tuned.winner), tuned.prediction.cost_per_hour),
        error=look.why,
        previous=previous,
    )


@dataclass
class _Loop:
    """The loop's running state (the rules' own state is `PilotState`, kept pure)."""

    spec: PipelineSpec
    live: ServingConfig
    io: PilotIO
    policy: Policy
    interval_s: float
    state: PilotState
    warm: list[ServingConfig]
    previous: RolloutOutcome | None = None
    rows: list[Row] = field(default_factory=list)

    def interval(self, iteration: int) -> Row:
        io = self.io
        generation = io.generation()
        look = _look(io, self.spec, self.live, self.warm, self.policy, self.interval_s, iteration)
        observation = _observation(look, self.live, self.previous)
        self.state, decision = step(self.state, observation)
        tuned = look.tuned
        row = Row(
            iteration=iteration,
            started_at=look.started_at,
            ended_at=look.ended_at,
            generation=generation,
            observation=observation,
            action=decision.action,
            reason=decision.reason,
            error=look.error,
            live_p99_predicted_s=None if look.live is None else look.live.p99_s,
            tuned_config=None if tuned is None or tuned.winner is None else tuned.winner.knobs(),
            trials=0 if tuned is None else tuned.trials,
            tune_s=look.tune_s,
        )
        self.previous = None
        if decision.action is not Action.HOLD and tuned is not None and tuned.winner is not None:
            assert look.spec is not None and look.stats is not None
            row = self._roll_out(row, look.spec, tuned.winner, look.stats)
        if tuned is not None and tuned.winner is not None:
            self.warm = [self.live, *tuned.best][:WARM_CONFIGS]
        try:
            io.record(row.action, row.error)
        except Exception as exc:  # the exporter is a side show: never stop the loop for it
            io.say(f"warning: could not record the interval for jizhi's exporter: {exc}")
        return row

    def _roll_out(self, row: Row, spec: PipelineSpec, new: ServingConfig, stats: LiveStats) -> Row:
        io = self.io
        io.say(f"[{row.iteration}] {row.action.value}: {row.reason}")
        try:
            outcome = io.roll_out(spec, new, self.live, stats)
        except KeyboardInterrupt:
            io.say("interrupted during the rollout: the live config was kept")
            raise
        except Exception as exc:
            why = f"rollout failed, the live config kept: {_describe(exc)}"
            self.previous = RolloutOutcome.FAILED
            return replace(
                row, rollout=RolloutOutcome.FAILED, error=AutopilotError.ROLLOUT, note=why
            )
        self.previous = outcome
        if outcome is RolloutOutcome.APPLIED:
            self.live = new
            return replace(row, rollout=outcome)
        if outcome is RolloutOutcome.FAILED:
            why = "the deploy failed, the old config was restored"
            return replace(row, rollout=outcome, error=AutopilotError.ROLLOUT, note=why)
        return replace(row, rollout=outcome, note="rolled back by the live check")


def run_autopilot(
    spec: PipelineSpec,
    live: ServingConfig,
    io: PilotIO,
    policy: Policy,
    *,
    interval_s: float,
    iterations: int | None = None,
    duration_s: float | None = None,
    on_row: Callable[[Row], None] | None = None,
) -> PilotRun:
    """Run intervals until `iterations` are done, the next window would end after `duration_s`,
    or Ctrl-C (neither limit: until Ctrl-C). `spec` is the spec as written (each interval
    re-calibrates it afresh); `live` is the config deployed now."""
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0 (got {interval_s})")
    loop = _Loop(spec, live, io, policy, interval_s, PilotState(policy), warm=[live])
    began = io.clock()
    iteration = 0
    try:
        while iterations is None or iteration < iterations:
            if duration_s is not None and io.clock() - began + interval_s > duration_s:
                break
            iteration += 1
            row = loop.interval(iteration)
            loop.rows.append(row)
            if on_row is not None:
                on_row(row)
    except KeyboardInterrupt:
        return PilotRun(loop.rows, loop.live, interrupted=True)
    return PilotRun(loop.rows, loop.live, interrupted=False)
