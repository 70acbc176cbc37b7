"""`jizhi autopilot SPEC --model DIR [--interval 60] [--trials 20] ...`: every interval, read the
live metrics, re-calibrate the spec to them, re-tune warm-started, and roll out a config when the
SLO is at risk (at once) or a saving is confirmed (hysteresis, cooldown). docs/autopilot.md."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jizhi.commands._args import non_negative_int, positive_float, positive_int
from jizhi.commands.serve import DEPLOYED, app_arguments
from simulator.errors import InputError

if TYPE_CHECKING:
    from autotune.autopilot_loop import Measure, PilotIO, Prediction, Tuned
    from serving.monitoring.live import LiveStats, Snapshot
    from simulator import PipelineSpec, ServingConfig

__all__ = ["register"]

SNAPSHOT_EVERY_S = 5.0  # snapshots within an interval, for calibrations that want the series


def _share(low_open: bool) -> Callable[[str], float]:
    """A fraction argument: (0, 1] for --risk, [0, 1) for --saving."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number (got {text!r})") from None
        ok = 0 < value <= 1 if low_open else 0 <= value < 1
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be in {'(0, 1]' if low_open else '[0, 1)'} (got {text})"
            )
        return value

    return parse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "autopilot",
        help="re-tune on live metrics every interval and roll out when the SLO or cost calls for it",
        description=(
            "Every --interval seconds: measure the live traffic, set the spec's rate to it, tune "
            "again (the live config and the last best first), and roll out the tuned config at "
            "once when the SLO is at risk, or when it saves --saving of the cost in --confirm "
            "intervals in a row and --cooldown intervals have passed since the last rollout. "
            "SPEC with --config/--set must be what is deployed now. Writes OUT/timeline.json and "
            "OUT/timeline.png at the end or on Ctrl-C."
        ),
    )
    parser.add_argument("spec", help="pipeline spec (YAML) with a min_cost tuning section")
    app_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--metrics", help="Ray's metrics endpoint (default: the local head's)")
    source.add_argument("--prometheus", help="read the live metrics from this Prometheus")
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=60.0,
        help="seconds of live traffic measured per interval (default 60)",
    )
    parser.add_argument(
        "--trials", type=positive_int, default=20, help="fresh BO trials per interval (default 20)"
    )
    parser.add_argument(
        "--saving", type=_share(False), default=0.1, help="least cost saving to roll out (0.1)"
    )
    parser.add_argument(
        "--risk", type=_share(True), default=0.9, help="SLO at risk above this × p99 SLO (0.9)"
    )
    parser.add_argument(
        "--confirm", type=positive_int, default=2, help="intervals a saving must hold (2)"
    )
    parser.add_argument(
        "--cooldown",
        type=non_negative_int,
        default=2,
        help="intervals after a rollout before a saving may roll out (2)",
    )
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=positive_float, help="stop after about this many seconds")
    stop.add_argument("--iterations", type=positive_int, help="stop after this many intervals")
    parser.add_argument(
        "--out", default="runs/autopilot", help="output folder (default runs/autopilot)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="tuning worker processes (default 1: the tuner shares the machine with the service)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the spec's)")
    parser.add_argument(
        "--recalibrate",
        choices=[m.value for m in Recalibration],
        default=Recalibration.FULL.value,
        help="full: fit rate, service times, overheads, store and key popularity from the "
        "window (`jizhi calibrate`); rate: only the live request rate (default full)",
    )
    rollout = parser.add_argument_group("rollouts (as `jizhi rollout`)")
    rollout.add_argument(
        "--window", type=positive_float, default=30.0, help="seconds measured before and after"
    )
    rollout.add_argument(
        "--settle", type=positive_float, default=6.0, help="seconds before the after-window"
    )
    rollout.add_argument(
        "--tolerance", type=positive_float, default=0.2, help="how much worse the new p99 may be"
    )
    rollout.add_argument(
        "--timeout", type=positive_float, default=300.0, help="seconds to wait for RUNNING"
    )
    parser.set_defaults(func=run)


def _measure(args: argparse.Namespace) -> Measure:
    """A window of live traffic, with a snapshot every few seconds for the calibration."""
    from jizhi.commands.rollout import live_snapshot
    from serving.deploy import APP_NAME
    from serving.monitoring import live

    snapshot = live_snapshot(args.metrics, args.prometheus)

    def measure(seconds: float) -> tuple[LiveStats, list[Snapshot]]:
        snapshots = [snapshot()]
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(SNAPSHOT_EVERY_S, left))
            try:
                snapshots.append(snapshot())
            except live.LiveMetricsError:
                if end - time.monotonic() <= 0:  # the window's last snapshot is needed
                    raise
        return live.summarize(live.Window(snapshots[0], snapshots[-1]), APP_NAME), snapshots

    return measure


def _io(args: argparse.Namespace, spec: PipelineSpec, out: Path, seed: int) -> PilotIO:
    """The real I/O: live metrics, the simulator, tuning runs, rollouts, jizhi's exporter."""
    from autotune.autopilot_loop import WARM_CONFIGS, PilotIO, Prediction, Tuned
    from autotune.run import tune
    from jizhi.commands.rollout import live_measure, live_snapshot, roll_out
    from jizhi.commands.serve import predict
    from serving.deploy import serve_config
    from serving.monitoring import exporter
    from serving.monitoring.exporter import RolloutOutcome
    from simulator import apply_config, simulate

    model = str(Path(args.model).resolve())
    rollout_measure = live_measure(live_snapshot(args.metrics, args.prometheus))

    def predict_at(calibrated: PipelineSpec, config: ServingConfig) -> Prediction:
        tuning = calibrated.tuning
        report = simulate(
            apply_config(calibrated, config),
            requests=tuning.trial_requests,
            warmup_requests=tuning.trial_warmup_requests,
            seed=seed,
        )
        return Prediction(report.latency.p50_s, report.latency.p99_s, report.cost_per_hour)

    def tune_at(calibrated: PipelineSpec, warm: Sequence[ServingConfig], iteration: int) -> Tuned:
        started = time.monotonic()
        result = tune(
            calibrated,
            trials=args.trials,
            out_dir=out / "intervals" / f"{iteration:04d}",
            workers=args.workers,
            seed=seed + iteration,
            seed_configs=list(warm),
        )
        _warn_on_failure(exporter.record_tuning, time.monotonic() - started, len(result.trials))
        winner = result.winner
        if winner is None or winner.metrics is None:
            return Tuned(None, None, trials=len(result.trials))
        ranked = sorted((t for t in result.trials if t.feasible), key=lambda t: t.value)
        best = {winner.config.to_yaml(): winner.config}
        for trial in ranked:
            best.setdefault(trial.config.to_yaml(), trial.config)
        m = winner.metrics
        return Tuned(
            winner.config,
            Prediction(m.p50_s, m.p99_s, m.cost_per_hour),
            tuple(best.values())[: WARM_CONFIGS - 1],
            len(result.trials),
        )

    def roll_out_at(
        calibrated: PipelineSpec, new: ServingConfig, old: ServingConfig, before: LiveStats
    ) -> RolloutOutcome:
        record = roll_out(
            calibrated,
            serve_config(apply_config(spec, new), model, store=args.store),
            serve_config(apply_config(spec, old), model, store=args.store),
            predicted=predict(apply_config(calibrated, new)),
            measure=rollout_measure,
            window_s=args.window,
            settle_s=args.settle,
            tolerance=args.tolerance,
            timeout_s=args.timeout,
            before=before,
            say=lambda line: print(f"    {line}"),
        )
        print(f"    rollout {record.outcome.value}: {'; '.join(record.reasons)}")
        return record.outcome

    def generation() -> int:
        try:
            return exporter.read_state().generation
        except (OSError, ValueError):
            return 0

    from autotune.autopilot_loop import rate_only
    from autotune.latency_fit import recalibrate

    full = Recalibration(args.recalibrate) is Recalibration.FULL
    return PilotIO(
        measure=_measure(args),
        recalibrate=recalibrate if full else rate_only,
        tune=tune_at,
        predict=predict_at,
        roll_out=roll_out_at,
        generation=generation,
        record=lambda action, error: _warn_on_failure(exporter.record_autopilot, action, error),
        say=print,
    )


class Recalibration(str, Enum):
    """What the autopilot fits from each interval's window."""

    FULL = "full"
    RATE = "rate"


def _warn_on_failure(record: Callable[..., object], *values: Any) -> None:
    """Record an event for jizhi's exporter; a state file that cannot be written only warns."""
    try:
        record(*values)
    except (OSError, ValueError) as exc:
        print(f"warning: could not record for jizhi's exporter: {exc}", file=sys.stderr)


def _check(args: argparse.Namespace) -> tuple[PipelineSpec, ServingConfig]:
    """The spec as deployed now and its live config; one-line errors for what cannot run."""
    import yaml

    from autotune.space import SearchSpace
    from jizhi.commands.serve import build_serve_config
    from serving import cluster
    from simulator import ServingConfig
    from simulator.spec import Objective

    if args.duration is not None and args.duration < args.interval:
        raise InputError(
            f"--duration {args.duration:g} is shorter than --interval {args.interval:g}"
        )
    if not DEPLOYED.is_file() or not cluster.head_running():
        raise InputError(
            f"nothing is deployed ({DEPLOYED} or the Ray head is missing): run `jizhi serve` first"
        )
    spec, config = build_serve_config(args)
    if spec.tuning.objective is not Objective.MIN_COST:
        raise InputError(
            f"the autopilot saves cost: the spec's tuning.objective must be min_cost (it is "
            f"{spec.tuning.objective.value}; --set tuning.objective=min_cost)"
        )
    if len(SearchSpace(spec)) == 0:
        raise InputError("the spec has no tuning.knobs: name the knobs the autopilot may change")
    if config != yaml.safe_load(DEPLOYED.read_text()):
        raise InputError(
            f"the deployment ({DEPLOYED}) is not SPEC with this --config/--set: give the ones "
            "it was deployed with (the autopilot starts from the live config)"
        )
    return spec, ServingConfig.from_spec(spec)


def run(args: argparse.Namespace) -> int:
    from autotune.autopilot import Policy
    from autotune.autopilot_loop import Row, run_autopilot
    from autotune.timeline import HEADER, format_row, plot_timeline, write_timeline
    from jizhi.commands import rollout

    spec, live = _check(args)
    policy = Policy(
        slo_p99_s=spec.slo.p99_s,
        max_shed_rate=spec.slo.max_shed_rate,
        risk=args.risk,
        saving=args.saving,
        confirm=args.confirm,
        cooldown=args.cooldown,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = spec.simulation.seed if args.seed is None else args.seed
    meta: dict[str, Any] = {"spec": spec.name, "interval_s": args.interval, "trials": args.trials}
    rows: list[Row] = []

    def on_row(row: Row) -> None:
        rows.append(row)
        print(format_row(row), flush=True)
        write_timeline(out / "timeline.json", rows, policy, {**meta, "stopped": None})

    print(
        f"autopilot on {spec.name}: SLO p99 {spec.slo.p99_s * 1e3:.0f} ms (at risk above "
        f"{policy.risk:.0%}), saving ≥ {policy.saving:.0%} over {policy.confirm} interval(s), "
        f"cooldown {policy.cooldown}; Ctrl-C stops"
    )
    print(HEADER)
    result = run_autopilot(
        spec,
        live,
        _io(args, spec, out, seed),
        policy,
        interval_s=args.interval,
        iterations=args.iterations,
        duration_s=args.duration,
        on_row=on_row,
    )
    stopped = "interrupted" if result.interrupted else "done"
    write_timeline(out / "timeline.json", result.rows, policy, {**meta, "stopped": stopped})
    plot_timeline(out / "timeline.png", result.rows, policy)
    (out / "live.yaml").write_text(result.live.to_yaml())
    actions = Counter(row.action.value for row in result.rows)
    errors = sum(row.error is not None for row in result.rows)
    print(
        f"{stopped} after {len(result.rows)} interval(s): "
        + ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))
        + f"; {errors} with an error. Live config: {out / 'live.yaml'}; rollouts: {rollout.HISTORY}"
    )
    print(f"timeline: {out / 'timeline.json'}, {out / 'timeline.png'}")
    return 130 if result.interrupted else 0
