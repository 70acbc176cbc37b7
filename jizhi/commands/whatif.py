"""`jizhi whatif SPEC --sweep PATH=LO:HI:N [--trials N] [--out DIR] [--workers W] [--set k=v ...]`.

Tunes the spec afresh at each value of one spec field and reports the capacity curve: the winner's
cost, replicas per stage and p99 against the swept value (`workload.rate_rps=500:4000:8` answers
"what does each load cost?"). `PATH=log:LO:HI:N` spaces the values geometrically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jizhi.commands._args import add_overrides, add_workers, positive_int
from simulator.errors import InputError

if TYPE_CHECKING:
    from autotune.run import TuneResult

__all__ = ["Sweep", "parse_sweep", "register"]


@dataclass(frozen=True)
class Sweep:
    """A spec field and the values it takes, in order."""

    path: str
    values: tuple[float, ...]

    def assignment(self, value: float) -> str:
        return f"{self.path}={_number(value)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def parse_sweep(text: str) -> Sweep:
    """`PATH=LO:HI:N` (N values, evenly spaced) or `PATH=log:LO:HI:N` (geometric)."""
    usage = f"--sweep {text!r}: expected PATH=LO:HI:N, e.g. workload.rate_rps=500:4000:8"
    path, sep, spec = text.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise InputError(usage)
    parts = spec.split(":")
    log = parts[0] == "log"
    if log:
        parts = parts[1:]
    if len(parts) != 3:
        raise InputError(usage)
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise InputError(usage) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"--sweep {text!r}: LO and HI must be finite numbers")
    if count < 2 or count > 100:
        raise InputError(f"--sweep {text!r}: N must be between 2 and 100 (got {count})")
    if low >= high:
        raise InputError(f"--sweep {text!r}: needs LO < HI (got {parts[0]} >= {parts[1]})")
    if log and low <= 0:
        raise InputError(f"--sweep {text!r}: log spacing needs LO > 0")
    if log:
        values = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    else:
        values = [low + (high - low) * i / (count - 1) for i in range(count)]
    integral = parts[0].lstrip("+-").isdigit() and parts[1].lstrip("+-").isdigit()
    return Sweep(path, tuple(float(round(v)) if integral else v for v in values))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "whatif",
        help="tune at each value of a spec field and plot the capacity curve",
        description="Tune SPEC at each value of one field (e.g. the request rate): cost, "
        "replicas and p99 of the winner against that value.",
    )
    parser.add_argument("spec", help="pipeline spec (YAML) with a tuning section")
    parser.add_argument(
        "--sweep",
        required=True,
        metavar="PATH=LO:HI:N",
        help="spec field and values, e.g. workload.rate_rps=500:4000:8 (or =log:500:4000:8)",
    )
    parser.add_argument(
        "--trials", type=positive_int, default=30, help="evaluations per value (default 30)"
    )
    add_overrides(parser, "override a spec field or baseline knob before sweeping")
    parser.add_argument("--out", default="runs/whatif", help="output folder (default runs/whatif)")
    add_workers(parser)
    parser.add_argument("--seed", type=int, help="random seed (default: the spec's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autotune.run import tune
    from simulator import load_pipeline, with_overrides

    sweep = parse_sweep(args.sweep)
    spec = load_pipeline(args.spec, overrides=args.overrides)
    # Check every value before the first (long) tuning run.
    specs = [with_overrides(spec, [sweep.assignment(v)]) for v in sweep.values]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    from tqdm import tqdm

    total = len(specs) * args.trials
    with tqdm(total=total, desc="whatif", unit="trial", file=sys.stderr) as bar:
        for i, (value, point_spec) in enumerate(zip(sweep.values, specs, strict=True)):
            label = f"{sweep.path.rsplit('.', 1)[-1]}={_number(value)}"

            def progress(
                strategy: str,
                done: int,
                planned: int,
                best: float | None,
                i: int = i,
                label: str = label,
            ) -> None:
                bar.n = i * args.trials + done
                bar.set_postfix_str(label + ("" if best is None else f" best {best:.4g}"))
                bar.refresh()

            result = tune(
                point_spec,
                trials=args.trials,
                out_dir=out / f"{i:02d}-{_number(value)}",
                workers=args.workers,
                seed=args.seed,
                progress=progress,
            )
            rows.append(_row(value, result))
    (out / "whatif.json").write_text(json.dumps({"sweep": sweep.path, "points": rows}, indent=2))
    print(render_table(sweep.path, rows))
    print(f"capacity curve: {plot_capacity(sweep.path, rows, out / 'capacity.png')}")
    print(f"data: {out / 'whatif.json'}")
    return 0 if all(r["feasible"] for r in rows) else 1


def _row(value: float, result: TuneResult) -> dict[str, Any]:
    winner = result.winner
    if winner is None or winner.metrics is None:
        return {
            "value": value,
            "feasible": False,
            "cost_per_hour": None,
            "p99_s": None,
            "replicas": {},
            "knobs": {},
        }
    reruns = [t.metrics for t in result.reruns if t.trial == winner.trial and t.metrics]
    p99 = max((m.p99_s for m in reruns), default=winner.metrics.p99_s)
    knobs = winner.config.knobs()
    return {
        "value": value,
        "feasible": True,
        "cost_per_hour": winner.metrics.cost_per_hour,
        "p99_s": p99,
        "replicas": {stage: k["replicas"] for stage, k in knobs.items()},
        "knobs": knobs,
    }


def render_table(path: str, rows: list[dict[str, Any]]) -> str:
    stages = list(next((r["replicas"] for r in rows if r["replicas"]), {}))
    name = path.rsplit(".", 1)[-1]
    head = f"{name:>12}{'$/h':>9}{'p99 ms':>9}" + "".join(f"{s[:10]:>11}" for s in stages)
    lines = [head + "   (replicas per stage; p99: worst fresh-seed re-check)"]
    for r in rows:
        if not r["feasible"]:
            lines.append(f"{_number(r['value']):>12}  no config held the SLO")
            continue
        lines.append(
            f"{_number(r['value']):>12}{r['cost_per_hour']:>9.3f}{r['p99_s'] * 1e3:>9.2f}"
            + "".join(f"{r['replicas'].get(s, '-'):>11}" for s in stages)
        )
    return "\n".join(lines)


def plot_capacity(path: str, rows: list[dict[str, Any]], file: Path) -> Path:
    """Cost (top) and replicas per stage (bottom) of the tuned winner against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = [r for r in rows if r["feasible"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot([r["value"] for r in ok], [r["cost_per_hour"] for r in ok], "o-", color="C0")
    for r in rows:
        if not r["feasible"]:
            top.axvline(r["value"], color="C3", alpha=0.3)
    top.set_ylabel("winner cost ($/h)")
    top.set_title(f"Capacity curve: the cheapest config that holds the SLO vs {path}")
    top.grid(alpha=0.3)
    stages = list(next((r["replicas"] for r in ok), {}))
    for k, stage in enumerate(stages):
        offset = 0.05 * (k - (len(stages) - 1) / 2)  # keep equal counts apart
        bottom.plot(
            [r["value"] for r in ok],
            [r["replicas"][stage] + offset for r in ok],
            "o-",
            label=stage,
        )
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("replicas")
    bottom.set_xlabel(path)
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return file
