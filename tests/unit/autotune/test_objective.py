"""The smooth penalty: every infeasible trial ranks below every feasible one; nearer misses rank
above farther ones."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autotune.objective import QualityModel, TrialMetrics, cost_ceiling, objective_value
from tests.unit.autotune.helpers import tiny

OK = TrialMetrics(
    p50_s=0.005, p99_s=0.02, mean_s=0.006, throughput_rps=400, offered_rps=400, shed_rate=0.0,
    cost_per_hour=0.2, quality_loss=0.0, completed=300,
)  # fmt: skip


def _value(m: TrialMetrics, **tuning: object) -> tuple[float, bool]:
    spec = tiny(**tuning)
    return objective_value(spec, m, cost_ceiling(spec))


def test_every_infeasible_trial_is_worse_than_every_feasible_one() -> None:
    ceiling = cost_ceiling(tiny())  # the dearest config of the space: 3 × 0.025 + 4 × 0.1
    assert ceiling == pytest.approx(0.475)
    feasible = [replace(OK, cost_per_hour=c) for c in (0.05, 0.3, ceiling)]
    infeasible = [
        replace(OK, p99_s=0.0301),
        replace(OK, shed_rate=0.001),
        replace(OK, completed=0),
        replace(OK, cost_per_hour=0.05, p99_s=0.031),
    ]
    good = [_value(m) for m in feasible]
    bad = [_value(m) for m in infeasible]
    assert all(ok for _, ok in good) and not any(ok for _, ok in bad)
    assert max(v for v, _ in good) < min(v for v, _ in bad)


def test_nearer_misses_score_better() -> None:
    values = [_value(replace(OK, p99_s=p))[0] for p in (0.031, 0.04, 0.1, 1.0)]
    assert values == sorted(values) and len(set(values)) == 4
    sheds = [_value(replace(OK, shed_rate=s))[0] for s in (0.001, 0.01, 0.1)]
    assert sheds == sorted(sheds) and len(set(sheds)) == 3


def test_min_cost_of_a_feasible_trial_is_its_cost() -> None:
    assert _value(OK) == (0.2, True)


def test_min_p99_penalises_going_over_budget() -> None:
    within, ok = _value(OK, objective="min_p99", max_cost_per_hour=0.3)
    over, over_ok = _value(
        replace(OK, cost_per_hour=0.4), objective="min_p99", max_cost_per_hour=0.3
    )
    assert ok and within == pytest.approx(0.02)
    assert not over_ok and over > 0.03  # above the SLO: worse than any feasible p99


def test_max_rate_values_are_negative_rates_and_penalties_positive() -> None:
    value, ok = _value(
        replace(OK, sustainable_rps=900.0), objective="max_rate", max_cost_per_hour=1
    )
    assert ok and value == -900.0
    missed, ok = _value(replace(OK, sustainable_rps=0.0), objective="max_rate", max_cost_per_hour=1)
    assert not ok and missed > 0


def test_quality_loss_of_a_cutoff_is_the_share_of_lookups_skipped() -> None:
    model = QualityModel(tiny())  # vocab 1e6, Zipf 1.0
    assert model.loss(None) == 0.0
    assert model.loss(1_000_000) == 0.0
    # Share of Zipf(1) mass at ranks >= 1e5 of 1e6: (H(1e6) - H(1e5)) / H(1e6) ≈ 2.3026 / 14.393.
    assert model.loss(100_000) == pytest.approx(0.16, abs=0.005)
