"""The analysis half of `benchmarks/simulator_fidelity.py`: calibrate on some cases, predict all.

A config measured in several rounds is one case (`fidelity_rounds.merge_rounds`: its probes' requests
together); calibration reads each probe's own window of Ray's metrics.

1. Each calibration case (`CALIBRATION`: the three deployments apart, so each process's CPU is its
   own stage's) is calibrated with `autotune.calibration.calibrate`. A parameter derived from CPU
   per request takes its marginal cost over the cases (value = marginal + idle / rate: idle CPU
   spread over few requests inflates low-rate estimates); the others take the median.
2. A handle hop's CPU cannot be read from the CPU gauges (it is inside the deployments' own CPU,
   which varies by ±15 % between windows of one config), but the latency shows it: the features
   stage fused into the ranker (`HOP_PAIR`) drops one hop. `autotune.latency_fit.fit_hop` finds
   the hop's CPU at which the model loses, per hop, the latency the service lost; the hop's CPU
   comes out of the Ingress's measured cost (its caller), so three-deployment configs keep their
   total.
3. `node.speed` (the share of a core the pipeline gets on a shared node) and one `cv` for every
   piece of CPU work are fitted by `autotune.latency_fit` (what `jizhi calibrate` runs on one
   window) so that the calibration cases' median log error of p50 and of p99 is zero. CPU gauges
   show neither: only latency does. Speed and spread first, at the spec's hop; then the hop (2.);
   then speed and spread again.
4. Every case — calibration and held-out — is simulated with the calibrated spec, its own knobs
   and its offered rate, and compared with what the load client measured.
5. A measured p99 is itself uncertain: slow spells on a shared machine last a second or more, so
   a probe's slowest requests come in runs. `_p99_interval` resamples the probe in blocks of
   `BLOCK_S` seconds (a block bootstrap, seeded) for a 90 % interval; the summary counts the
   predictions that fall inside it.
6. The burst profile (`fidelity_bursts`): each probe's own send times replayed through the model,
   and the median latency of requests alone, with one, and with two or more sent in the 50 ms
   before them, measured against simulated — how each system treats a burst.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from fidelity_bursts import burst_profile, print_profiles
from fidelity_rounds import DRIFT_CHECK, drift, merge_rounds, quiet_probes

from autotune.calibration import Status, calibrate, calibrated_spec
from autotune.latency_fit import Target, fit_hop, fit_latency, handle_hops
from serving.monitoring.live import parse
from simulator import load_spec, simulate
from simulator.config import with_overrides
from simulator.load import validate_spec
from simulator.service import mean_seconds

__all__ = ["analyze"]

REQUESTS = 4000
WARMUP = 400
SUBWINDOW_S = 10.0
NOT_POOLED = ("workload.rate_rps",)  # each case is simulated at its own offered rate
# Calibration configs: the three deployments apart, with different batching, replicas and
# cut-off; and the features stage fused into the ranker, which differs from "base" by exactly one
# handle hop — the latency it loses is what one hop costs (a single configuration cannot tell a
# hop from the handler's own work).
CALIBRATION = ("base", "batch-32-wait-20ms", "ranker-2", "cutoff-2000")
INGRESS = "stages.ingress.service.base_s"
HOP_PAIR = ("base", "features-in-ranker")
BLOCK_S = 2.5  # the block bootstrap's block: longer than a slow spell, short against a probe
DRAWS = 1000


def _model_workload(model: str) -> list[str]:
    """The served model's shape replaces the spec's, as `jizhi load --model` does."""
    from serving.models import read_artifact

    meta = read_artifact(Path(model)).metadata
    return [
        f"workload.vocab_size={meta.vocab_size}",
        f"workload.sparse_features_per_row={len(meta.sparse_fields)}",
        f"workload.dense_features_per_row={len(meta.dense_features)}",
    ]


def _is_cpu_cost(path: str) -> bool:
    """A parameter calibration derives from CPU gauges per request (idle CPU inflates it)."""
    return path == "overhead.proxy.mean_s" or (
        path.startswith("stages.") and ".service." in path and path.endswith("base_s")
    )


def _marginal(values: list[float], rates: list[float]) -> float:
    """value = marginal + idle / rate across cases: the marginal CPU per request. Each case's
    estimate is CPU per request over a window, and a process's idle CPU (polling, health checks,
    metrics) spread over few requests inflates it at low rates. Median when rates do not vary."""
    if len(set(rates)) < 2:
        return statistics.median(values)
    slope, intercept = statistics.linear_regression([1.0 / r for r in rates], values)
    return intercept if intercept > 0 and slope >= 0 else statistics.median(values)


def _pooled_spec(
    spec_path: str, workload: list[str], calibration_cases: list[dict[str, Any]]
) -> tuple[Any, dict[str, float], dict[str, list[float]]]:
    """The spec with each parameter fitted over the calibration cases (see `_marginal`)."""
    base = with_overrides(load_spec(spec_path), workload)
    values: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    template = None
    for case in calibration_cases:
        spec = with_overrides(base, case["assignments"])
        snapshots = [parse(s["text"], s["at"]) for s in case["snapshots"]]
        fitted = calibrate(spec, snapshots, min_subwindow_s=SUBWINDOW_S)
        template = template or fitted
        rate = fitted.get("workload.rate_rps").value
        for p in fitted.parameters:
            if p.status is Status.FITTED and p.path not in NOT_POOLED and math.isfinite(p.value):
                values.setdefault(p.path, []).append(p.value)
                rates.setdefault(p.path, []).append(rate)
    assert template is not None
    pooled = {
        path: _marginal(vs, rates[path]) if _is_cpu_cost(path) else statistics.median(vs)
        for path, vs in values.items()
    }
    calibration = dataclasses.replace(
        template,
        parameters=tuple(
            dataclasses.replace(p, value=pooled[p.path]) if p.path in pooled else p
            for p in template.parameters
            if p.path not in NOT_POOLED
        ),
    )
    data = calibrated_spec(base, calibration)
    return validate_spec(data, source="pooled calibration"), pooled, values


def _case_spec(spec: Any, case: dict[str, Any], speed: float | None = None) -> Any:
    """The spec with the case's knobs, the rate the load client actually sent (a 25 s Poisson
    run at 4 req/s sends 3.3 to 4.8) and (given) the node's speed."""
    rate = case["load"].get("sent_rps") or case["rate"]
    assignments = [*case["assignments"], f"workload.rate_rps={rate}"]
    return with_overrides(spec, assignments + ([f"node.speed={speed}"] if speed else []))


def _simulate(spec: Any, case: dict[str, Any], speed: float) -> Any:
    return simulate(
        _case_spec(spec, case, speed), requests=REQUESTS, warmup_requests=WARMUP, seed=0
    )


def _parent(data: Any, path: str) -> tuple[Any, str]:
    """The container holding a dotted path's last part (`stages.NAME.…`: stages by name)."""
    *parents, leaf = path.split(".")
    for part in parents:
        data = next(s for s in data if s["name"] == part) if isinstance(data, list) else data[part]
    return data, leaf


def _with(spec: Any, patch: dict[str, Any]) -> Any:
    """The spec with dotted paths set to new values."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for path, value in patch.items():
        node, leaf = _parent(data, path)
        node[leaf] = value
    return validate_spec(data, source="fidelity")


def _value(spec: Any, path: str) -> float:
    node, leaf = _parent(spec.model_dump(mode="json", exclude_none=True), path)
    return float(node[leaf])


def _ingress_cpu(spec: Any) -> float:
    """The Ingress's CPU per request as its gauge counted it: its own work and the hops it calls
    (calibration took the spec's hops out)."""
    hop = mean_seconds(spec.overhead.hop, spec.workload.rows_per_request)
    return _value(spec, INGRESS) + handle_hops(spec) * hop


def _with_hop(spec: Any, seconds: float, cv: float) -> Any:
    """The spec with a hop of `seconds` of CPU, taken out of the Ingress (the caller) once per hop
    the calibration configs make: what the Ingress's CPU gauge counted is kept in total."""
    measured = _ingress_cpu(spec)
    hop = (
        {"model": "lognormal", "mean_s": seconds, "cv": cv}
        if seconds > 0
        else {"model": "deterministic", "seconds": 0.0}
    )
    own = max(measured - handle_hops(spec) * seconds, 1e-5)
    return _with(spec, {"overhead.hop": hop, INGRESS: own})


def _fit_hop_and_latency(
    spec: Any, cases: list[dict[str, Any]], calibration_cases: list[dict[str, Any]]
) -> tuple[Any, Any]:
    """Speed and spread at the spec's hop; the hop at them; speed and spread at the fitted hop."""

    def targets(spec: Any, chosen: list[dict[str, Any]], speed: float | None = None) -> list[Any]:
        return [
            Target(_case_spec(spec, c, speed), c["load"]["latency_s"]["p50"],
                   c["load"]["latency_s"]["p99"])
            for c in chosen
        ]  # fmt: skip

    first = fit_latency(targets(spec, calibration_cases), requests=REQUESTS,
                        warmup_requests=WARMUP, say=print)  # fmt: skip
    pair = [c for c in cases if c["config"] in HOP_PAIR]
    ceiling = _ingress_cpu(spec) / handle_hops(spec)  # the Ingress's whole CPU, hops and all
    spread = {f"{path}.cv": first.cv for path in first.cv_paths if path != "overhead.hop"}
    hop_fit = fit_hop(
        lambda h: targets(_with(_with_hop(spec, h, first.cv), spread), pair, first.speed),
        high_s=ceiling,
        requests=REQUESTS,
        warmup_requests=WARMUP,
        say=print,
    )
    fitted = _with_hop(spec, hop_fit.seconds, first.cv)
    fit = fit_latency(targets(fitted, calibration_cases), requests=REQUESTS,
                      warmup_requests=WARMUP, say=print)  # fmt: skip
    return hop_fit, fit


def _p99_interval(records: dict[str, list[Any]] | None, seed: int = 0) -> tuple[float, float]:
    """A 90 % interval for the probe's p99 (block bootstrap over `BLOCK_S`-second blocks of
    answered requests); NaNs without records (raw files of runs before they were kept)."""
    import numpy as np

    if not records or not records.get("latency_s"):
        return math.nan, math.nan
    ok = [o == "ok" for o in records["outcome"]]
    sent = np.asarray(records["scheduled_s"], dtype=float)[ok]
    latency = np.asarray(records["latency_s"], dtype=float)[ok]
    block = np.floor(sent / BLOCK_S).astype(int)
    groups = [latency[block == b] for b in np.unique(block)]
    rng = np.random.default_rng(seed)
    p99s = [
        np.percentile(
            np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]), 99
        )
        for _ in range(DRAWS)
    ]
    low, high = np.percentile(p99s, [5, 95])
    return float(low), float(high)


def _rel(predicted: float | None, measured: float | None) -> float:
    if predicted is None or measured is None or measured <= 0 or not math.isfinite(predicted):
        return math.nan
    return (predicted - measured) / measured


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def analyze(raw: dict[str, Any], out_dir: Path, *, all_probes: bool = False) -> dict[str, Any]:
    """Calibrate, predict, compare (module docstring); with `all_probes`, probes on a busy host
    count like the others."""
    probes, noisy = (raw["cases"], []) if all_probes else quiet_probes(raw["cases"])
    left_out = [c for c in raw["cases"] if not any(c is p for p in probes)]
    if left_out:
        print(f"left out {len(left_out)} probe(s) on a busy host (their config and rate measured "
              "on a quiet one as well): " + ", ".join(
                  f"{c['config']} at {c['rate']:g} req/s ({c['steal']:.0%})" for c in left_out))  # fmt: skip
    if noisy:
        print(f"only on a busy host: {', '.join(noisy)} (kept, flagged)")
    cases = merge_rounds(probes)  # one case per config and rate
    chosen = set(CALIBRATION) | {HOP_PAIR[1]}
    # Calibration reads each probe's own window (a round's Ray counters are its own).
    calibration_cases = [c for c in probes if c["config"] in CALIBRATION]
    workload = _model_workload(raw["model"])
    spec, pooled, values = _pooled_spec(raw["spec"], workload, calibration_cases)
    print(
        f"\ncalibrated on {len({(c['config'], c['rate']) for c in calibration_cases})} cases "
        f"({len(calibration_cases)} probes: {', '.join(CALIBRATION)}), the hop on "
        f"{' vs '.join(HOP_PAIR)}; held out: {', '.join(sorted({c['config'] for c in cases} - chosen - {DRIFT_CHECK}))}"
    )
    for path, vs in sorted(values.items()):
        spread = f" (per case {min(vs):.4g}…{max(vs):.4g})" if len(vs) > 1 else ""
        print(f"  {path} = {pooled[path]:.4g}{spread}")
    hop_fit, fit = _fit_hop_and_latency(spec, cases, calibration_cases)
    hop, speed, cv = hop_fit.seconds, fit.speed, fit.cv
    spec = _with_hop(spec, hop, cv)
    spec = _with(spec, {f"{path}.cv": cv for path in fit.cv_paths})
    own = _value(spec, INGRESS)
    print(f"  overhead.hop = {hop * 1e3:.2f} ms of CPU per hop (fitted to {' vs '.join(HOP_PAIR)}'s"
          f" p50); the Ingress's own work {own * 1e3:.2f} ms")  # fmt: skip
    print(f"  node.speed = {speed:.3f} (fitted to the calibration cases' p50)")
    print(f"  cv of every piece of CPU work = {cv:.2f} (fitted to the calibration cases' p99)")
    print(*(f"  note: {n}" for n in (*fit.notes, *filter(None, [hop_fit.note]))), sep="\n")
    rows = []
    bursts = []
    for case in cases:
        report = _simulate(spec, case, speed)
        latency = case["load"]["latency_s"]
        measured = {
            "p50": latency["p50"],
            "p99": latency["p99"],
            "rps": case["load"]["goodput_rps"],
        }
        predicted = {
            "p50": report.latency.p50_s, "p99": report.latency.p99_s, "rps": report.throughput_rps,
        }  # fmt: skip
        low, high = _p99_interval(case["load"].get("records"))
        rows.append({
            "config": case["config"], "rate": case["rate"],
            "set": _set_of(case["config"], chosen),
            "measured": measured, "predicted": predicted,
            "error": {k: _rel(predicted[k], measured[k]) for k in measured},
            "p99_interval": [low, high],
            "p99_inside": bool(low <= predicted["p99"] <= high) if math.isfinite(low) else None,
        })  # fmt: skip
        if case["load"].get("records"):
            profile = burst_profile(_case_spec(spec, case, speed), case["load"]["records"],
                                    case["load"].get("sent_rps") or case["rate"])  # fmt: skip
            rows[-1]["bursts"] = profile
            bursts.append((case["config"], case["rate"], profile))
    _print(rows)
    busy = [f"{c['config']} at {c['rate']:g} req/s ({c['steal']:.0%})" for c in cases
            if c.get("busy_host")]  # fmt: skip
    if busy:
        print(f"probes on a busy host (the hypervisor took CPU time): {', '.join(busy)}")
    if bursts:
        print_profiles(bursts)
    moved = drift(rows, probes)
    summary = _summary(rows)
    for name, s in summary.items():
        print(f"{name}: " + ", ".join(f"{k} {v:+.2f}" if "rank" in k else f"{k} {v:.1%}"
                                     for k, v in s.items()))  # fmt: skip
    result = {
        "calibrated": {**pooled, "overhead.hop": hop, "ingress_own": own, "node.speed": speed,
                       "cv": cv, "hop_fit_slope": hop_fit.slope},
        "cases": rows,
        "summary": summary,
        "drift": moved,
    }  # fmt: skip
    (out_dir / "fidelity.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out_dir / "fidelity.png")
    print(f"wrote {out_dir / 'fidelity.json'} and {out_dir / 'fidelity.png'}")
    return result


def _set_of(config: str, chosen: set[str]) -> str:
    if config == DRIFT_CHECK:
        return "drift check"
    return "calibration" if config in chosen else "held-out"


def _print(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'case':<24}{'rate':>6}  {'set':<12}" + "".join(
        f"{h:>24}" for h in ("p50 ms pred/meas (err)", "p99 ms pred/meas (err)", "req/s pred/meas (err)"))
        + f"{'p99 90% interval':>20}")  # fmt: skip
    for r in rows:
        cells = []
        for k, scale in (("p50", 1e3), ("p99", 1e3), ("rps", 1.0)):
            p, m, e = r["predicted"][k], r["measured"][k], r["error"][k]
            m_text = "n/a" if m is None else f"{m * scale:.1f}"
            cells.append(f"{p * scale:.1f}/{m_text} ({e:+.0%})".rjust(24))
        low, high = r["p99_interval"]
        inside = {True: "in", False: "out", None: ""}[r["p99_inside"]]
        cells.append(f"{low * 1e3:.0f}..{high * 1e3:.0f} {inside}".rjust(20))
        print(f"{r['config']:<24}{r['rate']:>6.1f}  {r['set']:<12}" + "".join(cells))


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("calibration", "held-out", "all"):
        chosen = [
            r for r in rows if r["set"] == name or (name == "all" and r["set"] != "drift check")
        ]
        s: dict[str, float] = {}
        for k in ("p50", "p99", "rps"):
            errors = [abs(r["error"][k]) for r in chosen if math.isfinite(r["error"][k])]
            s[f"median |error| {k}"] = statistics.median(errors) if errors else math.nan
            s[f"worst |error| {k}"] = max(errors) if errors else math.nan
        judged = [r for r in chosen if r["p99_inside"] is not None]
        if judged:  # how much of the p99 error the measurement's own spread explains
            s["p99 predictions inside the measured 90% interval"] = sum(
                r["p99_inside"] for r in judged
            ) / len(judged)
            s["median half-width of the p99 interval"] = statistics.median(
                (r["p99_interval"][1] - r["p99_interval"][0]) / 2 / r["measured"]["p99"]
                for r in judged
            )
        for k in ("p50", "p99"):
            s[f"rank correlation {k}"] = _spearman(
                [r["predicted"][k] for r in chosen],
                [r["measured"][k] if r["measured"][k] is not None else math.nan for r in chosen],
            )
        out[name] = s
    return out


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, k in zip(axes, ("p50", "p99"), strict=True):
        for group, marker in (("calibration", "o"), ("held-out", "^")):
            chosen = [r for r in rows if r["set"] == group and r["measured"][k]]
            ax.scatter([r["measured"][k] * 1e3 for r in chosen],
                       [r["predicted"][k] * 1e3 for r in chosen], marker=marker, label=group)  # fmt: skip
        values = [v for r in rows for v in (r["measured"][k], r["predicted"][k]) if v]
        lo, hi = min(values) * 1e3 * 0.7, max(values) * 1e3 * 1.4
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="predicted = measured")
        ax.set(xscale="log", yscale="log", xlabel=f"measured {k} (ms)", ylabel=f"predicted {k} (ms)",
               title=f"{k}: calibrated simulator vs the real service")  # fmt: skip
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
