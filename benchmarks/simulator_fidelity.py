"""How well the calibrated simulator predicts the real service: predicted vs measured, per case.

One run deploys `CONFIGS` (batch size, batch wait, replicas, cache capacity, cut-off, the fused
shapes) one after another on a local Ray Serve (the example spec, one small model), drives each
with `jizhi load` at each rate in `RATES` (open-loop Poisson, from the scheduled send time), and
records, per probe, the client's latency percentiles, per-request records and goodput and
snapshots of Ray's metrics endpoint every `SNAPSHOT_S` seconds (about 40 minutes with 60 s per
case: a p99 needs a few hundred requests; written to `--raw`). After each deploy, `WARMUP_S`
seconds of load that is not measured warm the fresh replicas up (`FIRST_WARMUP_S` for the first
config: a freshly started node runs slow for a minute or two).

It measures in `--rounds` rounds (2 by default), forward then backward through `CONFIGS`, each
probe a round's share of `--probe-s`: this machine's speed drifts by a quarter or more within a
run, and measured once in a fixed order the configs late in the run looked faster than the early
ones (`fidelity_rounds`). With `--rounds 1` the base config is measured again at the end instead
(`base-again`, the drift check).

The analysis (`benchmarks/fidelity_analysis.py`; about 10 minutes) calibrates the spec with `jizhi
calibrate`'s fitting on the calibration cases only (`CALIBRATION`, plus one fused config that
identifies a handle hop's CPU), fits the share of a core the pipeline gets (`node.speed`) and the
spread of CPU work (`cv`) to the calibration cases' p50 and p99, simulates every case with the
calibrated spec at its offered rate, and prints per case predicted vs measured p50, p99 and
throughput with relative errors, the median and worst error on the calibration cases and on the
held-out ones, the Spearman rank correlation of predicted and measured p50 and p99, and each
probe's burst profile (its send times replayed through the model: the median latency of requests
alone and of those right behind others, measured against simulated); it writes a JSON and a PNG
(predicted against measured, log-log, with y = x).

Bounded: loopback only, `len(CONFIGS) × len(RATES)` probes of `--probe-s` seconds. The script
starts a loopback Ray head (as `jizhi serve` does) unless one answers and stops it if it started
it. Seeded: each probe's send times and payloads come from `--seed`.

Run:  .venv/bin/python benchmarks/simulator_fidelity.py                 (measure, then analyze)
      .venv/bin/python benchmarks/simulator_fidelity.py --analyze-only   (re-analyze out/fidelity/raw.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fidelity_rounds import DRIFT_CHECK, RECORD_KEYS  # noqa: E402

from jizhi.cli import main as jizhi  # noqa: E402
from serving import cluster  # noqa: E402

SPEC = ROOT / "examples" / "ctr.yaml"
BASE = (
    "ingress.replicas=1", "features.replicas=1", "ranker.replicas=1",
    "ranker.max_batch_size=8", "ranker.max_ongoing_requests=16", "ranker.batch_wait_timeout_s=0.005",
    "features.cache_capacity=20000",
)  # fmt: skip
# name → overrides on BASE. Calibration uses every other one (the even positions).
CONFIGS: dict[str, tuple[str, ...]] = {
    "base": (),
    "batch-1": ("ranker.max_batch_size=1",),
    "batch-32-wait-20ms": ("ranker.max_batch_size=32", "ranker.max_ongoing_requests=64",
                           "ranker.batch_wait_timeout_s=0.02"),
    "no-wait": ("ranker.batch_wait_timeout_s=0.0",),
    "ranker-2": ("ranker.replicas=2",),
    "no-cache": ("features.cache_capacity=0",),
    "cutoff-2000": ("features.cutoff_rank=2000",),
    "features-in-ranker": ("features.in_ranker=true",),
    "one-deployment": ("features.in_ranker=true", "ingress.in_ranker=true",
                       "ranker.max_ongoing_requests=64", "ranker.max_batch_size=32",
                       "ranker.batch_wait_timeout_s=0.002"),
    "ingress-2": ("ingress.replicas=2",),
}  # fmt: skip
RATES = (4.0, 10.0)
SNAPSHOT_S = 2.0
STEAL_WARN = 0.05  # a probe during which the hypervisor took more CPU than this is flagged
SETTLE_S = 6.0  # after a deploy: replicas up, and two metric reports of the new config
WARMUP_S = 8.0  # load not measured after each deploy: first calls into fresh replicas are slow
# After the head starts, the node is 30-50 % slower for a minute or two (measured: 20 s probes of
# the base config at 10 req/s gave p50 75, 63, then 48-51 ms): the first config warms that up too.
FIRST_WARMUP_S = 120.0


def say(message: str) -> None:
    print(message, flush=True)


def _wanted(text: str) -> str:
    keep = ("ray_serve_", "ray_jizhi_", "ray_component_cpu_percentage", "ray_node_cpu_")
    return "\n".join(
        line for line in text.splitlines() if line.startswith(keep) or line.startswith("# ")
    )


def _scrape() -> dict[str, Any]:
    import urllib.request

    url = f"http://127.0.0.1:{cluster.METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return {"at": time.time(), "text": _wanted(response.read().decode())}


def ensure_model(path: Path) -> Path:
    if not path.exists():
        say(f"training a small model into {path} ...")
        args = ["train", "--out", str(path), "--vocab-size", "20000", "--source-rows", "20000",
                "--target-rows", "5000", "--test-rows", "5000", "--no-compare", "--quiet",
                "--threads", "1"]  # fmt: skip
        assert jizhi(args) == 0
    return path


def _ticks() -> tuple[int, int]:
    """(ticks the hypervisor stole, all ticks) of the machine so far, from /proc/stat."""
    with Path("/proc/stat").open() as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return ticks[7], sum(ticks[:8])


def probe(model: Path, rate: float, seconds: float, seed: int, out: Path) -> dict[str, Any]:
    """One load run in a subprocess, with snapshots of the metrics endpoint while it runs and the
    share of the machine's CPU time the hypervisor stole meanwhile (a VM's `st`)."""
    command = [
        sys.executable, "-m", "jizhi.cli", "load", "http://127.0.0.1:8000", "--rate", str(rate),
        "--duration", str(seconds), "--model", str(model), "--seed", str(seed), "--binary",
        "--out", str(out),
    ]  # fmt: skip
    snapshots = [_scrape()]
    stolen, total = _ticks()
    load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while load.poll() is None:
        time.sleep(SNAPSHOT_S)
        snapshots.append(_scrape())
    time.sleep(SNAPSHOT_S + 0.5)  # the last report of the window
    snapshots.append(_scrape())
    if load.returncode != 0:
        raise RuntimeError(
            f"jizhi load failed: {load.stderr.read().decode()[-400:] if load.stderr else ''}"
        )
    stolen_after, total_after = _ticks()
    steal = (stolen_after - stolen) / max(total_after - total, 1)
    summary = json.loads(out.read_text())
    records = summary.pop("records", {})
    # Each request's send time, lateness, latency and outcome: the analysis's interval for the
    # p99, its burst profile, and a config's rounds joined into one case (`fidelity_rounds`).
    summary["records"] = {k: records.get(k, []) for k in RECORD_KEYS}
    return {
        "load": summary,
        "snapshots": snapshots,
        "steal": steal,
        "busy_host": steal > STEAL_WARN,
    }


def plan(rounds: int) -> list[tuple[int, str, tuple[str, ...]]]:
    """(round, config, overrides) in the order measured: forward, backward, forward, ... so that a
    drifting machine moves every config alike; one round ends with the drift check instead."""
    order = list(CONFIGS.items())
    if rounds == 1:
        return [(0, name, o) for name, o in [*order, (DRIFT_CHECK, CONFIGS["base"])]]
    return [(k, name, o) for k in range(rounds) for name, o in (order[::-1] if k % 2 else order)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_model(args.model)
    started_head = cluster.ensure_head(num_cpus=8)
    cases: list[dict[str, Any]] = []
    began = time.monotonic()
    probe_s = args.probe_s / args.rounds
    try:
        steps = plan(args.rounds)
        for c, (k, name, overrides) in enumerate(steps):
            assignments = [*BASE, *overrides]
            sets = [item for a in assignments for item in ("--set", a)]
            say(f"[{c + 1}/{len(steps)}] {name} (round {k + 1} of {args.rounds}): deploying ...")
            assert jizhi(["serve", str(SPEC), "--model", str(model), *sets]) == 0
            time.sleep(SETTLE_S)
            warmup = args.raw.parent / "warmup.json"
            warmup_s = FIRST_WARMUP_S if c == 0 else WARMUP_S
            probe(model, RATES[-1], warmup_s, args.seed + 10 * c + 9, warmup)
            for r, rate in enumerate(RATES):
                out = args.raw.parent / f"load-{name}-{rate:g}-round{k + 1}.json"
                result = probe(model, rate, probe_s, args.seed + 10 * c + r, out)
                latency = result["load"]["latency_s"]
                say(
                    f"    {rate:5.1f} req/s: p50 {latency['p50'] * 1e3:7.1f} ms, p99 "
                    f"{(latency['p99'] or float('inf')) * 1e3:7.1f} ms, goodput "
                    f"{result['load']['goodput_rps']:.2f}/s, steal {result['steal']:.0%}"
                    f"{'  (a busy host: compare with care)' if result['busy_host'] else ''}"
                    f"  ({time.monotonic() - began:.0f} s)"
                )
                cases.append({
                    "config": name, "assignments": assignments, "rate": rate, "round": k, **result,
                })  # fmt: skip
                time.sleep(2.0)
    finally:
        if started_head:
            jizhi(["serve", "--stop"])
    return {
        "spec": str(SPEC), "model": str(model), "probe_s": args.probe_s, "rounds": args.rounds,
        "cases": cases,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "fidelity-model")
    parser.add_argument("--raw", type=Path, default=ROOT / "out" / "fidelity" / "raw.json")
    parser.add_argument("--probe-s", type=float, default=60.0,
                        help="seconds of load per config and rate, over all rounds")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every config this many times, in counterbalanced order")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-only", action="store_true")
    parser.add_argument("--all-probes", action="store_true",
                        help="analyze probes on a busy host like the others (default: only where "
                        "a config and rate has no probe on a quiet host)")  # fmt: skip
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1 (got {args.rounds})")
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    if not args.analyze_only:
        raw = measure(args)
        args.raw.write_text(json.dumps(raw))
        say(f"wrote {args.raw}")
    if not args.measure_only:
        from fidelity_analysis import analyze

        analyze(json.loads(args.raw.read_text()), args.raw.parent, all_probes=args.all_probes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
