"""`jizhi simulate SPEC [--config FILE] [--set k=v ...] [--requests N] [--seed S] [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from jizhi.commands._args import add_overrides, non_negative_int, positive_int, whole_number

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a pipeline under a config and report latency, throughput and cost",
        description="Simulate SPEC under its baseline knobs, a --config file and --set overrides.",
    )
    parser.add_argument("spec", help="pipeline spec (YAML), e.g. examples/ctr.yaml")
    parser.add_argument("--config", help="serving config (YAML), e.g. a tuner's best.yaml")
    add_overrides(
        parser,
        "override a knob (ranker.max_batch_size=32) or a spec field (workload.rate_rps=3000)",
    )
    parser.add_argument("--requests", type=positive_int, help="measured requests (after warm-up)")
    parser.add_argument("--warmup", type=non_negative_int, help="warm-up requests, not measured")
    parser.add_argument("--seed", type=whole_number, help="random seed (same seed, same report)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulator import config_warnings, load_pipeline, simulate

    spec = load_pipeline(args.spec, args.config, args.overrides)
    for warning in config_warnings(spec):
        print(f"jizhi simulate: warning: {warning}", file=sys.stderr)
    progress = None if args.json or not sys.stderr.isatty() else _progress_bar()
    report = simulate(
        spec, requests=args.requests, warmup_requests=args.warmup, seed=args.seed, progress=progress
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render_table())
    return 0


def _progress_bar() -> Callable[[float], None]:
    from tqdm import tqdm

    bar = tqdm(total=100, desc="simulating", unit="%", leave=False, file=sys.stderr)

    def update(fraction: float) -> None:
        bar.n = round(100 * fraction)
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    return update
