"""`OUT/report.md` and its PNGs: what a tuning run found, and how it compares with the baselines.

Figures: convergence (best feasible value against evaluations, BO against each baseline), the
cost-vs-p99 Pareto front of every trial, the winner's latency distribution and per-stage
breakdown (the winner simulated again, every latency kept), and which knobs matter (permutation
importance of an extra-trees fit). Tables: the winner's knobs against Ray Serve's defaults and the
spec's baseline, and the baselines' best against BO's winner. Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from autotune.baselines import ray_defaults_config
from autotune.importance import knob_importance
from autotune.objective import TrialMetrics
from autotune.run import TuneResult
from autotune.tuner import Trial
from simulator import PipelineSpec, ServingConfig, apply_config, simulate
from simulator.spec import Objective

__all__ = ["compare", "headline", "write_report"]

_COLOURS = {"bo": "C0", "random": "C1", "sweep": "C2", "hill-climb": "C4", "ray-defaults": "C3"}


def headline(spec: PipelineSpec, m: TrialMetrics) -> tuple[str, float, str]:
    """(what the objective measures, its value, its formatted value) for a trial's metrics."""
    objective = spec.tuning.objective
    if objective is Objective.MAX_RATE:
        rate = m.sustainable_rps or 0.0
        return "sustainable rate", rate, f"{rate:.0f} req/s"
    if objective is Objective.MIN_P99:
        return "p99", m.p99_s, f"{m.p99_s * 1e3:.2f} ms"
    return "cost", m.cost_per_hour, f"${m.cost_per_hour:.3f}/h"


def compare(spec: PipelineSpec, ours: TrialMetrics, theirs: TrialMetrics) -> str:
    """'$0.264/h vs $0.432/h: 38.9% cheaper' — the saving in the objective's own terms."""
    what, a, text_a = headline(spec, ours)
    _, b, text_b = headline(spec, theirs)
    if b == 0:
        return f"{text_a} vs {text_b}"
    change = a / b - 1
    if spec.tuning.objective is Objective.MAX_RATE:
        more = "more" if change >= 0 else "less"
        return f"{text_a} vs {text_b}: {abs(change):.1%} {more} req/s"
    better, worse = {"cost": ("cheaper", "dearer"), "p99": ("lower p99", "higher p99")}[what]
    return f"{text_a} vs {text_b}: {abs(change):.1%} {better if change <= 0 else worse}"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(result: TuneResult, out_dir: Path) -> Path:
    """Write `out_dir/report.md` and its PNGs; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    runs = {"bo": result.trials, **result.baselines}
    lines = [f"# Tuning report: {spec.name}", ""]
    lines += _summary_lines(result)
    lines += ["", "## Convergence", "", f"![convergence]({_convergence(result, out_dir).name})", ""]
    lines += _baseline_table(result)
    lines += ["", "## Cost against p99", "", f"![pareto]({_pareto(result, out_dir).name})", ""]
    lines.append(
        "Every trial of every strategy on the search seed. Dots met every constraint; crosses "
        "missed at least one (p99 above the SLO line, or — below it — the shed limit or the "
        "quality budget of a cut-off). The black line is the Pareto front (no other trial is both "
        "cheaper and faster) of the trials that hold the shed limit and quality budget."
    )
    if result.winner is not None:
        lines += ["", "## The winner", ""]
        lines += _knob_table(spec, result.winner.config)
        latency, stages, report_lines = _winner_figures(result, out_dir)
        lines += ["", f"![latency]({latency.name})", "", f"![stages]({stages.name})", ""]
        lines += report_lines
    lines += ["", "## Which knobs matter", ""]
    lines += knob_importance(spec, [t for ts in runs.values() for t in ts], out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary_lines(result: TuneResult) -> list[str]:
    spec, winner = result.spec, result.winner
    objective = spec.tuning.objective.value
    counts = ", ".join(f"{name} {len(ts)}" for name, ts in result.baselines.items())
    lines = [
        f"Objective **{objective}**, SLO p99 ≤ {spec.slo.p99_s * 1e3:.0f} ms, shed ≤ "
        f"{spec.slo.max_shed_rate:.2%}, quality loss ≤ {spec.tuning.quality.max_loss:g}; "
        f"{len(result.trials)} BO evaluations" + (f" (baselines: {counts})." if counts else "."),
        "",
    ]
    if winner is None or winner.metrics is None:
        return [*lines, "**No config held every constraint on every fresh seed.**"]
    _, _, text = headline(spec, winner.metrics)
    lines.append(
        f"**Winner: trial {winner.trial}, {text}**, confirmed on {_rerun_count(result)} fresh "
        f"seeds (p99 on them: {', '.join(f'{p * 1e3:.1f}' for p in _rerun_p99(result))} ms)."
    )
    defaults = result.baselines.get("ray-defaults")
    if defaults and defaults[0].metrics is not None:
        d = defaults[0]
        assert d.metrics is not None
        verdict = (
            compare(spec, winner.metrics, d.metrics)
            if d.feasible
            else f"they miss the SLO (p99 {d.metrics.p99_s * 1e3:.0f} ms, "
            f"shed {d.metrics.shed_rate:.1%}) at ${d.metrics.cost_per_hour:.3f}/h"
        )
        lines.append(f"Against Ray Serve's defaults: {verdict}.")
    return lines


def _rerun_p99(result: TuneResult) -> list[float]:
    assert result.winner is not None
    return [t.metrics.p99_s for t in result.reruns if t.trial == result.winner.trial and t.metrics]


def _rerun_count(result: TuneResult) -> int:
    return len(_rerun_p99(result))


def _best_curve(trials: list[Trial]) -> np.ndarray:
    best, out = math.inf, []
    for t in trials:
        if t.feasible:
            best = min(best, t.value)
        out.append(best if math.isfinite(best) else np.nan)
    return np.array(out, dtype=float)


def _display(spec: PipelineSpec, values: np.ndarray) -> tuple[np.ndarray, str, bool]:
    """Objective values as plotted: (values, axis label, log scale)."""
    objective = spec.tuning.objective
    if objective is Objective.MAX_RATE:
        return -values, "best sustainable rate (req/s)", False
    if objective is Objective.MIN_P99:
        return values * 1e3, "best p99 (ms)", True
    return values, "best feasible cost ($/h)", True


def _convergence(result: TuneResult, out_dir: Path) -> Path:
    plt = _plt()
    spec = result.spec
    fig, ax = plt.subplots(figsize=(8, 4.6))
    runs = {"bo": result.trials, **{k: v for k, v in result.baselines.items() if len(v) > 1}}
    label, log = "", False
    for name, trials in runs.items():
        values, label, log = _display(spec, _best_curve(trials))
        x = np.arange(1, len(values) + 1)
        tag = "BO" if name == "bo" else name
        if np.all(np.isnan(values)):
            tag += " (nothing feasible)"
        elif name != "bo" and len(trials) < len(result.trials):
            tag += f" (stopped after {len(trials)})"
        ax.step(x, values, where="post", lw=2.4 if name == "bo" else 1.6,
                color=_COLOURS.get(name), label=tag)  # fmt: skip
    defaults = result.baselines.get("ray-defaults")
    if defaults and defaults[0].feasible:
        value, _, _ = _display(spec, np.array([defaults[0].value]))
        ax.axhline(value[0], color=_COLOURS["ray-defaults"], ls="--", label="Ray defaults")
    elif defaults:
        ax.plot([], [], " ", label="Ray defaults: miss the SLO")
    if result.winner is not None and result.winner_mean_value is not None:
        index = next(i for i, t in enumerate(result.trials) if t.trial == result.winner.trial)
        value, _, _ = _display(spec, np.array([result.winner_mean_value]))
        ax.plot(index + 1, value[0], "*", ms=16, color="gold", mec="black", zorder=5,
                label="winner (mean of fresh-seed re-checks)")  # fmt: skip
    if log:
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("evaluations")
    ax.set_ylabel(label)
    ax.set_title("Convergence: best config that holds every constraint so far")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return _save(fig, out_dir / "convergence.png")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _baseline_table(result: TuneResult) -> list[str]:
    spec = result.spec
    what = headline(spec, TrialMetrics(0, 0, 0, 0, 0, 0, 0, 0, 0))[0]
    lines = [
        f"| strategy | evaluations | feasible | best {what} | found at evaluation | BO winner vs it |",
        "|---|---:|---:|---:|---:|---|",
    ]
    winner = result.winner.metrics if result.winner is not None else None
    for name, trials in {"bo": result.trials, **result.baselines}.items():
        feasible = [t for t in trials if t.feasible]
        best = min(feasible, key=lambda t: t.value, default=None)
        if best is None or best.metrics is None:
            missed = "none held the constraints"
            if len(trials) == 1 and trials[0].metrics is not None:
                m = trials[0].metrics
                missed = f"misses them: p99 {m.p99_s * 1e3:.0f} ms at ${m.cost_per_hour:.3f}/h"
            lines.append(f"| {name} | {len(trials)} | 0 | {missed} | | |")
            continue
        at = next(i for i, t in enumerate(trials) if t is best) + 1
        versus = "" if name == "bo" or winner is None else compare(spec, winner, best.metrics)
        _, _, text = headline(spec, best.metrics)
        lines.append(f"| {name} | {len(trials)} | {len(feasible)} | {text} | {at} | {versus} |")
    lines.append("")
    lines.append(
        "All strategies ran through the same evaluator on the same seed (common random numbers); "
        "BO's winner is the best candidate that also held on fresh seeds."
    )
    return lines


def _pareto(result: TuneResult, out_dir: Path) -> Path:
    plt = _plt()
    spec = result.spec
    runs = {"bo": result.trials, **result.baselines}
    fig, ax = plt.subplots(figsize=(8, 5))
    holding: list[tuple[float, float]] = []
    for name, trials in runs.items():
        done = [t for t in trials if t.metrics is not None and t.metrics.completed > 0]
        cost = [t.metrics.cost_per_hour for t in done if t.metrics]
        p99 = [t.metrics.p99_s * 1e3 for t in done if t.metrics]
        colour = _COLOURS.get(name, "grey")
        ok = np.array([t.feasible for t in done], dtype=bool)
        cost_a, p99_a = np.array(cost), np.array(p99)
        ax.scatter(cost_a[ok], p99_a[ok], s=30, color=colour, alpha=0.8,
                   label=("BO" if name == "bo" else name))  # fmt: skip
        ax.scatter(cost_a[~ok], p99_a[~ok], s=26, marker="x", color=colour, alpha=0.6, lw=1)
        for t in done:
            m = t.metrics
            assert m is not None
            shed_ok = m.shed_rate <= spec.slo.max_shed_rate
            if shed_ok and m.quality_loss <= spec.tuning.quality.max_loss:
                holding.append((m.cost_per_hour, m.p99_s * 1e3))
    front = _front(holding)
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="black", lw=1.2, label="Pareto front")
        ax.scatter(xs, ys, s=60, facecolors="none", edgecolors="black", lw=1.2)
    ax.axhline(spec.slo.p99_s * 1e3, color="C3", ls="--", label="SLO p99")
    winner = result.winner
    if winner is not None and winner.metrics is not None:
        ax.plot(winner.metrics.cost_per_hour, winner.metrics.p99_s * 1e3, "*", ms=18,
                color="gold", mec="black", zorder=5, label="winner")  # fmt: skip
    ax.set_yscale("log")
    costs = [c for c, _ in holding] or [1.0]
    if max(costs) / max(min(costs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("cost ($/h)")
    ax.set_ylabel("p99 end-to-end latency (ms)")
    ax.set_title("Cost against p99, every trial")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir / "pareto.png")


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (lower cost and lower p99 are better), by rising cost."""
    front: list[tuple[float, float]] = []
    for cost, p99 in sorted(points):
        if not front or p99 < front[-1][1]:
            front.append((cost, p99))
    return front


def _knob_table(spec: PipelineSpec, config: ServingConfig) -> list[str]:
    """Winner against Ray Serve's defaults and the spec's baseline: every tuned knob and every
    knob that differs, as each config runs it (a knob a config leaves out keeps the spec's)."""
    columns = [apply_config(spec, c) for c in (config, ray_defaults_config(spec))] + [spec]
    lines = ["| knob | winner | Ray Serve defaults | spec baseline |", "|---|---|---|---|"]
    for stage in spec.stages:
        for knob in ServingConfig.from_spec(spec).knobs()[stage.name]:
            values = [getattr(c.stage(stage.name), knob) for c in columns]
            if len({str(v) for v in values}) > 1 or f"{stage.name}.{knob}" in spec.tuning.knobs:
                cells = " | ".join(_fmt(v) for v in values)
                lines.append(f"| {stage.name}.{knob} | {cells} |")
    return lines


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, Enum):
        return str(value.value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _winner_figures(result: TuneResult, out_dir: Path) -> tuple[Path, Path, list[str]]:
    """Simulate the winner again (fresh seed, every latency kept): distribution and stages."""
    plt = _plt()
    spec, winner = result.spec, result.winner
    assert winner is not None
    seed = winner.seed + 7_919
    report = simulate(apply_config(spec, winner.config), seed=seed, keep_samples=True)
    samples = np.asarray(report.latency_samples or [0.0]) * 1e3
    slo = spec.slo.p99_s * 1e3
    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.hist(samples, bins=80, color="C0", alpha=0.7)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("requests")
    cdf = ax.twinx()
    ordered = np.sort(samples)
    cdf.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), color="black", lw=1.2)
    cdf.set_ylabel("fraction of requests (CDF)")
    cdf.set_ylim(0, 1.02)
    marks = [(report.latency.p50_s * 1e3, "p50", "C2"), (report.latency.p99_s * 1e3, "p99", "C1")]
    for x, name, colour in [*marks, (slo, "SLO", "C3")]:
        ax.axvline(x, color=colour, ls="--" if name == "SLO" else "-", lw=1.5,
                   label=f"{name} {x:.1f} ms")  # fmt: skip
    cdf.plot([], [], color="black", lw=1.2, label="CDF (right axis)")
    handles = ax.get_legend_handles_labels()[0] + cdf.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left")
    ax.set_xlim(0, max(slo, float(ordered[-1])) * 1.05)
    ax.set_title(f"Winner's latency, {report.requests} requests on fresh seed {seed}")
    fig.tight_layout()
    latency = _save(fig, out_dir / "latency.png")

    fig, ax = plt.subplots(figsize=(8, 3.0))
    left = 0.0
    for k, s in enumerate(report.stages):
        wait, run = s.queue_wait.mean_s * 1e3, (s.latency.mean_s - s.queue_wait.mean_s) * 1e3
        ax.barh(0, wait, left=left, color=f"C{k}", alpha=0.45, edgecolor="white")
        ax.barh(0, run, left=left + wait, color=f"C{k}", edgecolor="white",
                label=f"{s.name}: {wait + run:.2f} ms ({wait:.2f} waiting)")  # fmt: skip
        left += wait + run
    overhead = max(report.latency.mean_s * 1e3 - left, 0.0)
    ax.barh(0, overhead, left=left, color="lightgrey", edgecolor="white",
            label=f"proxy and hops: {overhead:.2f} ms")  # fmt: skip
    ax.set_ylim(-0.5, 1.4)
    ax.set_yticks([])
    ax.set_xlabel(
        "mean time per request (ms): pale = waiting (queue, batch forming), solid = running"
    )
    ax.set_title(f"Where a request's {report.latency.mean_s * 1e3:.1f} ms go, stage by stage")
    ax.legend(loc="upper center", fontsize=8, ncol=2, frameon=False)
    fig.tight_layout()
    stages = _save(fig, out_dir / "stages.png")

    lines = [
        f"Simulated again with {report.requests} requests on seed {seed}: p50 "
        f"{report.latency.p50_s * 1e3:.2f} ms, p99 {report.latency.p99_s * 1e3:.2f} ms, "
        f"throughput {report.throughput_rps:.0f} req/s, shed {report.shed_rate:.2%}, "
        f"cost ${report.cost_per_hour:.3f}/h.",
        "",
        "| stage | replicas | utilisation | mean batch | wait p99 (ms) | p50 (ms) | p99 (ms) | $/h |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.stages:
        lines.append(
            f"| {s.name} | {s.replicas} | {s.utilisation:.0%} | {s.mean_batch_size:.1f} | "
            f"{s.queue_wait.p99_s * 1e3:.2f} | {s.latency.p50_s * 1e3:.2f} | "
            f"{s.latency.p99_s * 1e3:.2f} | {s.cost_per_hour:.3f} |"
        )
    return latency, stages, lines
