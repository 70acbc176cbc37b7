"""A fidelity run measured in rounds: one case per config and rate, and how far the rounds differ.

`simulator_fidelity.py --rounds R` measures every config R times, in counterbalanced order (forward,
then backward, ...), each probe `probe_s / R` long. A machine whose speed drifts during the run then
moves every config's measurement alike — with a linear drift each config's rounds average to the
middle of the run — instead of making the configs measured late look faster than those measured
early. `merge_rounds` joins a config's rounds at one rate into one case: the load client's summary
(`serving.loadgen.summarize`) over all their requests, rates as totals over the probes' durations;
`round_changes` says how much one config's measurement moved from its first round to its last, the
floor under any prediction error. Raw files of one round (no `round` key) pass through unchanged.

A probe during which the hypervisor took more than `simulator_fidelity.STEAL_WARN` of the machine's
CPU (`busy_host`) measured the host, not the service: at 10-12 % steal one config's p50 doubled and
its p99 grew sixfold against its quiet round. `quiet_probes` keeps, per config and rate, the probes
on a quiet host (all of them where none was quiet, flagged), for calibration and for the cases.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from serving.loadgen import Outcome, RequestRecords, summarize

__all__ = ["DRIFT_CHECK", "RECORD_KEYS", "drift", "merge_rounds", "quiet_probes", "round_changes"]

DRIFT_CHECK = "base-again"  # one round: simulator_fidelity.py measures base again at the end

GAP_S = 5.0  # between one round's requests and the next's, once joined (the queues drain)
RECORD_KEYS = ("scheduled_s", "lateness_s", "latency_s", "outcome", "status")  # kept per probe
_CODES = {o.value: i for i, o in enumerate(Outcome)}


def _by_case(cases: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Probes by (config, rate), in the order first measured."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for case in cases:
        groups.setdefault((case["config"], case["rate"]), []).append(case)
    return groups


def quiet_probes(cases: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per config and rate, the probes not on a busy host; all of them where every one was (their
    config and rate named in the second list)."""
    groups = _by_case(cases)
    kept: list[dict[str, Any]] = []
    noisy: list[str] = []
    for (config, rate), probes in groups.items():
        quiet = [c for c in probes if not c.get("busy_host")]
        kept.extend(quiet or probes)
        if not quiet:
            noisy.append(f"{config} at {rate:g} req/s")
    return kept, noisy


def merge_rounds(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One case per (config, rate), in first-measured order; a config's rounds joined."""
    groups = _by_case(cases)
    return [_joined(rounds) if len(rounds) > 1 else rounds[0] for rounds in groups.values()]


def _duration_s(load: dict[str, Any]) -> float:
    return float(load["requests"] / load["planned_rps"])


def _joined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    parts: dict[str, list[Any]] = {k: [] for k in RECORD_KEYS}
    offset = 0.0
    for case in rounds:
        records = case["load"]["records"]
        missing = [k for k in RECORD_KEYS if k not in records]
        if missing:
            raise ValueError(
                f"{case['config']} at {case['rate']:g} req/s: the raw file's records lack "
                f"{', '.join(missing)}, needed to join rounds"
            )
        parts["scheduled_s"].append(np.asarray(records["scheduled_s"], dtype=float) + offset)
        for key in ("lateness_s", "latency_s"):
            parts[key].append(np.asarray(records[key], dtype=float))
        parts["outcome"].append(np.asarray([_CODES[o] for o in records["outcome"]], np.int8))
        parts["status"].append(np.asarray(records["status"], np.int16))
        offset += case["load"]["elapsed_s"] + GAP_S
    joined = RequestRecords(*(np.concatenate(parts[k]) for k in RECORD_KEYS))
    loads = [case["load"] for case in rounds]
    duration = sum(_duration_s(load) for load in loads)
    elapsed = sum(load["elapsed_s"] for load in loads)
    summary = summarize(joined, duration)
    summary.update(  # totals over the probes, not over the joined span with its gaps
        planned_rps=summary["requests"] / duration,
        sent_rps=summary["sent"] / duration,
        throughput_rps=summary["answered"] / elapsed,
        goodput_rps=summary["ok"] / elapsed,
        elapsed_s=elapsed,
    )
    summary["records"] = {
        "scheduled_s": joined.scheduled_s.tolist(),
        "latency_s": joined.latency_s.tolist(),
        "outcome": [o.value for o in joined.outcomes()],
    }
    first = rounds[0]
    return {
        "config": first["config"],
        "assignments": first["assignments"],
        "rate": first["rate"],
        "load": summary,
        "snapshots": [],  # per round: calibration reads each round's window on its own
        "steal": statistics.fmean(case.get("steal", 0.0) for case in rounds),
        "busy_host": any(case.get("busy_host") for case in rounds),
        "rounds": len(rounds),
    }


def round_changes(cases: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per config and rate measured in several rounds: its last round's p50 and p99 against its
    first's (last / first − 1), keyed "CONFIG at RATE req/s"."""
    groups = _by_case(cases)
    changes: dict[str, dict[str, float]] = {}
    for (config, rate), rounds in groups.items():
        if len(rounds) < 2:
            continue
        first, last = rounds[0]["load"]["latency_s"], rounds[-1]["load"]["latency_s"]
        changes[f"{config} at {rate:g} req/s"] = {
            q: (last[q] / first[q] - 1) if first[q] and last[q] else math.nan
            for q in ("p50", "p99")
        }
    return changes


def drift(rows: list[dict[str, Any]], probes: list[dict[str, Any]]) -> dict[str, float]:
    """How much the measurement moved while the machine ran on: the floor under any prediction
    error. Measured in rounds: each config's last round against its first (the median and the
    largest change over the cases); else the base config measured again at the run's end."""
    changes = round_changes(probes)
    if changes:
        moved: dict[str, float] = {}
        for k in ("p50", "p99"):
            values = [c[k] for c in changes.values() if math.isfinite(c[k])]
            moved[f"median |change| {k}"] = statistics.median(abs(v) for v in values)
            moved[f"largest change {k}"] = max(values, key=abs)
        print(f"rounds: each case's last round against its first, over {len(changes)} cases: "
              + ", ".join(f"{k} {v:+.0%}" for k, v in moved.items()))  # fmt: skip
        for name, c in changes.items():
            print(f"  {name:<34} p50 {c['p50']:+.0%}  p99 {c['p99']:+.0%}")
        return moved
    first = {r["rate"]: r["measured"] for r in rows if r["config"] == "base"}
    again = {r["rate"]: r["measured"] for r in rows if r["config"] == DRIFT_CHECK}
    moved = {}
    for rate in sorted(set(first) & set(again)):
        for k in ("p50", "p99"):
            a, b = first[rate][k], again[rate][k]
            if a and b:
                moved[f"{k} at {rate:g} req/s"] = b / a - 1
    if moved:
        print("drift check, base measured again at the end: " + ", ".join(
            f"{k} {v:+.0%}" for k, v in moved.items()))  # fmt: skip
    else:
        print("no drift check in this run (base-again not measured)")
    return moved
