"""Fit the node's speed and the spread of its CPU work to the latency the service answered with.

Ray's CPU gauges give the CPU seconds each process spent, not how long its work waited for a core
on a node shared with other processes: only latency shows that wait. `fit_latency` simulates
calibrated specs at their observed rates (`Target`s: one window, or several configs measured on
one node) and bisects, on the same seeded simulations each time:

1. `node.speed` (the share of a core each piece of work gets) until the median log ratio of
   simulated to observed p50 is zero — p50 falls as the speed rises;
2. one coefficient of variation for every piece of CPU work (the proxy, the hops, each stage's
   service time: `cv_paths`) until the same holds for p99 — on a shared node the time a piece of
   work takes varies far more than its CPU seconds do;
3. both once more (the spread moves the p50, the speed the p99).

`fit_hop` fits one more figure from several configs measured on one node: the CPU a deployment-
handle hop costs (its caller's and its callee's share of Ray's work, as one piece of work between
two deployments). CPU gauges cannot show it — it is inside the deployments' own CPU, and one
config cannot tell it from the handler's work — but configs that fuse a stage into the next
(`in_ranker`) drop a hop each, and the latency they lose is what the hop cost.

A bound is kept when the target lies beyond it (the note says which and why). Each step simulates
every target once (`requests` requests): the fit costs 4 × (`steps` + 2) + 1 rounds.

`with_latency_fit(spec, calibration)` adds the fitted rows to a `Calibration` (they are written by
`calibrated_spec` like every other fitted row); `recalibrate` is the autopilot's full
re-calibration: `calibrate`, then this fit.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from autotune.calibration import (
    Calibration,
    Fitted,
    Status,
    calibrate,
    calibrated_spec,
)
from simulator import PipelineSpec, simulate
from simulator.errors import InputError
from simulator.load import validate_spec
from simulator.spec import Device

if TYPE_CHECKING:
    from serving.monitoring.live import LiveStats, Snapshot

__all__ = [
    "HopFit",
    "LatencyFit",
    "Target",
    "cv_paths",
    "fit_hop",
    "fit_latency",
    "handle_hops",
    "recalibrate",
    "with_latency_fit",
]

AUTOPILOT_SUBWINDOW_S = 20.0  # Ray exports each process's metrics every few seconds
ROUNDS = 2  # speed then spread, twice
SPEED_RANGE = (0.02, 1.0)
CV_RANGE = (0.05, 3.0)
_SOURCE = "ray_serve_http_request_latency_ms, simulated"


@dataclass(frozen=True)
class Target:
    """A spec as it ran (knobs, rate, a node section) and the latency it was measured at."""

    spec: PipelineSpec
    p50_s: float
    p99_s: float

    def __post_init__(self) -> None:
        if self.spec.node is None:
            raise InputError("the latency fit needs the spec's node section (calibrate writes it)")
        for name, value in (("p50", self.p50_s), ("p99", self.p99_s)):
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"the latency fit needs an observed {name} > 0 (got {value})")


@dataclass(frozen=True)
class LatencyFit:
    speed: float
    cv: float
    cv_paths: tuple[str, ...]  # of the first target's spec
    predicted: tuple[tuple[float, float], ...]  # (p50, p99) per target at the fitted values
    simulations: int
    notes: tuple[str, ...] = ()

    def rows(self) -> tuple[Fitted, ...]:
        """The fitted figures as calibration rows: speed and cvs written, and for one target its
        predicted p50 and p99 (observed rows, to set beside the measured ones)."""
        bound = " ".join(self.notes)
        rows = [
            Fitted("node.speed", self.speed, math.nan, "", _SOURCE + " (p50)", note=bound),
            *(Fitted(f"{p}.cv", self.cv, math.nan, "", _SOURCE + " (p99)") for p in self.cv_paths),
        ]
        if len(self.predicted) == 1:
            for q, value in zip(("p50", "p99"), self.predicted[0], strict=True):
                rows.append(
                    Fitted(f"predicted.{q}_s", value, math.nan, "s", "simulated", Status.OBSERVED)
                )
        return tuple(rows)


def cv_paths(spec: PipelineSpec) -> tuple[str, ...]:
    """The spec paths of the CPU work whose service model has a cv (the store's time is waiting
    on another process, not CPU work of the pipeline, and keeps its own)."""
    paths = [f"overhead.{name}" for name in ("proxy", "hop", "response")]
    models = [getattr(spec.overhead, name) for name in ("proxy", "hop", "response")]
    for stage in spec.stages:
        variant = stage.gpu if stage.device is Device.GPU and stage.gpu is not None else None
        paths.append(f"stages.{stage.name}.{'gpu.service' if variant else 'service'}")
        models.append(variant.service if variant else stage.service)
    return tuple(p for p, m in zip(paths, models, strict=True) if hasattr(m, "cv"))


def _bisect(
    error: Callable[[float], float], low: float, high: float, steps: int, rising: bool
) -> tuple[float, str | None]:
    """The root of `error` (log ratio of simulated to observed) on [low, high], geometric
    bisection; a bound when the root lies beyond it (with why)."""
    sign = 1.0 if rising else -1.0
    if sign * error(low) >= 0:
        return low, "low"
    if sign * error(high) <= 0:
        return high, "high"
    for _ in range(steps):
        mid = math.sqrt(low * high)
        if sign * error(mid) < 0:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high), None


def fit_latency(
    targets: Sequence[Target],
    *,
    requests: int = 3000,
    warmup_requests: int = 300,
    seed: int = 0,
    steps: int = 7,
    say: Callable[[str], None] = lambda line: None,
) -> LatencyFit:
    """`node.speed` and one cv of CPU work that make the targets' simulated p50 and p99 their
    observed ones (for several targets: the median log ratio zero)."""
    if not targets:
        raise InputError("the latency fit needs at least one measured target")
    dumped = [t.spec.model_dump(mode="json", exclude_none=True) for t in targets]
    paths = [cv_paths(t.spec) for t in targets]
    runs = 0

    def latency(speed: float, cv: float) -> list[tuple[float, float]]:
        nonlocal runs
        runs += 1
        out = []
        for data, own in zip(dumped, paths, strict=True):
            report = simulate(
                _patched(data, speed, cv, own),
                requests=requests,
                warmup_requests=warmup_requests,
                seed=seed,
            )
            out.append((report.latency.p50_s, report.latency.p99_s))
        return out

    def error(q: int, speed: float, cv: float) -> float:
        observed = [(t.p50_s, t.p99_s)[q] for t in targets]
        return statistics.median(
            math.log(sim[q] / obs) for sim, obs in zip(latency(speed, cv), observed, strict=True)
        )

    notes: list[str] = []

    def noted(what: str, fitted: tuple[float, str | None]) -> float:
        value, bound = fitted
        say(f"latency fit: {what} {value:.3g} ({runs} rounds of simulations so far)")
        if bound is not None:
            notes.append(_bound_note(what, bound))
        return value

    def speed_at(cv: float) -> float:
        return noted("speed", _bisect(lambda s: error(0, s, cv), *SPEED_RANGE, steps, False))

    def cv_at(speed: float) -> float:
        return noted("cv", _bisect(lambda c: error(1, speed, c), *CV_RANGE, steps, True))

    cv = _common_cv(dumped[0], paths[0])
    speed = 1.0
    for _ in range(ROUNDS):  # the two interact (a wider spread moves the median): alternate
        speed = speed_at(cv)
        cv = cv_at(speed)
    predicted = tuple(latency(speed, cv))
    return LatencyFit(speed, cv, paths[0], predicted, runs, tuple(dict.fromkeys(notes)))


@dataclass(frozen=True)
class HopFit:
    seconds: float  # CPU of one handle hop, as `overhead.hop`'s mean
    predicted: tuple[float, ...]  # p50 per target at it
    slope: float  # of p50 log error against hops, at it (near 0 unless a bound was kept)
    simulations: int
    note: str | None = None


def handle_hops(spec: PipelineSpec) -> int:
    """Handle hops a request takes: one between each two deployed stages (`in_ranker` stages
    have no deployment)."""
    return sum(1 for stage in spec.stages if not stage.in_ranker) - 1


def fit_hop(
    targets_at: Callable[[float], Sequence[Target]],
    *,
    high_s: float,
    requests: int = 3000,
    warmup_requests: int = 300,
    seed: int = 0,
    steps: int = 8,
    say: Callable[[str], None] = lambda line: None,
) -> HopFit:
    """The hop's CPU in [0, `high_s`] at which the targets' p50 log error does not trend with their
    number of handle hops (the least-squares slope is zero): the model then loses, per hop fused
    away, the latency the service lost. `targets_at(seconds)` builds the targets for a hop of that
    many seconds — the caller moves the hop's CPU out of the stage costs it was measured in, so
    the configs measured with the most hops keep their total. Targets need two hop counts."""
    hops = [handle_hops(t.spec) for t in targets_at(0.0)]
    if len(set(hops)) < 2:
        raise InputError(
            "the hop fit needs configs with different numbers of handle hops "
            f"(got {sorted(set(hops))}): measure one with a stage in_ranker"
        )
    mean_hops = statistics.fmean(hops)
    runs = 0

    def measured(seconds: float) -> tuple[float, list[float]]:
        nonlocal runs
        runs += 1
        targets = targets_at(seconds)
        p50s = [
            simulate(
                t.spec, requests=requests, warmup_requests=warmup_requests, seed=seed
            ).latency.p50_s
            for t in targets
        ]
        errors = [math.log(sim / t.p50_s) for sim, t in zip(p50s, targets, strict=True)]
        mean_error = statistics.fmean(errors)
        slope = sum((h - mean_hops) * (e - mean_error) for h, e in zip(hops, errors, strict=True))
        return slope / sum((h - mean_hops) ** 2 for h in hops), p50s

    # A dearer hop lowers the configs with fewer hops against the others: the slope rises.
    low, high = 0.0, high_s
    note = None
    slope, p50s = measured(low)
    if slope >= 0:
        note = (
            "the configs with fewer hops are no faster than the model says with free hops: 0 kept"
        )
        seconds = low
    else:
        slope, p50s = measured(high)
        seconds = high
        if slope <= 0:
            note = f"even a hop of {high_s * 1e3:.2f} ms leaves fused configs over-predicted"
        else:
            for _ in range(steps):
                mid = (low + high) / 2
                if measured(mid)[0] < 0:
                    low = mid
                else:
                    high = mid
            seconds = (low + high) / 2
            slope, p50s = measured(seconds)
    say(f"hop fit: {seconds * 1e3:.2f} ms of CPU per hop ({runs} rounds of simulations)")
    return HopFit(seconds, tuple(p50s), slope, runs, note)


def _bound_note(what: str, bound: str) -> str:
    if what == "speed":
        return {
            "high": "even at full speed the simulated p50 is above the observed one: the fitted "
            "costs are too high (idle CPU counted at a low rate?); speed 1 kept",
            "low": f"even at speed {SPEED_RANGE[0]} the simulated p50 is below the observed one: "
            "the service waits on something the spec does not model",
        }[bound]
    return {
        "low": f"even a cv of {CV_RANGE[0]} gives a p99 above the observed one",
        "high": f"even a cv of {CV_RANGE[1]} gives a p99 below the observed one: the tail comes "
        "from something the spec does not model",
    }[bound]


def _common_cv(data: dict[str, Any], paths: tuple[str, ...]) -> float:
    """The starting spread: the median cv the spec gives its CPU work (0.3 when none has one)."""
    values = sorted(float(_model(data, p).get("cv", 0.3)) for p in paths)
    cv = values[len(values) // 2] if values else 0.3
    return min(max(cv, CV_RANGE[0]), CV_RANGE[1])


def _model(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The dict at a dotted path of a dumped spec (stages by name)."""
    node: Any = data
    for part in path.split("."):
        node = next(s for s in node if s["name"] == part) if isinstance(node, list) else node[part]
    assert isinstance(node, dict)
    return node


def _patched(data: dict[str, Any], speed: float, cv: float, paths: tuple[str, ...]) -> PipelineSpec:
    patched = copy.deepcopy(data)
    patched["node"]["speed"] = speed
    for path in paths:
        _model(patched, path)["cv"] = cv
    return validate_spec(patched, "the spec being fitted to latency")


def with_latency_fit(
    spec: PipelineSpec,
    calibration: Calibration,
    *,
    seed: int = 0,
    requests: int = 3000,
    say: Callable[[str], None] = lambda line: None,
) -> Calibration:
    """The calibration with `fit_latency`'s rows added, fitted on its calibrated spec to its
    observed p50 and p99; unchanged but for a note when the window has no latency to fit."""
    p50, p99 = calibration.get("observed.p50_s").value, calibration.get("observed.p99_s").value
    if not (math.isfinite(p50) and math.isfinite(p99) and p50 > 0 and p99 > 0):
        note = "no latency in the window: node.speed and the cvs are the spec's"
        return replace(calibration, notes=(*calibration.notes, note))
    calibrated = validate_spec(calibrated_spec(spec, calibration), "the calibrated spec")
    fit = fit_latency(
        [Target(calibrated, p50, p99)],
        requests=requests,
        warmup_requests=requests // 10,
        seed=seed,
        say=say,
    )
    ((p50_sim, p99_sim),) = fit.predicted
    note = (
        f"latency fit: {fit.simulations} simulations of {requests} requests; simulated p50 "
        f"{p50_sim * 1e3:.1f} ms vs observed {p50 * 1e3:.1f} ms, p99 {p99_sim * 1e3:.1f} ms vs "
        f"{p99 * 1e3:.1f} ms"
    )
    return replace(
        calibration,
        parameters=(*calibration.parameters, *fit.rows()),
        notes=(*calibration.notes, note),
    )


def recalibrate(spec: PipelineSpec, stats: LiveStats, snapshots: list[Snapshot]) -> PipelineSpec:
    """The autopilot's full re-calibration (its `Recalibrate` signature; `stats` is not needed,
    everything comes from the snapshots): `calibrate`, the latency fit, the calibrated spec."""
    calibration = calibrate(spec, snapshots, min_subwindow_s=AUTOPILOT_SUBWINDOW_S)
    fitted = with_latency_fit(spec, calibration)
    return validate_spec(calibrated_spec(spec, fitted), "the calibrated spec")
