"""How the service and the model answer requests that come in a burst, on the same arrival times.

A probe's p99 hangs on its bursts: Poisson arrivals at 10 req/s put two or three requests within
50 ms of each other every few seconds, and those are the slow ones. Comparing one p99 with another
mixes how bursty the two arrival sequences were with how each system treats a burst. Here the
model replays the probe's own send times (`workload.arrival: trace`, after a Poisson warm-up of
`WARMUP` requests at the probe's rate), so both see the same bursts, and each request is grouped
by how many requests were sent in the `WINDOW_S` before it: 0 (alone), 1, 2 or more. The medians
per group, measured against simulated, show how much a request slows for each one just ahead of
it — the interaction the p99 target needs and one p99 per case cannot show.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from simulator import simulate
from simulator.load import validate_spec

__all__ = ["GROUPS", "burst_profile"]

WINDOW_S = 0.05
WARMUP = 400
GROUPS = ("alone", "1 ahead", "2+ ahead")


def _ahead(sent: np.ndarray) -> np.ndarray:
    """For each send time, how many requests were sent in the `WINDOW_S` before it (sorted)."""
    return np.arange(len(sent)) - np.searchsorted(sent, sent - WINDOW_S, side="left")


def _replayed(spec: Any, sent: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Simulated latency of each probe request, the probe's send times replayed after a warm-up."""
    warm = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, WARMUP))
    times = np.concatenate([warm, warm[-1] + 1.0 / rate + (sent - sent[0])])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "arrivals.txt"
        path.write_text("\n".join(f"{t:.6f}" for t in times))
        data = spec.model_dump(mode="json", exclude_none=True)
        data["workload"].pop("rate_rps", None)  # with a rate, a trace is rescaled to it
        data["workload"].update({"arrival": "trace", "trace_file": str(path)})
        events: list[tuple[Any, ...]] = []
        simulate(validate_spec(data, source="probe replay"), requests=len(sent),
                 warmup_requests=WARMUP, seed=seed, trace=events)  # fmt: skip
    arrived = {e[2]: e[0] for e in events if e[1] == "arrive"}
    done = {e[2]: e[0] for e in events if e[1] == "complete"}
    index = range(WARMUP, WARMUP + len(sent))
    return np.array([done[i] - arrived[i] if i in done else np.nan for i in index])


def burst_profile(
    spec: Any, records: dict[str, list[Any]], rate: float, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per group (`GROUPS`): requests, measured and simulated median latency (seconds)."""
    ok = np.array([o == "ok" for o in records["outcome"]])
    sent = np.asarray(records["scheduled_s"], dtype=float)
    order = np.argsort(sent, kind="stable")
    sent, ok = sent[order], ok[order]
    measured = np.asarray(records["latency_s"], dtype=float)[order]
    simulated = _replayed(spec, sent, rate, seed)
    ahead = np.minimum(_ahead(sent), len(GROUPS) - 1)
    profile = {}
    for group, name in enumerate(GROUPS):
        chosen = ok & (ahead == group) & np.isfinite(simulated)
        profile[name] = {
            "requests": int(chosen.sum()),
            "measured_p50": float(np.median(measured[chosen])) if chosen.any() else np.nan,
            "simulated_p50": float(np.median(simulated[chosen])) if chosen.any() else np.nan,
        }
    return profile


def print_profiles(rows: list[tuple[str, float, dict[str, dict[str, float]]]]) -> None:
    """One line per case: each group's measured/simulated median (ms) and its count."""
    head = "".join(f"{g + ' meas/sim ms (n)':>28}" for g in GROUPS)
    print(f"\nburst profile: p50 by requests sent in the {WINDOW_S * 1e3:.0f} ms before, the probe's"
          f" send times replayed\n{'case':<24}{'rate':>6}{head}")  # fmt: skip
    for config, rate, profile in rows:
        cells = "".join(
            f"{p['measured_p50'] * 1e3:.1f}/{p['simulated_p50'] * 1e3:.1f} ({p['requests']})".rjust(
                28
            )
            for p in profile.values()
        )
        print(f"{config:<24}{rate:>6.1f}{cells}")
