"""Tuning efficiency: how many evaluations BO and the baselines need to find the grid optimum.

The example's space (examples/ctr.yaml, min_cost) is discretised to a grid of 1,920 configs (`GRID`:
8 knobs on 2–5 values each; cache policy lru, no cut-off and max_ongoing_requests = batch ×
concurrent batches are held, as in the baseline spec). Every grid config is simulated once on the
spec's seed — the exhaustive search whose best feasible cost is the grid optimum — and the results
are cached in benchmarks/data/tuning_grid.json (each run re-simulates a few of them and stops
if the simulator no longer gives what the cache holds). Then BO (`GaussianProcessEngine`, the initial
design `jizhi tune` uses), random search and Model Analyzer's sweep and hill-climb run with 5
seeds each (the last two are deterministic: one run), and the script prints, as medians over
seeds, the evaluations each needs to come within 5% and 2% of the grid optimum's cost and the gap
left after 20, 40 and 60 evaluations; plus a PNG of the gap against evaluations.

Apples to apples: every strategy searches the same grid. The benchmark spec's knob ranges are the
grid's bounds, and `GridSpace.decode` snaps each proposed value to the nearest grid value (in log
where the knob is log-scaled), so BO's GP and random search propose in the continuous space as they
do in `jizhi tune`, while every evaluation is a lookup of one grid config — the same numbers the
exhaustive search saw. Every proposal counts as an evaluation, even one that snaps onto a config
already seen (what a real run would pay). The sweep and hill-climb axes (replicas 1..4, batch
2..32 in powers of two) are grid values already.

    python benchmarks/tuning_efficiency.py                 # uses the cached grid
    python benchmarks/tuning_efficiency.py --rebuild --workers 2   # re-simulates the grid
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune.baselines import HillClimbEngine, SweepEngine  # noqa: E402
from autotune.evaluate import EvalTask, Outcome, SimulatorEvaluator, evaluate_task  # noqa: E402
from autotune.objective import TrialMetrics  # noqa: E402
from autotune.record import fingerprint  # noqa: E402
from autotune.run import initial_design, make_engine, run_strategy  # noqa: E402
from autotune.space import SearchSpace  # noqa: E402
from autotune.tuner import GaussianProcessEngine, RandomEngine, SearchEngine, Tuner  # noqa: E402
from simulator import PipelineSpec, ServingConfig, load_spec  # noqa: E402
from simulator.load import validate_spec  # noqa: E402

CTR = ROOT / "examples" / "ctr.yaml"
CACHE = ROOT / "benchmarks" / "data" / "tuning_grid.json"
REBUILD = "python benchmarks/tuning_efficiency.py --rebuild --workers 2"
SPOT_CHECKS = 4  # grid configs re-simulated on every run, against the cache

GRID: dict[str, list[Any]] = {
    "ingress.replicas": [1, 2],
    "features.replicas": [1, 2, 3],
    "features.max_concurrent_batches": [1, 4],
    "features.cache_capacity": [5000, 100000],
    "ranker.replicas": [1, 2, 3, 4],
    "ranker.max_batch_size": [2, 4, 8, 16, 32],
    "ranker.batch_wait_timeout_s": [0.002, 0.01],
    "ranker.device": ["cpu", "gpu"],
}
BUDGETS = (20, 40, 60)
TOLERANCES = (0.05, 0.02)
STRATEGIES = ("bo", "gp-penalty", "random", "sweep", "hill-climb")
_METRIC_FIELDS = ("p50_s", "p99_s", "mean_s", "throughput_rps", "offered_rps", "shed_rate",
                  "cost_per_hour", "quality_loss", "completed")  # fmt: skip


def bench_spec() -> PipelineSpec:
    """examples/ctr.yaml with the grid's knobs as its tuning knobs (ranges = grid bounds)."""
    data = load_spec(CTR).model_dump(mode="json")
    original = data["tuning"]["knobs"]
    knobs: dict[str, Any] = {}
    for path, values in GRID.items():
        if isinstance(values[0], str):
            knobs[path] = {"choices": values}
        else:
            knobs[path] = {"low": min(values), "high": max(values), "log": original[path]["log"]}
    data["tuning"]["knobs"] = knobs
    ranker = next(s for s in data["stages"] if s["name"] == "ranker")
    ranker["max_ongoing_requests"] = 1  # raised by the space to exactly batch × concurrent batches
    return validate_spec(data, source="benchmark spec", base_dir=CTR.parent)


def _nearest(values: Sequence[Any], value: Any, log: bool) -> Any:
    if isinstance(values[0], str):
        return value
    key = math.log if log else float
    return min(values, key=lambda v: abs(key(v) - key(max(value, 1e-12))))


class GridSpace(SearchSpace):
    """The benchmark space: decoding snaps every value to the nearest grid value."""

    def decode(self, point: Sequence[Any]) -> ServingConfig:
        snapped = [
            _nearest(GRID[d.name], v, d.log) for d, v in zip(self.dimensions, point, strict=True)
        ]
        return super().decode(snapped)

    def key(self, config: ServingConfig) -> tuple[Any, ...]:
        knobs = config.knobs()
        return tuple(knobs[p.split(".")[0]][p.split(".")[1]] for p in self.names)

    def grid_configs(self) -> Iterator[ServingConfig]:
        """Every grid config, in `itertools.product` order of `GRID` over `self.names`."""
        for combo in itertools.product(*(GRID[name] for name in self.names)):
            yield self.decode(list(combo))


class GridEvaluator:
    """An `Evaluator` that looks grid configs up in the cached exhaustive simulation."""

    def __init__(self, table: dict[tuple[Any, ...], TrialMetrics], space: GridSpace) -> None:
        self.table = table
        self.space = space

    def evaluate(self, tasks: Sequence[EvalTask]) -> Iterator[Outcome]:
        for task in tasks:
            yield Outcome(task.key, task.seed, self.table[self.space.key(task.config)], None, 0.0)

    def close(self) -> None:
        return None


def build_grid(space: GridSpace, workers: int) -> None:
    from tqdm import tqdm

    spec = space.spec
    configs = list(space.grid_configs())
    evaluator = SimulatorEvaluator(spec, workers=workers)
    rows: list[list[float] | None] = [None] * len(configs)
    started = time.perf_counter()
    tasks = [EvalTask(i, c, spec.simulation.seed) for i, c in enumerate(configs)]
    try:
        for outcome in tqdm(evaluator.evaluate(tasks), total=len(tasks), desc="grid", unit="sim"):
            if outcome.metrics is None:
                raise RuntimeError(f"grid config {outcome.key} failed: {outcome.error}")
            m = asdict(outcome.metrics)
            rows[outcome.key] = [float(f"{m[f]:.6g}") for f in _METRIC_FIELDS]
    finally:
        evaluator.close()
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "rebuild": REBUILD,
        "fingerprint": fingerprint(spec),
        "seed": spec.simulation.seed,
        "knobs": space.names,
        "grid": {name: GRID[name] for name in space.names},
        "fields": list(_METRIC_FIELDS),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    CACHE.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {CACHE} ({len(rows)} configs, {data['wall_s']} s)")


def load_grid(space: GridSpace) -> dict[tuple[Any, ...], TrialMetrics]:
    data = json.loads(CACHE.read_text())
    if data["knobs"] != space.names or data["grid"] != {n: GRID[n] for n in space.names}:
        raise SystemExit(f"{CACHE} holds another grid; rebuild it: {REBUILD}")
    table = {}
    for config, row in zip(space.grid_configs(), data["results"], strict=True):
        values = dict(zip(data["fields"], row, strict=True))
        values["completed"] = int(values["completed"])
        table[space.key(config)] = TrialMetrics(**values)
    _spot_check(space, table, changed=data["fingerprint"] != fingerprint(space.spec))
    return table


def _spot_check(
    space: GridSpace, table: dict[tuple[Any, ...], TrialMetrics], *, changed: bool
) -> None:
    """Re-simulate `SPOT_CHECKS` grid configs and stop unless they match the cache: the simulator
    may have changed since it was built even where the spec (its fingerprint) has not."""
    import random

    configs = random.Random(0).sample(list(space.grid_configs()), SPOT_CHECKS)
    for config in configs:
        fresh = evaluate_task(space.spec, EvalTask(0, config, space.spec.simulation.seed)).metrics
        cached = table[space.key(config)]
        if fresh is None or not math.isclose(fresh.p99_s, cached.p99_s, rel_tol=1e-4):
            raise SystemExit(f"{CACHE} no longer matches the simulator; rebuild it: {REBUILD}")
    since = "the spec changed since it was built, but " if changed else ""
    print(f"({CACHE.name}: {since}{SPOT_CHECKS} configs re-simulated match it)")


def _engine(name: str, space: GridSpace, seed: int, budget: int) -> SearchEngine:
    if name == "bo":
        return make_engine(space, seed, budget)
    if name == "gp-penalty":
        return GaussianProcessEngine(space, seed, initial_points=initial_design(budget))
    if name == "random":
        return RandomEngine(space, seed)
    return SweepEngine(space) if name == "sweep" else HillClimbEngine(space)


def best_curve(values: list[float], feasible: list[bool], budget: int) -> list[float]:
    """Best feasible value after 1..budget evaluations (inf before the first feasible one);
    a strategy that stopped early keeps its last best."""
    out, best = [], math.inf
    for i in range(budget):
        if i < len(values) and feasible[i]:
            best = min(best, values[i])
        out.append(best)
    return out


def evaluations_to(curve: list[float], target: float) -> int | None:
    """First evaluation (1-based) whose best is within `target`, else None."""
    k = bisect.bisect_left([-v for v in curve], -target)
    return k + 1 if k < len(curve) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="re-simulate the grid cache")
    parser.add_argument("--workers", type=int, default=2, help="processes for --rebuild")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=max(BUDGETS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "tuning_efficiency.png"))
    args = parser.parse_args()

    space = GridSpace(bench_spec())
    if args.rebuild or not CACHE.exists():
        build_grid(space, args.workers)
    table = load_grid(space)
    evaluator = GridEvaluator(table, space)
    probe = Tuner(space.spec, RandomEngine(space, 0), space)
    judged = [probe.judge(Outcome(0, 0, m, None, 0.0)) for m in table.values()]
    optimum = min(v for v, ok in judged if ok)
    n_opt = sum(1 for v, ok in judged if ok and v <= optimum * (1 + min(TOLERANCES)))
    print(
        f"grid: {len(table)} configs, {sum(ok for _, ok in judged)} feasible; optimum "
        f"${optimum:.3f}/h ({n_opt} configs within {min(TOLERANCES):.0%} of it)"
    )
    curves: dict[str, list[list[float]]] = {}
    lengths: dict[str, int] = {}
    started = time.perf_counter()
    for name in args.strategies.split(","):
        seeds = range(1) if name in ("sweep", "hill-climb") else range(args.seeds)
        for seed in seeds:
            tuner = Tuner(space.spec, _engine(name, space, seed, args.budget), space, name)
            trials = run_strategy(tuner, evaluator, args.budget, space.spec.simulation.seed, 1)
            curve = best_curve([t.value for t in trials], [t.feasible for t in trials], args.budget)
            curves.setdefault(name, []).append(curve)
            lengths[name] = len(trials)
            print(f"  {name}, seed {seed}: {len(trials)} evaluations, best "
                  f"${curve[-1]:.3f}/h ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    print(f"strategies ran in {time.perf_counter() - started:.0f} s\n")
    print(render(curves, optimum))
    print(f"\nplot: {plot(curves, optimum, Path(args.plot), lengths)}")


def _median(values: list[float]) -> float:
    return statistics.median(values)


def render(curves: dict[str, list[list[float]]], optimum: float) -> str:
    head = "".join(f"{f'evals to {t:.0%}':>14}" for t in TOLERANCES)
    head += "".join(f"{f'gap @{b}':>10}" for b in BUDGETS)
    lines = [
        f"{'strategy':<12}{'runs':>5}{head}   evals to 5%, each run",
    ]
    for name, runs in curves.items():
        row = f"{name:<12}{len(runs):>5}"
        needed = [evaluations_to(c, optimum * (1 + TOLERANCES[0])) for c in runs]
        for tol in TOLERANCES:
            counts = [evaluations_to(c, optimum * (1 + tol)) for c in runs]
            value = _median([math.inf if n is None else n for n in counts])
            row += f"{'-' if math.isinf(value) else f'{value:g}':>14}"
        for budget in BUDGETS:
            gaps = [c[budget - 1] / optimum - 1 if budget <= len(c) else math.inf for c in runs]
            gap = _median(gaps)
            row += f"{'none' if math.isinf(gap) else f'{gap:.1%}':>10}"
        lines.append(row + "   " + " ".join("-" if n is None else str(n) for n in needed))
    lines.append(
        f"(medians over runs; '-' = not within reach in {len(next(iter(curves.values()))[0])} "
        "evaluations; gap = best feasible cost found / grid optimum - 1)"
    )
    return "\n".join(lines)


def plot(
    curves: dict[str, list[list[float]]], optimum: float, file: Path, lengths: dict[str, int]
) -> Path:
    """Gap to the grid optimum against evaluations: each run thin, the median bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.8))
    fig.subplots_adjust(right=0.98)
    top = 0.0
    for name, runs in curves.items():
        k = STRATEGIES.index(name) if name in STRATEGIES else len(STRATEGIES)
        gaps = np.array([[100 * (v / optimum - 1) for v in c] for c in runs])
        gaps[np.isinf(gaps)] = np.nan  # nothing feasible yet: no line
        x = np.arange(1, gaps.shape[1] + 1)
        for run in gaps if len(runs) > 1 else []:
            ax.step(x, run, where="post", color=f"C{k}", alpha=0.25, lw=0.8)
        median = np.array([statistics.median(col) if not np.isnan(col).sum() * 2 > len(col)
                           else np.nan for col in gaps.T])  # fmt: skip
        label = f"{name} (median of {len(runs)} seeds)"
        if len(runs) == 1:
            label = f"{name} (deterministic, {lengths.get(name, len(x))} evaluations)"
        ax.step(x, median, where="post", color=f"C{k}", lw=2.4, label=label)
        top = max(top, float(np.nanmax(gaps[:, 9:])) if np.isfinite(gaps[:, 9:]).any() else 0.0)
    for tol in TOLERANCES:
        ax.axhline(tol * 100, color="grey", ls=":", lw=1)
        ax.text(gaps.shape[1], tol * 100, f"{tol:.0%} ", va="bottom", ha="right", color="grey")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(-0.4, max(top, 10) * 1.5)
    ax.set_xlabel("evaluations (simulations)")
    ax.set_ylabel("gap to the grid optimum's cost (%)")
    ax.set_title(f"Finding the cheapest config that holds the SLO\n{GRID_SIZE}-config grid of "
                 f"examples/ctr.yaml, optimum ${optimum:.3f}/h")  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(file, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return file


GRID_SIZE = math.prod(len(v) for v in GRID.values())

if __name__ == "__main__":
    main()
