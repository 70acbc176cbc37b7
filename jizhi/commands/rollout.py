"""`jizhi rollout SPEC --config NEW --model DIR`: apply a config to the running deployment in
place, verify it on live traffic against the old one and the SLO, roll back on regression."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jizhi.commands._args import positive_float
from jizhi.commands.serve import DEPLOYED, app_arguments
from simulator.errors import InputError

if TYPE_CHECKING:
    from serving.monitoring.live import LiveStats, Snapshot
    from serving.rollout import RolloutRecord
    from simulator import PipelineSpec

__all__ = ["HISTORY", "live_measure", "live_snapshot", "register", "roll_out"]

HISTORY = Path(".jizhi") / "rollouts.jsonl"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "rollout",
        help="apply a config to the running deployment, verify it live, roll back on regression",
        description=(
            "Measure the live config for --window seconds, apply NEW in place, measure again and "
            "keep it only if it holds the SLO (or the old config did not either) and its p99 is "
            "no worse than the old one's by more than --tolerance; otherwise restore the old "
            f"config. Every rollout is appended to {HISTORY} and counted by jizhi's exporter."
        ),
    )
    parser.add_argument("spec", help="pipeline spec (YAML): its SLO is the bar")
    app_arguments(parser)
    parser.add_argument(
        "--window", type=positive_float, default=30.0, help="seconds measured before and after"
    )
    parser.add_argument(
        "--settle",
        type=positive_float,
        default=6.0,
        help="seconds between the new config running and its window (metrics lag ~2 s)",
    )
    parser.add_argument(
        "--tolerance",
        type=positive_float,
        default=0.2,
        help="how much worse (relative) the new p99 may be than the old one (default 0.2)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--metrics", help="Ray's metrics endpoint (default: the local head's)")
    source.add_argument("--prometheus", help="read the live metrics from this Prometheus")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for RUNNING")
    parser.set_defaults(func=run)


def live_snapshot(metrics: str | None, prometheus: str | None) -> Callable[[], Snapshot]:
    """A reader of one snapshot of the live metrics: from Prometheus when given, else scraped
    from Ray's metrics endpoint (`metrics`, default the local head's)."""
    from serving import cluster
    from serving.monitoring import live

    url = metrics or f"http://127.0.0.1:{cluster.METRICS_PORT}/metrics"

    def snapshot() -> Snapshot:
        return live.from_prometheus(prometheus) if prometheus else live.scrape(url)

    return snapshot


def live_measure(snapshot: Callable[[], Snapshot]) -> Callable[[float], LiveStats]:
    """Measure the application over `seconds` from now."""
    from serving.deploy import APP_NAME
    from serving.monitoring import live

    def measure(seconds: float) -> LiveStats:
        first = snapshot()
        time.sleep(seconds)
        return live.summarize(live.Window(first, snapshot()), APP_NAME)

    return measure


def roll_out(
    spec: PipelineSpec,
    new_config: dict[str, Any],
    old_config: dict[str, Any],
    *,
    predicted: dict[str, float],
    measure: Callable[[float], LiveStats],
    window_s: float,
    settle_s: float,
    tolerance: float,
    timeout_s: float,
    before: LiveStats | None = None,
    say: Callable[[str], None] = print,
) -> RolloutRecord:
    """Roll `new_config` out over the deployed `old_config` (`serving.rollout.rollout`: verify
    live, keep or restore), record every deploy and the outcome for jizhi's exporter, and append
    the rollout to `HISTORY`. What `jizhi rollout` and `jizhi autopilot` both do; `before`: the
    live figures the caller just measured (else measured here for `window_s`)."""
    from jizhi.commands.serve import apply_serve_config
    from serving.monitoring.exporter import read_state, record_rollout
    from serving.rollout import Thresholds, rollout

    old_predicted = None
    try:
        live_state = read_state()
    except ValueError as exc:
        say(f"warning: {exc}")
    else:
        if live_state.predicted_p50_s is not None and live_state.predicted_p99_s is not None:
            old_predicted = {
                "p50_s": live_state.predicted_p50_s,
                "p99_s": live_state.predicted_p99_s,
                "cost_per_hour": live_state.predicted_cost_per_hour or 0.0,
                "slo_p99_s": live_state.slo_p99_s or spec.slo.p99_s,
            }

    def apply(config: dict[str, Any]) -> None:
        chosen = predicted if config is new_config else old_predicted
        apply_serve_config(config, chosen, timeout_s)

    record = rollout(
        new_config,
        old_config,
        apply=apply,
        measure=measure,
        limits=Thresholds(
            slo_p99_s=spec.slo.p99_s, max_shed_rate=spec.slo.max_shed_rate, tolerance=tolerance
        ),
        window_s=window_s,
        settle_s=settle_s,
        predicted=predicted,
        before=before,
        say=say,
    )
    generation = 0
    try:
        record_rollout(record.outcome)
        generation = read_state().generation
    except (OSError, ValueError) as exc:
        say(f"warning: could not record the rollout for jizhi's exporter: {exc}")
    HISTORY.parent.mkdir(exist_ok=True)
    with HISTORY.open("a") as out:
        out.write(json.dumps({**record.to_json(), "generation": generation}) + "\n")
    return record


def run(args: argparse.Namespace) -> int:
    import yaml

    from jizhi.commands.serve import build_serve_config, predict
    from serving import cluster

    if not DEPLOYED.is_file() or not cluster.head_running():
        raise InputError(
            f"nothing is deployed ({DEPLOYED} or the Ray head is missing): run `jizhi serve` first"
        )
    old_config = yaml.safe_load(DEPLOYED.read_text())
    spec, new_config = build_serve_config(args)
    if new_config == old_config:
        print("the new config is the deployed one: nothing to roll out")
        return 0
    predicted = predict(spec)
    print(
        f"predicted for the new config: p50 {predicted['p50_s'] * 1e3:.1f} ms, "
        f"p99 {predicted['p99_s'] * 1e3:.1f} ms, ${predicted['cost_per_hour']:.2f}/h"
    )
    record = roll_out(
        spec,
        new_config,
        old_config,
        predicted=predicted,
        measure=live_measure(live_snapshot(args.metrics, args.prometheus)),
        window_s=args.window,
        settle_s=args.settle,
        tolerance=args.tolerance,
        timeout_s=args.timeout,
    )
    print(f"rollout {record.outcome.value}: {'; '.join(record.reasons)} (recorded in {HISTORY})")
    return 0 if record.outcome.value == "applied" else 1
