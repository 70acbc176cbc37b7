"""The rollout rules without Ray: judging a window, and what gets applied in which order."""

from __future__ import annotations

from typing import Any

import pytest

from serving.monitoring.exporter import RolloutOutcome
from serving.monitoring.live import LiveStats
from serving.rollout import Thresholds, judge, rollout

LIMITS = Thresholds(slo_p99_s=0.05, max_shed_rate=0.001, tolerance=0.2)


def stats(
    p99_s: float, shed: float = 0.0, errors: float = 0.0, rps: float = 10.0, piled: float = 0.0
) -> LiveStats:
    """A 20 s window; `piled`: requests in flight at its end less at its start."""
    return LiveStats(
        window_s=20.0,
        requests_per_s=rps,
        ok_per_s=rps * (1 - shed - errors),
        shed_rate=shed,
        error_rate=errors,
        p50_s=p99_s / 3,
        p95_s=p99_s / 1.5,
        p99_s=p99_s,
        in_flight_change=piled,
    )


@pytest.mark.parametrize(
    ("before", "after", "outcome", "why"),
    [
        (stats(0.030), stats(0.032), RolloutOutcome.APPLIED, "holds the SLO"),
        (stats(0.030), stats(0.060), RolloutOutcome.ROLLED_BACK, "breaks the SLO"),
        # the old config broke the SLO too: only a relative regression rolls back
        (stats(0.200), stats(0.220), RolloutOutcome.APPLIED, "no worse"),
        (stats(0.200), stats(0.260), RolloutOutcome.ROLLED_BACK, "worse than the old"),
        (stats(0.030), stats(0.031, shed=0.01), RolloutOutcome.ROLLED_BACK, "shed rate"),
        (stats(0.030), stats(0.031, errors=0.01), RolloutOutcome.ROLLED_BACK, "error rate"),
        (None, stats(0.060), RolloutOutcome.ROLLED_BACK, "breaks the SLO"),
        (stats(0.030), stats(0.5, rps=0.5), RolloutOutcome.APPLIED, "too little traffic"),
        # overloaded before (60 more in flight after 20 s of 5 req/s answered): the requests
        # answered after the change waited in the old config's queue, so the new one is judged
        # by its answer rate, not their p99 ...
        (stats(9.8, rps=5, piled=60), stats(59.0, rps=7), RolloutOutcome.APPLIED, "overloaded"),
        (
            stats(9.8, rps=5, piled=60),
            stats(59.0, rps=3.5),
            RolloutOutcome.ROLLED_BACK,
            "answers 3.5 req/s where the overloaded old config answered 5.0",
        ),
        (
            stats(9.8, rps=5, piled=60),
            stats(5.0, rps=7, shed=0.05),
            RolloutOutcome.ROLLED_BACK,
            "shed rate",
        ),
        # ... a queue that grew by a few requests is not overload
        (stats(0.200, piled=4), stats(0.260), RolloutOutcome.ROLLED_BACK, "worse than the old"),
    ],
)
def test_judge(
    before: LiveStats | None, after: LiveStats, outcome: RolloutOutcome, why: str
) -> None:
    verdict = judge(before, after, LIMITS)
    assert verdict.outcome is outcome
    assert why in " ".join(verdict.reasons)


class Service:
    """A fake deployment: applied configs in order, and the p99 each config shows."""

    def __init__(self, p99_of: dict[str, float], fail: set[str] | None = None) -> None:
        self.p99_of = p99_of
        self.fail = fail or set()
        self.applied: list[str] = []
        self.live = "old"

    def apply(self, config: dict[str, Any]) -> None:
        name = config["name"]
        if name in self.fail:
            raise RuntimeError(f"{name} rejected")
        self.applied.append(name)
        self.live = name

    def measure(self, seconds: float) -> LiveStats:
        return stats(self.p99_of[self.live])


def run(service: Service) -> Any:
    return rollout(
        {"name": "new"},
        {"name": "old"},
        apply=service.apply,
        measure=service.measure,
        limits=LIMITS,
        window_s=1.0,
        settle_s=0.0,
        say=lambda _: None,
        sleep=lambda _: None,
    )


def test_a_better_config_stays() -> None:
    service = Service({"old": 0.04, "new": 0.03})
    record = run(service)
    assert record.outcome is RolloutOutcome.APPLIED and service.applied == ["new"]
    assert record.before is not None and record.before["p99_s"] == 0.04
    assert record.after is not None and record.after["p99_s"] == 0.03


def test_a_before_the_caller_measured_is_judged_against_and_not_measured_again() -> None:
    service = Service({"old": 0.04, "new": 0.06})
    windows: list[str] = []

    def measure(seconds: float) -> LiveStats:
        windows.append(service.live)
        return service.measure(seconds)

    record = rollout({"name": "new"}, {"name": "old"}, apply=service.apply, measure=measure,
                     limits=LIMITS, window_s=1.0, settle_s=0.0, before=stats(0.02),
                     say=lambda _: None, sleep=lambda _: None)  # fmt: skip
    assert windows == ["new"]  # only the after-window
    assert record.before is not None and record.before["p99_s"] == 0.02
    assert record.outcome is RolloutOutcome.ROLLED_BACK  # 60 ms is worse than 20 ms by > 20 %


def test_a_regression_is_rolled_back() -> None:
    service = Service({"old": 0.03, "new": 0.09})
    record = run(service)
    assert record.outcome is RolloutOutcome.ROLLED_BACK
    assert service.applied == ["new", "old"] and service.live == "old"


def test_a_failed_deploy_restores_the_old_config() -> None:
    service = Service({"old": 0.03, "new": 0.03}, fail={"new"})
    record = run(service)
    assert record.outcome is RolloutOutcome.FAILED and "new rejected" in record.reasons[0]
    assert service.applied == ["old"] and record.after is None


def test_ctrl_c_while_verifying_restores_the_old_config() -> None:
    service = Service({"old": 0.03, "new": 0.03})
    calls = 0

    def measure(seconds: float) -> LiveStats:
        nonlocal calls
        calls += 1
        if calls == 2:  # during the new config's window
            raise KeyboardInterrupt
        return stats(0.03)

    with pytest.raises(KeyboardInterrupt):
        rollout(
            {"name": "new"}, {"name": "old"}, apply=service.apply, measure=measure,
            limits=LIMITS, window_s=1.0, settle_s=0.0, say=lambda _: None, sleep=lambda _: None,
        )  # fmt: skip
    assert service.applied == ["new", "old"] and service.live == "old"
