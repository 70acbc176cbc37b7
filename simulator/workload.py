"""Arrival processes: absolute arrival times in seconds, generated lazily in blocks.

- Poisson at `rate_rps`;
- a piecewise-constant rate schedule (bursts, diurnal steps): a non-homogeneous Poisson process,
  drawn by mapping a unit-rate process through the inverse of the cumulative rate Λ(t);
- replay of a trace file of arrival timestamps (one number per line, seconds; `#` comments), shifted
  to start at 0 and, when `rate_rps` is given, rescaled in time to that mean rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from simulator.errors import InputError
from simulator.spec import ArrivalProcess, WorkloadSpec

__all__ = ["arrival_times", "read_trace"]

_BLOCK = 8192


def read_trace(path: Path) -> NDArray[np.float64]:
    """Timestamps from a trace file, sorted and shifted so the first arrival is at 0."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"trace file {path}: cannot read ({exc.strerror})") from None
    values = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip().split(",", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"trace file {path}: line {number}: expected a timestamp in seconds (got {text!r})"
            ) from None
        if not np.isfinite(value):
            raise InputError(f"trace file {path}: line {number}: timestamp must be finite")
        values.append(value)
    if len(values) < 2:
        raise InputError(f"trace file {path}: needs at least 2 timestamps (got {len(values)})")
    times = np.sort(np.asarray(values, dtype=np.float64))
    return times - times[0]


def _poisson(rate: float, rng: np.random.Generator) -> Iterator[NDArray[np.float64]]:
    t = 0.0
    while True:
        block = t + np.cumsum(rng.exponential(1.0 / rate, _BLOCK))
        t = float(block[-1])
        yield block


def _schedule(workload: WorkloadSpec, rng: np.random.Generator) -> Iterator[NDArray[np.float64]]:
    assert workload.rate_rps is not None
    durations = np.array([s.duration_s for s in workload.schedule])
    rates = np.array([s.rate_factor for s in workload.schedule]) * workload.rate_rps
    edges = np.concatenate([[0.0], np.cumsum(durations)])  # segment start times
    cum = np.concatenate([[0.0], np.cumsum(durations * rates)])  # Λ at segment starts
    period, period_mass = float(edges[-1]), float(cum[-1])
    s = 0.0  # operational (unit-rate) time
    while True:
        ops = s + np.cumsum(rng.exponential(1.0, _BLOCK))
        s = float(ops[-1])
        cycles, within = np.divmod(ops, period_mass)
        seg = np.clip(np.searchsorted(cum, within, side="right") - 1, 0, len(rates) - 1)
        # Segments with rate 0 have zero mass: `side="right"` never lands inside them.
        offset = (within - cum[seg]) / np.where(rates[seg] > 0, rates[seg], 1.0)
        yield cycles * period + edges[seg] + offset


def _trace(workload: WorkloadSpec) -> Iterator[NDArray[np.float64]]:
    assert workload.trace_file is not None
    times = read_trace(workload.trace_file)
    if workload.rate_rps is not None:
        times = times * ((len(times) - 1) / times[-1]) / workload.rate_rps
    for start in range(0, len(times), _BLOCK):
        yield times[start : start + _BLOCK]


def arrival_times(workload: WorkloadSpec, rng: np.random.Generator) -> Iterator[float]:
    """Arrival timestamps in seconds, non-decreasing; finite only for a trace."""
    if workload.arrival is ArrivalProcess.POISSON:
        assert workload.rate_rps is not None
        blocks = _poisson(workload.rate_rps, rng)
    elif workload.arrival is ArrivalProcess.SCHEDULE:
        blocks = _schedule(workload, rng)
    else:
        blocks = _trace(workload)
    for block in blocks:
        yield from block.tolist()
