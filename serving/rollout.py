"""Roll a config out to the running deployment, verify it on live traffic, roll back on regression.

A rollout is: measure the live config for a window; apply the new one in place (a config-file
deploy: `user_config` and deployment options change on the running replicas); wait until it runs
and the metrics settle; measure again; judge. The new config stays when it holds the SLO (or the
old one did not either) and is not worse than the old one beyond a tolerance; otherwise the old
config is applied again. A deploy that fails is rolled back too. Ctrl-C while the new config is
being verified rolls back before it returns, so the service is left on a config that was judged.

Under overload latency measures the queue, not the config: when the old config's window shows
requests piling up (`overloaded`), the requests answered after the change waited mostly in the
queue the old config built, so the new config is judged by how many requests per second it
answers — a capacity raise drains the queue faster — not by their p99.

`judge` is pure; `rollout` takes the I/O as two callables (apply a Serve config and wait until it
runs; measure a window of live traffic), so its rules are unit-tested without Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from serving.monitoring.exporter import RolloutOutcome
from serving.monitoring.live import LiveStats

__all__ = [
    "RolloutRecord",
    "Thresholds",
    "Verdict",
    "judge",
    "overloaded",
    "rollout",
    "stats_dict",
]

OVERLOAD_GROWTH = 0.1  # in flight grew by this share of the requests answered: overloaded
MIN_PILE_UP = 5.0  # requests; fewer is noise of the gauge's sampling
Apply = Callable[[dict[str, Any]], None]
Measure = Callable[[float], LiveStats]


@dataclass(frozen=True)
class Thresholds:
    slo_p99_s: float
    max_shed_rate: float
    tolerance: float = 0.2  # the new p99 may exceed the old by this fraction
    error_margin: float = 0.001  # shed or error share the new config may add


@dataclass(frozen=True)
class Verdict:
    outcome: RolloutOutcome
    reasons: tuple[str, ...]


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def overloaded(stats: LiveStats) -> bool:
    """Requests piled up over the window: those in flight grew by more than `OVERLOAD_GROWTH` of
    those answered (and by at least `MIN_PILE_UP`)."""
    answered = stats.requests_per_s * stats.window_s
    return stats.in_flight_change > max(OVERLOAD_GROWTH * answered, MIN_PILE_UP)


def judge(before: LiveStats | None, after: LiveStats, limits: Thresholds) -> Verdict:
    """Keep (APPLIED) or roll back (ROLLED_BACK) the new config, and why."""
    if not after.busy:
        return Verdict(
            RolloutOutcome.APPLIED,
            (f"too little traffic to verify ({after.ok_per_s * after.window_s:.0f} requests)",),
        )
    reasons: list[str] = []
    queued = before is not None and before.busy and overloaded(before)
    had_slo = before is not None and before.busy and before.p99_s <= limits.slo_p99_s
    if after.p99_s > limits.slo_p99_s and (before is None or not before.busy or had_slo):
        reasons.append(f"p99 {_ms(after.p99_s)} breaks the SLO ({_ms(limits.slo_p99_s)})")
    if before is not None and queued:
        if after.requests_per_s < before.requests_per_s * (1 - limits.tolerance):
            reasons.append(
                f"answers {after.requests_per_s:.1f} req/s where the overloaded old config "
                f"answered {before.requests_per_s:.1f} (by more than {limits.tolerance:.0%} less)"
            )
    elif before is not None and before.busy and after.p99_s > before.p99_s * (1 + limits.tolerance):
        reasons.append(
            f"p99 {_ms(after.p99_s)} is worse than the old config's {_ms(before.p99_s)} "
            f"by more than {limits.tolerance:.0%}"
        )
    if before is not None and before.busy:
        if after.shed_rate > max(before.shed_rate + limits.error_margin, limits.max_shed_rate):
            reasons.append(
                f"shed rate {after.shed_rate:.2%} (old {before.shed_rate:.2%}, "
                f"limit {limits.max_shed_rate:.2%})"
            )
        if after.error_rate > before.error_rate + limits.error_margin:
            reasons.append(f"error rate {after.error_rate:.2%} (old {before.error_rate:.2%})")
    elif after.shed_rate > limits.max_shed_rate:
        reasons.append(f"shed rate {after.shed_rate:.2%} over {limits.max_shed_rate:.2%}")
    if reasons:
        return Verdict(RolloutOutcome.ROLLED_BACK, tuple(reasons))
    if queued and before is not None:
        return Verdict(
            RolloutOutcome.APPLIED,
            (f"the old config was overloaded; the new one answers {after.requests_per_s:.1f} "
             f"req/s (old {before.requests_per_s:.1f}) with no more shed or errors",),
        )  # fmt: skip
    return Verdict(RolloutOutcome.APPLIED, ("holds the SLO and is no worse than the old config",))


def stats_dict(stats: LiveStats | None) -> dict[str, Any] | None:
    """The figures a rollout record keeps (NaN as None, so the record is JSON)."""
    if stats is None:
        return None
    keep = (
        "window_s", "requests_per_s", "ok_per_s", "shed_rate", "error_rate",
        "p50_s", "p95_s", "p99_s", "mean_batch_size",
    )  # fmt: skip
    values = asdict(stats)
    return {k: None if math.isnan(values[k]) else values[k] for k in keep}


@dataclass(frozen=True)
class RolloutRecord:
    started_at: float
    finished_at: float
    outcome: RolloutOutcome
    reasons: tuple[str, ...]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    predicted: dict[str, float]
    new_config: dict[str, Any]
    old_config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome.value, "reasons": list(self.reasons)}


def rollout(
    new_config: dict[str, Any],
    old_config: dict[str, Any],
    *,
    apply: Apply,
    measure: Measure,
    limits: Thresholds,
    window_s: float,
    settle_s: float,
    predicted: dict[str, float] | None = None,
    before: LiveStats | None = None,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutRecord:
    """Apply `new_config` in place, verify it for `window_s`, keep it or restore `old_config`.
    `before`: the live config's figures when the caller has just measured them (the autopilot's
    interval, which is why it rolls out: not measured again, so capacity comes sooner)."""
    started = time.time()
    if before is None:
        say(f"measuring the live config for {window_s:.0f} s ...")
        before = measure(window_s)
    say(f"  before: {_line(before)}")
    after: LiveStats | None = None
    try:
        say("applying the new config in place ...")
        try:
            apply(new_config)
        except Exception as exc:
            say(f"  the deploy failed ({exc}); restoring the old config")
            apply(old_config)
            verdict = Verdict(RolloutOutcome.FAILED, (f"deploy failed: {exc}",))
        else:
            sleep(settle_s)
            say(f"verifying the new config for {window_s:.0f} s ...")
            after = measure(window_s)
            say(f"  after:  {_line(after)}")
            verdict = judge(before, after, limits)
            if verdict.outcome is RolloutOutcome.ROLLED_BACK:
                say("rolling back: " + "; ".join(verdict.reasons))
                apply(old_config)
    except KeyboardInterrupt:
        say("interrupted: restoring the old config before exiting")
        apply(old_config)
        raise
    return RolloutRecord(
        started_at=started,
        finished_at=time.time(),
        outcome=verdict.outcome,
        reasons=verdict.reasons,
        before=stats_dict(before),
        after=stats_dict(after),
        predicted=predicted or {},
        new_config=new_config,
        old_config=old_config,
    )


def _line(stats: LiveStats) -> str:
    return (
        f"{stats.requests_per_s:.1f} req/s, p50 {_ms(stats.p50_s)}, p99 {_ms(stats.p99_s)}, "
        f"shed {stats.shed_rate:.2%}, errors {stats.error_rate:.2%}"
    )
