"""Judging a config: its metrics, its constraints, and the one number the optimiser minimises.

Constraints — p99 ≤ SLO, shed rate ≤ limit, quality loss ≤ budget, and for `max_rate`/`min_p99`
cost ≤ budget — are folded into the value with a smooth penalty rather than a wall: an infeasible
trial scores `worst_feasible × (1 + violation)`, where `violation` is the sum of each constraint's
relative excess. So every infeasible trial ranks below every feasible one, yet nearer misses score
better than far ones, and the Gaussian process sees a surface that slopes toward the feasible
region instead of a cliff (a constant penalty would flatten it, a huge one would wreck its scale).
The optimiser models log(value) for `min_p99`, whose values span orders of magnitude. For
`min_cost` the cost needs no model at all (replicas × prices), so its engine learns feasibility
instead, from `constraint_margin` (see `autotune.constrained`): the penalised value's cliff sits
right at the cheapest feasible configs, which is where the search has to look.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from simulator import PipelineSpec, SimulationReport
from simulator.errors import InputError
from simulator.spec import Device, Objective
from simulator.zipf import zipf_probabilities

__all__ = [
    "QualityModel",
    "TrialMetrics",
    "constraint_margin",
    "cost_ceiling",
    "metrics_of",
    "objective_value",
]


@dataclass(frozen=True)
class TrialMetrics:
    """What one evaluation of a config measured (the fields of `trials.jsonl`'s `metrics`)."""

    p50_s: float
    p99_s: float
    mean_s: float
    throughput_rps: float
    offered_rps: float
    shed_rate: float
    cost_per_hour: float
    quality_loss: float
    completed: int
    stage_p99_s: dict[str, float] = field(default_factory=dict)
    stage_utilisation: dict[str, float] = field(default_factory=dict)
    stage_batch_size: dict[str, float] = field(default_factory=dict)
    cache_hit_rate: float | None = None
    sustainable_rps: float | None = None  # max_rate objective only


class QualityModel:
    """Quality loss of a cut-off rank: from the model's measured curve, else lookups skipped."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.vocab = spec.workload.vocab_size
        self.alpha = spec.workload.zipf_alpha
        self.curve: tuple[np.ndarray, np.ndarray] | None = None
        if spec.tuning.quality.curve is not None:
            self.curve = _read_curve(spec.tuning.quality.curve)

    def loss(self, cutoff_rank: int | None) -> float:
        if cutoff_rank is None or cutoff_rank >= self.vocab:
            return 0.0
        if self.curve is not None:
            ranks, losses = self.curve
            return float(np.interp(math.log(cutoff_rank), np.log(ranks), losses))
        # Share of Zipf lookups with rank ≥ K, the keys a cut-off at K skips.
        return 1.0 - float(_zipf_cdf(self.vocab, self.alpha)[cutoff_rank - 1])


@lru_cache(maxsize=4)
def _zipf_cdf(n: int, alpha: float) -> np.ndarray:
    return np.cumsum(zipf_probabilities(n, alpha))


def _read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(cut-off ranks, AUC loss) from `quality_vs_cutoff.json` (written by `jizhi train`)."""
    try:
        data = json.loads(Path(path).read_text())
        baseline = float(data["metric_baseline"]["auc"])
        points = sorted((int(p["cutoff_rank"]), float(p["auc"])) for p in data["points"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a quality curve with metric_baseline.auc and points[].cutoff_rank/auc ({exc})"
        ) from None
    if not points:
        raise InputError(f"{path}: the quality curve has no points")
    ranks = np.array([max(r, 1) for r, _ in points], dtype=np.float64)
    losses = np.maximum(0.0, baseline - np.array([a for _, a in points]))
    return ranks, losses


def cost_ceiling(spec: PipelineSpec) -> float:
    """Cost per hour of the most expensive config in the space (every stage at its most replicas
    on its dearest device): the scale of the penalty."""
    total = 0.0
    for stage in spec.stages:
        replicas_range = spec.tuning.knobs.get(f"{stage.name}.replicas")
        replicas = max(stage.replicas, int(replicas_range.high or 0) if replicas_range else 0)
        devices = [Device.CPU] + ([Device.GPU] if stage.gpu is not None else [])
        total += replicas * max(spec.replica_cost_per_hour(stage, d) for d in devices)
    return max(total, 1e-9)


def metrics_of(
    report: SimulationReport, quality: QualityModel, cutoff_rank: int | None
) -> TrialMetrics:
    cache = next((s.cache for s in report.stages if s.cache is not None), None)
    return TrialMetrics(
        p50_s=report.latency.p50_s,
        p99_s=report.latency.p99_s,
        mean_s=report.latency.mean_s,
        throughput_rps=report.throughput_rps,
        offered_rps=report.offered_rps,
        shed_rate=report.shed_rate,
        cost_per_hour=report.cost_per_hour,
        quality_loss=quality.loss(cutoff_rank),
        completed=report.completed,
        stage_p99_s={s.name: s.latency.p99_s for s in report.stages},
        stage_utilisation={s.name: s.utilisation for s in report.stages},
        stage_batch_size={s.name: s.mean_batch_size for s in report.stages},
        cache_hit_rate=cache.hit_rate if cache is not None else None,
    )


def violation(spec: PipelineSpec, m: TrialMetrics) -> float:
    """Sum of each constraint's relative excess; 0 when the config is feasible."""
    tuning, slo = spec.tuning, spec.slo
    v = 0.0
    if m.completed == 0:
        v += 10.0
    elif spec.tuning.objective is not Objective.MAX_RATE:
        v += max(0.0, m.p99_s / slo.p99_s - 1.0)
    if spec.tuning.objective is Objective.MAX_RATE and not m.sustainable_rps:
        v += 1.0
    v += max(0.0, m.shed_rate - slo.max_shed_rate) / max(slo.max_shed_rate, 0.01)
    v += max(0.0, m.quality_loss - tuning.quality.max_loss) / max(tuning.quality.max_loss, 1e-6)
    if tuning.objective is not Objective.MIN_COST:
        assert tuning.max_cost_per_hour is not None
        v += max(0.0, m.cost_per_hour / tuning.max_cost_per_hour - 1.0)
    return v


MARGIN_FAILED = 8.0  # the margin of a trial that completed nothing or raised (p99 ≈ 3000 × SLO)


def constraint_margin(spec: PipelineSpec, m: TrialMetrics) -> float:
    """How far a trial is from the constraints' edge, in log units: the largest of log(p99 /
    SLO), log of shed rate and quality loss over their limits, and log(cost / budget) where the
    objective has one. ≤ 0 exactly when `violation` is 0; what a feasibility model learns."""
    tuning, slo = spec.tuning, spec.slo
    if m.completed == 0:
        return MARGIN_FAILED
    parts = [_log_ratio(m.shed_rate, slo.max_shed_rate, 1e-4)]
    parts.append(_log_ratio(m.quality_loss, tuning.quality.max_loss, 1e-6))
    if tuning.objective is not Objective.MAX_RATE:
        parts.append(math.log(max(m.p99_s, 1e-9) / slo.p99_s))
    elif not m.sustainable_rps:
        parts.append(1.0)
    if tuning.objective is not Objective.MIN_COST:
        assert tuning.max_cost_per_hour is not None
        parts.append(math.log(max(m.cost_per_hour, 1e-9) / tuning.max_cost_per_hour))
    return max(parts)


def _log_ratio(value: float, limit: float, floor: float) -> float:
    """log((value + floor) / (limit + floor)): ≤ 0 exactly when value ≤ limit; a zero limit
    makes any excess at least log(2)."""
    if limit <= 0.0:
        return -MARGIN_FAILED if value <= 0.0 else max(math.log(value / floor), math.log(2.0))
    return math.log((value + floor) / (limit + floor))


def objective_value(spec: PipelineSpec, m: TrialMetrics, ceiling: float) -> tuple[float, bool]:
    """(value to minimise, feasible). See the module docstring for the penalty."""
    v = violation(spec, m)
    feasible = v == 0.0
    objective = spec.tuning.objective
    if objective is Objective.MIN_COST:
        return (m.cost_per_hour if feasible else ceiling * (1.0 + v)), feasible
    if objective is Objective.MIN_P99:
        return (m.p99_s if feasible else spec.slo.p99_s * (1.0 + v)), feasible
    rate = m.sustainable_rps or 0.0
    return (-rate if feasible else v), feasible
