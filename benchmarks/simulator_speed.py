"""Simulator speed and memory, measured in one run on this machine.

Prints simulated requests per wall-second for (a) a bare SimPy M/M/1 loop with one process per
request, the reference, and (b) the full pipeline of examples/ctr.yaml (3 stages, batching, 256
Zipf keys per request replayed through per-replica LRU caches), and their ratio; then the peak
memory of one simulation of 10^6 requests. Runs alternate A/B and report medians, because this
machine is shared and noisy. Targets: ratio >= 0.5, peak memory < 1 GiB.

    python benchmarks/simulator_speed.py [--requests 100000] [--rounds 3] [--memory-requests 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import simpy

ROOT = Path(__file__).resolve().parent.parent
CTR = ROOT / "examples" / "ctr.yaml"


def bare_mm1(n: int, seed: int = 0) -> float:
    """Requests per wall-second of a textbook SimPy M/M/1 model (one process per request)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / 800.0, n).tolist()
    services = rng.exponential(1 / 1000.0, n).tolist()
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    waits: list[float] = []

    def customer(i: int):  # type: ignore[no-untyped-def]
        arrived = env.now
        with server.request() as request:
            yield request
            waits.append(env.now - arrived)
            yield env.timeout(services[i])

    def source():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield env.timeout(gaps[i])
            env.process(customer(i))

    started = time.perf_counter()
    env.process(source())
    env.run()
    return n / (time.perf_counter() - started)


def pipeline(n: int, *overrides: str) -> float:
    """Simulated requests (every arrival, warm-up and tail included) per wall-second."""
    from simulator import load_pipeline, simulate

    report = simulate(load_pipeline(CTR, overrides=list(overrides)), requests=n, seed=1)
    return report.arrived_total / report.wall_s


def peak_memory_mib(n: int) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time of a child process simulating n requests of the CTR example."""
    code = (
        "import json, sys, time; from simulator import load_spec, simulate; "
        f"t = time.perf_counter(); r = simulate(load_spec({str(CTR)!r}), requests={n}, seed=2); "
        "print(json.dumps({'wall': time.perf_counter() - t, 'p99': r.latency.p99_s}))"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib >= before
    return peak_kib / 1024, json.loads(out.stdout)["wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    args = parser.parse_args()

    cases = {
        "bare SimPy M/M/1 (process per request)": lambda: bare_mm1(args.requests),
        "ctr.yaml pipeline": lambda: pipeline(args.requests),
        "ctr.yaml, cache none (no key replay)": lambda: pipeline(
            args.requests, "features.cache_policy=none"
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.rounds):
        for name, run in cases.items():
            rates[name].append(run())
            print(
                f"round {round_ + 1}/{args.rounds}: {name}: {rates[name][-1]:,.0f} req/s",
                file=sys.stderr,
            )
    median = {name: statistics.median(v) for name, v in rates.items()}
    bare = median["bare SimPy M/M/1 (process per request)"]
    print(f"\n{'case':<42}{'req/s (median)':>16}{'vs bare':>10}")
    for name, value in median.items():
        print(f"{name:<42}{value:>16,.0f}{value / bare:>10.2f}")
    print(f"\nratio pipeline / bare = {median['ctr.yaml pipeline'] / bare:.2f} (target >= 0.5)")

    print(
        f"\nsimulating {args.memory_requests:,} requests of ctr.yaml in a child process ...",
        file=sys.stderr,
    )
    mib, wall = peak_memory_mib(args.memory_requests)
    print(
        f"peak memory for {args.memory_requests:,} requests: {mib:,.0f} MiB "
        f"(target < 1024 MiB), {wall:.1f} s wall"
    )


if __name__ == "__main__":
    main()
