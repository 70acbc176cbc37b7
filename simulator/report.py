"""What a simulation returns: latency distributions, throughput, shedding, cache behaviour, cost.

`SimulationReport.to_dict()` is the stable JSON shape of `jizhi simulate --json` (docs/simulate.md
lists every field); `render_table()` is the readable default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CacheStats",
    "LatencyStats",
    "NodeStats",
    "SimulationReport",
    "SloVerdict",
    "StageReport",
]

_QUANTILES = {"p50_s": 0.50, "p90_s": 0.90, "p95_s": 0.95, "p99_s": 0.99, "p999_s": 0.999}


@dataclass(frozen=True)
class LatencyStats:
    """Summary of a latency sample in seconds; all zeros (count 0) when nothing completed."""

    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p95_s: float
    p99_s: float
    p999_s: float
    max_s: float

    @classmethod
    def of(cls, samples: ArrayLike) -> LatencyStats:
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        qs = np.quantile(values, list(_QUANTILES.values()))
        return cls(
            count=int(values.size),
            mean_s=float(values.mean()),
            max_s=float(values.max()),
            **{name: float(q) for name, q in zip(_QUANTILES, qs, strict=True)},
        )


@dataclass(frozen=True)
class CacheStats:
    """Lookups of distinct keys per batch after the cut-off: hits + misses = lookups."""

    policy: str
    capacity_per_replica: int
    lookups: int
    hits: int
    misses: int
    hit_rate: float
    keys_requested: int
    keys_cut: int
    cut_fraction: float


@dataclass(frozen=True)
class StageReport:
    """One stage over the measurement window."""

    name: str
    replicas: int
    latency: LatencyStats  # arrival at the stage's router → its batch finished
    queue_wait: LatencyStats  # arrival at the router → its batch started executing
    utilisation: float  # busy batch slots / (replicas × max_concurrent_batches)
    mean_queue_length: float  # time-average of requests waiting at the router
    mean_in_stage: float  # time-average of requests in the stage (router + replicas)
    arrival_rate_rps: float
    mean_batch_size: float
    mean_batch_rows: float
    batches: int
    shed: int
    cost_per_hour: float
    cache: CacheStats | None


@dataclass(frozen=True)
class NodeStats:
    """The shared node (`spec.node`) over the measurement window."""

    cores: int
    speed: float
    proxy_concurrency: int
    cpu_utilisation: float  # core-seconds held by the pipeline's work / (cores × window)
    cpu_seconds_per_request: float  # the pipeline's CPU seconds (at full speed) per completion
    mean_core_wait_s: float  # mean wait of a piece of CPU work for a core
    proxy_utilisation: float  # busy handling slots / proxy_concurrency
    proxy_mean_queue_wait_s: float  # mean wait for a handling slot (requests in, responses out)


@dataclass(frozen=True)
class SloVerdict:
    p99_target_s: float
    max_shed_rate: float
    p99_s: float
    shed_rate: float
    holds: bool


@dataclass(frozen=True)
class SimulationReport:
    """Everything `simulate` measured; warm-up requests are excluded from every statistic."""

    spec_name: str
    seed: int
    requests: int  # measured requests (after warm-up)
    warmup_requests: int
    window_s: float  # simulated time between the first and last measured arrival
    offered_rps: float
    throughput_rps: float  # completions per second inside the window
    completed: int  # measured requests completed
    shed: int  # measured requests shed (HTTP 503)
    shed_rate: float
    arrived_total: int  # every arrival, warm-up and tail included (conservation)
    completed_total: int
    shed_total: int
    in_flight_at_end: int
    latency: LatencyStats  # end to end, client view, completed measured requests
    stages: tuple[StageReport, ...]
    cost_per_hour: float
    slo: SloVerdict
    warnings: tuple[str, ...]
    wall_s: float
    node: NodeStats | None = None  # only with `spec.node`
    # End-to-end latency of every completed measured request, in completion order; only when
    # `simulate(..., keep_samples=True)`, and never part of `to_dict()`.
    latency_samples: tuple[float, ...] | None = dataclasses.field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("latency_samples")
        return data

    def stage(self, name: str) -> StageReport:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def render_table(self) -> str:
        ms = 1e3
        lines = [
            f"pipeline {self.spec_name}: {self.requests} requests after {self.warmup_requests} "
            f"warm-up, seed {self.seed}, {self.window_s:.1f} s simulated in {self.wall_s:.2f} s",
            f"offered {self.offered_rps:.1f} req/s   throughput {self.throughput_rps:.1f} req/s   "
            f"shed {self.shed} ({self.shed_rate:.2%})   cost ${self.cost_per_hour:.2f}/h",
            "",
            f"{'':<12}{'mean':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'p99.9':>9}  (ms)",
        ]

        def row(label: str, s: LatencyStats) -> str:
            values = (s.mean_s, s.p50_s, s.p90_s, s.p95_s, s.p99_s, s.p999_s)
            return f"{label:<12}" + "".join(f"{v * ms:>9.2f}" for v in values)

        lines.append(row("end-to-end", self.latency))
        lines.extend(row(s.name, s.latency) for s in self.stages)
        lines += [
            "",
            f"{'stage':<12}{'replicas':>9}{'util':>7}{'queue':>8}{'wait p99':>10}"
            f"{'batch':>7}{'shed':>7}{'$/h':>8}",
        ]
        for s in self.stages:
            lines.append(
                f"{s.name:<12}{s.replicas:>9}{s.utilisation:>7.0%}{s.mean_queue_length:>8.1f}"
                f"{s.queue_wait.p99_s * ms:>8.2f}ms{s.mean_batch_size:>7.1f}{s.shed:>7}"
                f"{s.cost_per_hour:>8.2f}"
            )
        if self.node is not None:
            n = self.node
            lines.append(
                f"\nnode: {n.cores} cores at speed {n.speed:.2f}, CPU {n.cpu_utilisation:.0%} busy, "
                f"{n.cpu_seconds_per_request * ms:.2f} ms CPU/request, "
                f"wait for a core {n.mean_core_wait_s * ms:.2f} ms mean\n"
                f"proxy: {n.proxy_concurrency} at once, {n.proxy_utilisation:.0%} busy, "
                f"queue wait {n.proxy_mean_queue_wait_s * ms:.2f} ms mean"
            )
        for s in self.stages:
            if s.cache is not None:
                c = s.cache
                lines.append(
                    f"\ncache ({s.name}): {c.policy} × {c.capacity_per_replica} keys/replica, "
                    f"hit rate {c.hit_rate:.1%} of {c.lookups} lookups; "
                    f"cut-off skipped {c.keys_cut} keys ({c.cut_fraction:.1%})"
                )
        verdict = "holds" if self.slo.holds else "VIOLATED"
        lines.append(
            f"\nSLO {verdict}: p99 {self.slo.p99_s * ms:.2f} ms (target {self.slo.p99_target_s * ms:.2f}"
            f" ms), shed {self.slo.shed_rate:.2%} (limit {self.slo.max_shed_rate:.2%})"
        )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)
