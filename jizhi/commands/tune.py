"""`jizhi tune SPEC [--trials N] [--objective O] [--set k=v ...] [--out DIR] [--compare] ...`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jizhi.commands._args import add_overrides, add_workers, positive_int

if TYPE_CHECKING:
    from autotune.run import Progress, TuneResult

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="find the cheapest config that holds the SLO (Bayesian optimisation on the simulator)",
        description="Tune the knobs named in the spec's tuning section on the simulator.",
    )
    parser.add_argument("spec", help="pipeline spec (YAML) with a tuning section")
    parser.add_argument("--trials", type=positive_int, default=60, help="evaluations (default 60)")
    parser.add_argument(
        "--objective",
        choices=["min_cost", "max_rate", "min_p99"],
        help="override the spec's tuning.objective",
    )
    add_overrides(parser, "override a spec field or baseline knob, e.g. workload.rate_rps=3000")
    parser.add_argument("--out", default="runs/tune", help="output folder (default runs/tune)")
    add_workers(parser)
    parser.add_argument("--ray", metavar="ADDRESS", help="run trials as Ray tasks on this cluster")
    parser.add_argument("--seed", type=int, help="random seed (default: the spec's)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/trials.jsonl")
    parser.add_argument(
        "--compare", action="store_true", help="also run the baselines with the same budget"
    )
    parser.add_argument("--no-report", action="store_true", help="skip OUT/report.md and plots")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autotune.run import tune
    from simulator import load_pipeline

    spec = load_pipeline(args.spec, overrides=args.overrides)
    if args.objective:
        from simulator.load import validate_spec

        data = spec.model_dump(mode="json")
        data["tuning"]["objective"] = args.objective
        spec = validate_spec(data, source="--objective")
    out = Path(args.out)
    progress, close = _progress()
    started = time.monotonic()
    try:
        result = tune(
            spec,
            trials=args.trials,
            out_dir=out,
            workers=args.workers,
            seed=args.seed,
            resume=args.resume,
            ray_address=args.ray,
            progress=progress,
        )
        if args.compare:
            from autotune.baselines import run_baselines

            result.baselines = run_baselines(
                spec,
                budget=args.trials,
                out_dir=out,
                workers=args.workers,
                seed=args.seed,
                ray_address=args.ray,
                progress=progress,
                resume=args.resume,
            )
    finally:
        close()
    duration_s = time.monotonic() - started
    print(summary(result))
    if not args.no_report:
        from autotune.report import write_report

        print(f"report: {write_report(result, out)}")
    if result.winner is not None:
        print(f"best config: {out / 'best.yaml'}")
    print(f"trials: {out / 'trials.jsonl'}")
    if result.winner is None:
        return 1
    _record(duration_s, len(result.trials))
    return 0


def _record(duration_s: float, trials: int) -> None:
    """Tell jizhi's exporter about the run; a state file that cannot be written only warns."""
    from serving.monitoring import exporter

    try:
        exporter.record_tuning(duration_s, trials)
    except (OSError, ValueError) as exc:
        print(f"warning: could not record the run in {exporter.STATE_FILE}: {exc}", file=sys.stderr)


def _progress() -> tuple[Progress, Callable[[], None]]:
    from tqdm import tqdm

    bars: dict[str, tqdm[Any]] = {}

    def update(strategy: str, done: int, planned: int, best: float | None) -> None:
        bar = bars.get(strategy)
        if bar is None:
            bar = tqdm(total=planned, desc=f"{strategy:<10}", unit="trial", file=sys.stderr)
            bars[strategy] = bar
        bar.n = done
        bar.set_postfix_str("best: none feasible yet" if best is None else f"best {best:.4g}")
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def summary(result: TuneResult) -> str:
    """The end-of-run table: the winner's knobs and predictions, and its savings."""
    from autotune.baselines import ray_defaults_trial
    from autotune.report import compare

    spec = result.spec
    if result.winner is None:
        return "no config held the SLO, shed limit and quality budget on every fresh seed"
    winner = result.winner
    tuned = {d.split(".")[0] for d in spec.tuning.knobs}
    lines = [f"winner (trial {winner.trial}), confirmed on fresh seeds:"]
    for stage, knobs in winner.config.knobs().items():
        if stage in tuned:
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in knobs.items() if v is not None)
            lines.append(f"  {stage:<10} {values}")
    reruns = [t.metrics for t in result.reruns if t.trial == winner.trial and t.metrics]
    m = winner.metrics
    assert m is not None
    p50 = sum(r.p50_s for r in reruns) / len(reruns) if reruns else m.p50_s
    p99 = sum(r.p99_s for r in reruns) / len(reruns) if reruns else m.p99_s
    lines.append(
        f"predicted: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms (SLO {spec.slo.p99_s * 1e3:.0f} ms), "
        f"throughput {m.throughput_rps:.0f} req/s, cost ${m.cost_per_hour:.3f}/h"
        + (f", sustains {m.sustainable_rps:.0f} req/s at the SLO" if m.sustainable_rps else "")
    )
    seed = result.trials[0].seed if result.trials else None
    defaults = result.baselines.get("ray-defaults") or [ray_defaults_trial(spec, seed)]
    ref = defaults[0]
    if ref.feasible and ref.metrics is not None:
        lines.append(f"vs Ray Serve defaults: {compare(spec, m, ref.metrics)}")
    elif ref.metrics is not None:
        lines.append(
            f"Ray Serve defaults miss the SLO (p99 {ref.metrics.p99_s * 1e3:.1f} ms, "
            f"shed {ref.metrics.shed_rate:.1%}) at ${ref.metrics.cost_per_hour:.3f}/h"
        )
    best_baseline = min(
        (
            (t.value, name, t.metrics)
            for name, ts in result.baselines.items()
            if name != "ray-defaults"
            for t in ts
            if t.feasible and t.metrics is not None
        ),
        default=None,
        key=lambda item: item[0],
    )
    if best_baseline is not None:
        _, name, metrics = best_baseline
        lines.append(f"vs best baseline ({name}): {compare(spec, m, metrics)}")
    elif result.baselines:
        lines.append("no baseline found a config that holds the constraints")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
