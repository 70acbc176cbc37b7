"""The autopilot without Ray: the decision rules as traces, and the loop against fake I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from autotune.autopilot import (
    Action,
    Candidate,
    Observation,
    PilotState,
    Policy,
    Traffic,
    fingerprint,
    missing_metric,
    step,
)
from autotune.autopilot_loop import PilotIO, Prediction, Row, Tuned, rate_only, run_autopilot
from autotune.timeline import format_row, plot_timeline, write_timeline
from jizhi.cli import main
from serving.monitoring.exporter import AutopilotError, RolloutOutcome
from serving.monitoring.live import LiveMetricsError, LiveStats, Snapshot
from simulator import PipelineSpec, ServingConfig, apply_config
from simulator.spec import ArrivalProcess

from .helpers import tiny, tiny_file

POLICY = Policy(slo_p99_s=0.05, max_shed_rate=0.001, risk=0.9, saving=0.1, confirm=2, cooldown=2)
LIVE = Candidate("live", 1.0)
CHEAP = Candidate("cheap", 0.5)  # a 50 % saving
BIGGER = Candidate("bigger", 1.5)


def traffic(p99_s: float = 0.02, rps: float = 10.0, shed: float = 0.0) -> Traffic:
    return Traffic(
        window_s=60.0,
        requests_per_s=rps,
        ok_per_s=rps * (1 - shed),
        shed_rate=shed,
        p50_s=p99_s / 3,
        p99_s=p99_s,
    )


CALM = traffic(0.02)  # p99 40 % of the SLO
HOT = traffic(0.047)  # p99 94 % of the SLO: at risk
IDLE = traffic(0.02, rps=0.2)  # 12 requests in the minute


def obs(
    t: Traffic | None = CALM,
    tuned: Candidate | None = CHEAP,
    live: Candidate = LIVE,
    previous: RolloutOutcome | None = None,
    error: str | None = None,
) -> Observation:
    return Observation(traffic=t, live=live, tuned=tuned, error=error, previous=previous)


def trace(observations: Sequence[Observation], policy: Policy = POLICY) -> list[tuple[Action, str]]:
    state = PilotState(policy)
    out = []
    for o in observations:
        state, decision = step(state, o)
        out.append((decision.action, decision.reason))
    return out


def actions(observations: Sequence[Observation], policy: Policy = POLICY) -> list[Action]:
    return [a for a, _ in trace(observations, policy)]


H, U, S = Action.HOLD, Action.SCALE_UP, Action.SAVE


# --- the rules -------------------------------------------------------------------------------


def test_risk_scales_up_at_once_even_during_a_cooldown() -> None:
    assert actions([obs(HOT, BIGGER)]) == [U]
    # a saving was just applied: the cooldown holds savings, not a capacity raise
    assert actions([obs(CALM, CHEAP), obs(CALM, CHEAP), obs(HOT, BIGGER, CHEAP, RolloutOutcome.APPLIED)]) == [H, S, U]  # fmt: skip


@pytest.mark.parametrize(
    ("o", "why"),
    [
        (obs(HOT, LIVE), "the tuned config is the live one"),
        (obs(HOT, CHEAP), "not a capacity raise"),
        (obs(HOT, None), "no tuned config"),
    ],
)
def test_risk_without_a_capacity_raise_holds(o: Observation, why: str) -> None:
    ((action, reason),) = trace([o])
    assert action is H and why in reason and "p99 47 ms over 90% of the SLO (50 ms)" in reason


def test_shedding_over_the_limit_is_a_risk_even_when_few_requests_are_answered() -> None:
    shedding = traffic(0.02, rps=1.0, shed=0.9)  # 60 requests, 6 answered: not busy
    assert not shedding.busy
    ((action, reason),) = trace([obs(shedding, BIGGER)])
    assert action is U and reason.startswith("shed 90.00% over the limit 0.10%")


def test_a_saving_needs_confirm_agreeing_intervals() -> None:
    three = Policy(slo_p99_s=0.05, max_shed_rate=0.001, confirm=3, cooldown=0)
    result = trace([obs()] * 3, three)
    assert [a for a, _ in result] == [H, H, S]
    assert result[0][1] == "saving 50% ($1.000/h → $0.500/h): 1/3 intervals agree"
    assert result[2][1] == "saving 50% ($1.000/h → $0.500/h), confirmed by 3 intervals"
    # an interval without the saving restarts the count
    assert actions([obs(), obs(tuned=LIVE), obs(), obs()], three) == [H, H, H, H]


def test_a_saving_below_the_threshold_holds() -> None:
    almost = Candidate("almost", 0.91)  # 9 % < 10 %
    result = trace([obs(tuned=almost)] * 4)
    assert [a for a, _ in result] == [H] * 4
    assert "no saving of 10%" in result[0][1]


def test_no_saving_within_the_cooldown_after_a_rollout() -> None:
    applied = RolloutOutcome.APPLIED
    after = [obs(live=CHEAP, tuned=Candidate("cheaper", 0.2), previous=applied)]
    after += [obs(live=CHEAP, tuned=Candidate("cheaper", 0.2))] * 2
    result = trace([obs(), obs(), *after])
    # interval 2 saves; 3 and 4 (cooldown 2) hold although 3 and 4 agree; 5 saves
    assert [a for a, _ in result] == [H, S, H, H, S]
    assert "cooldown, 2/2 intervals since a rollout" in result[3][1]


def test_idle_intervals_hold_and_restart_the_count() -> None:
    result = trace([obs(), obs(IDLE), obs(), obs()])
    assert [a for a, _ in result] == [H, H, H, S]
    assert result[1][1] == "too little traffic (12 answered)"
    assert actions([obs(IDLE, BIGGER)]) == [H]  # a quiet window is not at risk either


def test_flapping_input_does_not_flap() -> None:
    # the saving comes and goes every interval: never confirmed
    assert actions([obs(), obs(tuned=LIVE)] * 10) == [H] * 20
    # traffic swings between hot and calm every interval: one raise, and no saving in between
    state, live, previous = PilotState(POLICY), LIVE, None
    decided = []
    for i in range(20):
        hot = i % 2 == 0
        o = obs(HOT if hot else CALM, BIGGER if hot else CHEAP, live, previous)
        state, decision = step(state, o)
        previous = None
        if decision.action is not H:  # the fake deployment takes every rollout
            live, previous = (BIGGER if decision.action is U else CHEAP), RolloutOutcome.APPLIED
        decided.append(decision.action)
    assert decided == [U] + [H] * 19


def test_a_failed_deploy_is_retried_the_next_interval() -> None:
    failed = RolloutOutcome.FAILED
    assert actions([obs(), obs(), obs(previous=failed)]) == [H, S, S]
    assert actions([obs(HOT, BIGGER), obs(HOT, BIGGER, previous=failed)]) == [U, U]


def test_a_rolled_back_config_is_not_raised_to_again_during_the_cooldown() -> None:
    back = RolloutOutcome.ROLLED_BACK
    seq = [obs(HOT, BIGGER), obs(HOT, BIGGER, previous=back), obs(HOT, BIGGER), obs(HOT, BIGGER)]
    result = trace(seq)
    assert [a for a, _ in result] == [U, H, H, U]
    assert "the tuned config was just rolled back" in result[1][1]
    # another config may go out at once
    assert actions([obs(HOT, BIGGER), obs(HOT, Candidate("other", 1.6), previous=back)]) == [U, U]


def test_an_error_holds_and_restarts_the_count() -> None:
    result = trace([obs(), obs(None, None, error="metrics: no Prometheus"), obs(), obs()])
    assert [a for a, _ in result] == [H, H, H, S]
    assert result[1][1] == "metrics: no Prometheus"


def test_missing_latency_while_requests_flow() -> None:
    assert missing_metric(CALM) is None
    assert missing_metric(traffic(0.02, rps=0.0)) is None
    missing = Traffic(60.0, 5.0, 5.0, 0.0, math.nan, math.nan)
    assert "300 requests answered but no latency" in (missing_metric(missing) or "")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("risk", 0.0, "risk must be in"),
        ("risk", 1.5, "risk must be in"),
        ("saving", 1.0, "saving must be in"),
        ("confirm", 0, "confirm must be >= 1"),
        ("cooldown", -1, "cooldown must be >= 0"),
        ("slo_p99_s", 0.0, "slo_p99_s must be > 0"),
    ],
)
def test_bad_policies_are_refused(field: str, value: float, message: str) -> None:
    fields: dict[str, Any] = {"slo_p99_s": 0.05, "max_shed_rate": 0.001, field: value}
    with pytest.raises(ValueError, match=message):
        Policy(**fields)


def test_observations_survive_json() -> None:
    nan_traffic = Traffic(60.0, 5.0, 0.0, 1.0, math.nan, math.nan)
    for o in (obs(previous=RolloutOutcome.ROLLED_BACK), obs(nan_traffic, None, error="x")):
        text = json.dumps(o.to_json(), allow_nan=False)
        back = Observation.from_json(json.loads(text))
        assert back.to_json() == o.to_json()


def test_fingerprints_tell_configs_apart() -> None:
    spec = tiny()
    base = ServingConfig.from_spec(spec)
    other = ServingConfig.from_spec(apply_config(spec, ServingConfig.model_validate(
        {"stages": {"model": {"replicas": 3}}})))  # fmt: skip
    assert fingerprint(base) == fingerprint(ServingConfig.from_spec(spec))
    assert fingerprint(base) != fingerprint(other)


# --- the loop ---------------------------------------------------------------------------------


def stats(rps: float = 10.0, p99_s: float = 0.02, shed: float = 0.0) -> LiveStats:
    return LiveStats(
        window_s=60.0,
        requests_per_s=rps,
        ok_per_s=rps * (1 - shed),
        shed_rate=shed,
        error_rate=0.0,
        p50_s=p99_s / 3,
        p95_s=p99_s / 1.5,
        p99_s=p99_s,
    )


def config(replicas: int) -> ServingConfig:
    spec = tiny()
    patch = ServingConfig.model_validate({"stages": {"model": {"replicas": replicas}}})
    return ServingConfig.from_spec(apply_config(spec, patch))


BIG, SMALL = config(4), config(2)


def cost(c: ServingConfig) -> float:
    return float(sum(k.replicas or 0 for k in c.stages.values()))  # 5.0 for BIG, 3.0 for SMALL


class Fake:
    """A deployment, its metrics and a tuner that always finds SMALL, scripted per interval."""

    def __init__(
        self,
        metrics: Sequence[LiveStats | BaseException],
        rollouts: Sequence[RolloutOutcome | BaseException] = (),
        live: ServingConfig = BIG,
    ) -> None:
        self.metrics = list(metrics)
        self.rollouts = list(rollouts)
        self.live = live
        self.generation = 1
        self.applied: list[ServingConfig] = []
        self.warm: list[list[ServingConfig]] = []
        self.rates: list[float] = []
        self.recorded: list[tuple[Action, AutopilotError | None]] = []
        self.lines: list[str] = []
        self.now = 1000.0

    def measure(self, seconds: float) -> tuple[LiveStats, list[Snapshot]]:
        self.now += seconds
        item = self.metrics.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item, [Snapshot(self.now - seconds, {}), Snapshot(self.now, {})]

    def tune(self, spec: PipelineSpec, warm: Sequence[ServingConfig], iteration: int) -> Tuned:
        assert spec.workload.rate_rps is not None
        self.rates.append(spec.workload.rate_rps)
        self.warm.append(list(warm))
        self.now += 7.0  # tuning takes time, outside the measurement window
        return Tuned(SMALL, Prediction(0.01, 0.02, cost(SMALL)), (SMALL,), trials=3)

    def predict(self, spec: PipelineSpec, c: ServingConfig) -> Prediction:
        return Prediction(0.01, 0.02, cost(c))

    def roll_out(
        self, spec: PipelineSpec, new: ServingConfig, old: ServingConfig, before: LiveStats
    ) -> RolloutOutcome:
        assert old == self.live, "the loop rolled out over a config that is not live"
        assert before.window_s > 0, "the rollout's before is the interval's window"
        self.generation += 1  # the new config was deployed ...
        outcome = self.rollouts.pop(0)
        if isinstance(outcome, BaseException):
            self.generation += 1  # ... and the old one restored
            raise outcome
        if outcome is RolloutOutcome.APPLIED:
            self.live = new
            self.applied.append(new)
        else:
            self.generation += 1
        return outcome

    def io(self, **changes: Any) -> PilotIO:
        fields: dict[str, Any] = {
            "measure": self.measure,
            "tune": self.tune,
            "predict": self.predict,
            "roll_out": self.roll_out,
            "generation": lambda: self.generation,
            "record": lambda action, error: self.recorded.append((action, error)),
            "say": self.lines.append,
            "clock": lambda: self.now,
        }
        return PilotIO(**{**fields, **changes})


FAST = Policy(slo_p99_s=0.05, max_shed_rate=0.001, confirm=2, cooldown=1)


def run(fake: Fake, iterations: int, **io: Any) -> Any:
    return run_autopilot(tiny(), BIG, fake.io(**io), FAST, interval_s=60.0, iterations=iterations)


def test_failures_keep_the_config_count_and_retry() -> None:
    unreachable = LiveMetricsError("no metrics at http://127.0.0.1:8080/metrics (refused)")
    fake = Fake(
        [stats(), unreachable, stats(), stats(), stats(), stats()],
        [RuntimeError("deploy rejected: HTTP 500"), RolloutOutcome.APPLIED],
    )
    result = run(fake, 6)
    got = [(r.action, r.error, r.rollout) for r in result.rows]
    assert got == [
        (H, None, None),  # saving 1/2
        (H, AutopilotError.METRICS, None),  # unreachable: held, the streak restarts
        (H, None, None),  # saving 1/2
        (S, AutopilotError.ROLLOUT, RolloutOutcome.FAILED),  # confirmed; the deploy fails: kept
        (S, None, RolloutOutcome.APPLIED),  # retried the next interval
        (H, None, None),  # the tuned config is now the live one
    ]
    assert "no metrics at http://127.0.0.1:8080/metrics" in result.rows[1].reason
    why = "rollout failed, the live config kept: RuntimeError: deploy rejected: HTTP 500"
    assert result.rows[3].note == why
    assert result.rows[3].reason == "saving 40% ($5.000/h → $3.000/h), confirmed by 2 intervals"
    assert fake.applied == [SMALL] and result.live == SMALL and not result.interrupted
    assert fake.recorded == [(r.action, r.error) for r in result.rows]
    assert [r.generation for r in result.rows] == [1, 1, 1, 1, 3, 4]
    assert result.rows[5].observation.live == Candidate(fingerprint(SMALL), 3.0)
    assert fake.rates == [10.0] * 5  # re-calibrated to the live rate every judged interval
    assert all(r.ended_at - r.started_at == 60.0 for r in result.rows)  # the window alone


def test_a_rolled_back_rollout_keeps_the_config_without_an_error() -> None:
    fake = Fake([stats()] * 3, [RolloutOutcome.ROLLED_BACK])
    result = run(fake, 3)
    assert [(r.action, r.rollout) for r in result.rows] == [
        (H, None), (S, RolloutOutcome.ROLLED_BACK), (H, None),
    ]  # fmt: skip
    assert result.rows[1].note == "rolled back by the live check"
    assert result.rows[1].error is None and result.live == BIG
    assert "1/2 intervals agree" in result.rows[2].reason  # the streak starts again


def broken(*args: Any) -> Prediction:
    raise OSError("disk full")


@pytest.mark.parametrize(
    ("io", "error", "why"),
    [
        ({"recalibrate": lambda spec, s, snaps: 1 / 0}, AutopilotError.CALIBRATION,
         "calibration: ZeroDivisionError: division by zero"),
        ({"tune": lambda spec, warm, i: Tuned(None, None, trials=5)}, AutopilotError.NO_FEASIBLE,
         "no config holds the constraints at 10.0 req/s"),
        ({"predict": broken}, AutopilotError.TUNING, "tuning: OSError: disk full"),
    ],
)  # fmt: skip
def test_a_step_that_fails_holds_with_its_reason(
    io: dict[str, Any], error: AutopilotError, why: str
) -> None:
    fake = Fake([stats()] * 2)
    result = run(fake, 2, **io)
    assert [(r.action, r.error) for r in result.rows] == [(H, error)] * 2
    assert result.rows[0].reason == why and result.live == BIG and fake.applied == []


def test_missing_latency_and_idle_windows_hold_without_tuning() -> None:
    missing = LiveStats(60.0, 5.0, 5.0, 0.0, 0.0, math.nan, math.nan, math.nan)
    fake = Fake([missing, stats(rps=0.1)])
    result = run(fake, 2)
    assert [(r.action, r.error) for r in result.rows] == [
        (H, AutopilotError.METRIC_MISSING), (H, None),
    ]  # fmt: skip
    assert result.rows[1].reason.startswith("too little traffic") and fake.rates == []


def test_the_scale_up_goes_out_at_once_and_the_warm_start_follows() -> None:
    fake = Fake([stats(p99_s=0.2), stats(p99_s=0.03)], [RolloutOutcome.APPLIED], live=SMALL)
    big_tuner = Tuned(BIG, Prediction(0.01, 0.02, cost(BIG)), (BIG, SMALL), trials=3)

    def tune(spec: PipelineSpec, warm: Sequence[ServingConfig], iteration: int) -> Tuned:
        fake.warm.append(list(warm))
        return big_tuner

    result = run_autopilot(tiny(), SMALL, fake.io(tune=tune), FAST, interval_s=60.0, iterations=2)
    assert [r.action for r in result.rows] == [U, H]
    assert "p99 200 ms over 90% of the SLO" in result.rows[0].reason
    # first interval: the live config; then the live (now BIG) config and the last best
    assert fake.warm == [[SMALL], [BIG, BIG, SMALL]]
    assert result.rows[0].tuned_config == BIG.knobs()


def test_ctrl_c_during_a_rollout_keeps_the_live_config() -> None:
    fake = Fake([stats()] * 3, [KeyboardInterrupt()])
    result = run(fake, 5)
    assert result.interrupted and result.live == BIG and fake.applied == []
    assert [r.action for r in result.rows] == [H]  # the interrupted interval is not a row
    assert "interrupted during the rollout: the live config was kept" in fake.lines


def test_duration_bounds_the_run() -> None:
    fake = Fake([stats()] * 10)
    result = run_autopilot(tiny(), BIG, fake.io(roll_out=lambda *a: RolloutOutcome.ROLLED_BACK),
                           FAST, interval_s=60.0, duration_s=200.0)  # fmt: skip
    assert len(result.rows) == 3  # 60 s windows and 7 s tuning: a fourth would end at 261 s


def test_rate_only_sets_poisson_arrivals_at_the_live_rate() -> None:
    spec = rate_only(tiny(), stats(rps=12.5), [])
    assert spec.workload.rate_rps == 12.5 and spec.workload.arrival is ArrivalProcess.POISSON
    assert spec.stages == tiny().stages
    with pytest.raises(ValueError, match="no requests"):
        rate_only(tiny(), stats(rps=0.0), [])


# --- the command ------------------------------------------------------------------------------


def test_ctrl_c_writes_the_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jizhi.commands import autopilot

    fake = Fake([stats(), stats(), stats(), KeyboardInterrupt()], [RolloutOutcome.APPLIED])
    spec_file = tiny_file(tmp_path)
    monkeypatch.setattr(autopilot, "_check", lambda args: (tiny(), BIG))
    monkeypatch.setattr(autopilot, "_io", lambda args, spec, out, seed: fake.io(say=print))
    out = tmp_path / "run"
    argv = ["autopilot", str(spec_file), "--model", "m", "--interval", "1", "--out", str(out)]
    assert main(argv) == 130
    timeline = json.loads((out / "timeline.json").read_text())
    assert timeline["stopped"] == "interrupted"
    assert [r["action"] for r in timeline["rows"]] == ["hold", "save", "hold"]
    assert timeline["rows"][1]["rollout"] == "applied"
    assert (out / "timeline.png").stat().st_size > 10_000
    assert (out / "live.yaml").read_text() == SMALL.to_yaml()
    printed = capsys.readouterr().out
    assert "interrupted after 3 interval(s): 2 hold, 1 save" in printed
    # the decisions recorded in the timeline replay to the same actions
    assert replay(timeline) == [r["action"] for r in timeline["rows"]]


def replay(timeline: dict[str, Any]) -> list[str]:
    state = PilotState(Policy(**timeline["policy"]))
    out = []
    for row in timeline["rows"]:
        state, decision = step(state, Observation.from_json(row["observation"]))
        out.append(decision.action.value)
    return out


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = str(tiny_file(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main(["autopilot", spec, "--model", "m", "--risk", "1.5"])
    assert exit_.value.code == 2
    assert "--risk: must be in (0, 1] (got 1.5)" in capsys.readouterr().err
    assert main(["autopilot", spec, "--model", "m", "--interval", "60", "--duration", "30"]) == 2
    assert "--duration 30 is shorter than --interval 60" in capsys.readouterr().err


def test_the_table_and_the_picture(tmp_path: Path) -> None:
    rows = [
        Row(1, 0.0, 60.0, 3, obs(CALM, CHEAP), H, "saving 50%: 1/2 intervals agree",
            live_p99_predicted_s=0.01),
        Row(2, 60.0, 120.0, 3, obs(None, None, error="metrics: down"), H, "metrics: down",
            error=AutopilotError.METRICS),
        Row(3, 120.0, 180.0, 3, obs(CALM, CHEAP), S, "saving 50%", rollout=RolloutOutcome.APPLIED),
        Row(4, 240.0, 300.0, 4, obs(HOT, CHEAP, CHEAP), H, "p99 at risk"),
    ]  # fmt: skip
    line = format_row(rows[0])
    assert line.split()[2:8] == ["10.0", "6.7", "20.0", "0.00%", "3", "1.000"]
    assert "[metrics_unavailable] metrics: down" in format_row(rows[1])
    assert format_row(rows[2]).endswith("saving 50% (rollout applied)")
    write_timeline(tmp_path / "timeline.json", rows, POLICY, {"stopped": "done"})
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert data["policy"]["confirm"] == 2 and len(data["rows"]) == 4
    plot_timeline(tmp_path / "timeline.png", rows, POLICY)
    plot_timeline(tmp_path / "empty.png", [], POLICY)
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
