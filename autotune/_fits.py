"""The fits behind `autotune.calibration`: one method per parameter, each adding `Fitted` rows
(the parameter store's and the cache's are functions of `autotune._lookup_fits`).

Every fit reads the sub-windows (`autotune._windows`) of one application and uses the estimators
of `autotune._fitting`; none does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from autotune import _fitting
from autotune._windows import SubWindow
from serving.monitoring.live import Window, in_flight_change, summarize
from simulator.errors import InputError
from simulator.service import mean_seconds
from simulator.spec import (
    ArrivalProcess,
    Deterministic,
    Device,
    Exponential,
    Linear,
    Lognormal,
    PipelineSpec,
    Profile,
    ServiceTime,
    StageKind,
    StageSpec,
)

__all__ = ["Fits", "Fitted", "Host", "Status", "hosts_of", "stage_deployments"]

_HTTP = "ray_serve_num_http_requests_total"
# Metrics the stage fits here and the lookup fits (`autotune._lookup_fits`) both read:
REQUESTS = "ray_serve_deployment_processing_latency_ms_count"
BATCHES = "ray_serve_batch_execution_time_ms_count"
STORE = "ray_jizhi_store_lookup_seconds"
_SERVING_SHAPE = (StageKind.COMPUTE, StageKind.FEATURES, StageKind.COMPUTE)
_SERVING_DEPLOYMENTS = ("Ingress", "Features", "Ranker")  # serving/app.py's deployment names
_MIN_SPEED = 0.01
_MIN_SERVICE_S = 1e-6


class Status(str, Enum):
    FITTED = "fitted"  # estimated from the metrics, written into the spec
    KEPT = "kept"  # not identifiable from these metrics: the spec's value, written unchanged
    OBSERVED = "observed"  # a measured figure or a cross-check, not written


@dataclass(frozen=True)
class Fitted:
    """One figure: its place in the spec (`stages.ranker.service.base_s`) or, when only observed,
    its name (`observed.cache_hit_rate`); its standard error (NaN: not estimable)."""

    path: str
    value: float
    stderr: float
    unit: str  # "s", "1/s", "cores", or "" (a ratio, a count, an exponent)
    source: str  # the metrics it comes from
    status: Status = Status.FITTED
    note: str = ""


def stage_deployments(spec: PipelineSpec) -> dict[str, str]:
    """The deployment that runs each stage: Ingress, Features and Ranker for the serving shape
    (a stage with `in_ranker` runs in the next deployed stage's deployment), otherwise a
    deployment named like the stage."""
    serving = tuple(s.kind for s in spec.stages) == _SERVING_SHAPE
    names = _SERVING_DEPLOYMENTS if serving else tuple(s.name for s in spec.stages)
    result: dict[str, str] = {}
    pending: list[str] = []
    for stage, name in zip(spec.stages, names, strict=True):
        pending.append(stage.name)
        if not stage.in_ranker:
            result.update(dict.fromkeys(pending, name))
            pending = []
    return result


@dataclass(frozen=True)
class Host:
    """A deployment: the stage it is named after and the `in_ranker` stages it runs as well."""

    deployment: str
    stage: StageSpec
    merged: tuple[StageSpec, ...]

    @property
    def lookup(self) -> StageSpec | None:
        """The features stage whose cache and store lookups run here, if any."""
        return next((s for s in (*self.merged, self.stage) if s.kind is StageKind.FEATURES), None)


def hosts_of(spec: PipelineSpec) -> list[Host]:
    where = stage_deployments(spec)
    hosts, merged = [], []
    for stage in spec.stages:
        if stage.in_ranker:
            merged.append(stage)
        else:
            hosts.append(Host(where[stage.name], stage, tuple(merged)))
            merged = []
    return hosts


class Fits:
    """The fits, each adding its rows in the order the table shows them."""

    def __init__(
        self,
        spec: PipelineSpec,
        subs: list[SubWindow],
        hosts: list[Host],
        application: str,
        store_in_process: bool,
        min_spread: float,
    ) -> None:
        self.spec, self.subs, self.hosts, self.app = spec, subs, hosts, application
        self.store_in_process, self.min_spread = store_in_process, min_spread
        self.seconds = [s.seconds for s in subs]
        self.out: list[Fitted] = []

    def add(
        self,
        path: str,
        value: float,
        stderr: float,
        unit: str,
        source: str,
        *,
        status: Status = Status.FITTED,
        note: str = "",
    ) -> None:
        self.out.append(Fitted(path, value, stderr, unit, source, status, note))

    def counts(self, name: str, deployment: str | None = None) -> list[float]:
        """The counter's increase in each sub-window (this application; one deployment's)."""
        match = {"application": self.app} | ({"deployment": deployment} if deployment else {})
        return [s.window.increase(name, **match) for s in self.subs]

    # -- workload, node, proxy ------------------------------------------------------------------

    def rate(self) -> None:
        """Arrivals: requests answered plus the growth of those in flight (under overload the
        answered rate is the capacity, not the load)."""
        answered = self.counts(_HTTP)
        growth = [in_flight_change(s.window) for s in self.subs]
        counts = [max(0.0, a + g) for a, g in zip(answered, growth, strict=True)]
        rate, se = _fitting.ratio(counts, self.seconds)
        workload = self.spec.workload
        note = f"{sum(answered):.0f} requests answered in {sum(self.seconds):.0f} s"
        if sum(growth):
            note += f", {sum(growth):+.0f} in flight"
        if workload.arrival is ArrivalProcess.SCHEDULE:
            segments = workload.schedule
            factor = sum(s.duration_s * s.rate_factor for s in segments) / sum(
                s.duration_s for s in segments
            )
            rate, se = rate / factor, se / factor
            note += f", over the schedule's mean rate_factor {factor:.3g}"
        self.add("workload.rate_rps", rate, se, "1/s", _HTTP, note=note)

    def node(self) -> None:
        supported = "node" in PipelineSpec.model_fields
        status = Status.FITTED if supported else Status.OBSERVED
        absent = "" if supported else "; not written: this spec version has no node section"
        capacity = [s.cores * s.seconds for s in self.subs]
        cores = sum(capacity) / sum(self.seconds)
        self.add(
            "node.cores",
            float(round(cores)),
            0.0,
            "cores",
            "ray_node_cpu_count",
            status=status,
            note=f"{cores:.3g} on average{absent}",
        )
        others = [s.node_busy_s - s.pipeline_cpu_s for s in self.subs]
        share, se = _fitting.ratio(others, capacity)
        pipeline = sum(s.pipeline_cpu_s for s in self.subs) / sum(self.seconds)
        note = (
            f"other processes used {share:.0%} of the node's CPU, the proxy and the replicas "
            f"{pipeline:.2f} cores. Not written: the CPU others use is not the share the OS "
            "scheduler leaves the pipeline (it shares cores among runnable threads), and only "
            "latency shows the waiting — the latency fit (autotune.latency_fit) fits node.speed "
            f"to the measured p50 instead; this is 1 − their share{absent}"
        )
        self.add(
            "observed.node.speed_from_cpu",
            min(1.0, max(_MIN_SPEED, 1.0 - share)),
            se,
            "",
            "ray_node_cpu_utilization less the pipeline's CPU",
            status=Status.OBSERVED,
            note=note,
        )

    def overheads(self) -> None:
        overhead, rows = self.spec.overhead, self.spec.workload.rows_per_request
        http_all = [s.window.increase(_HTTP) for s in self.subs]
        per_request, se = _fitting.ratio([s.cpu[s.proxy] for s in self.subs], http_all)
        path, value, note = _service_update("overhead.proxy", overhead.proxy, per_request, rows)
        self.add(
            path,
            value,
            se,
            "s",
            f"CPU {self.subs[0].proxy} / HTTP requests (all apps)",
            note="; ".join(n for n in ("CPU per request, in and out", note) if n),
        )
        self.add(
            "overhead.response.seconds",
            0.0,
            math.nan,
            "s",
            "—",
            note="the proxy's CPU per request covers the response",
        )
        self.add(
            "overhead.hop",
            mean_seconds(overhead.hop, rows),
            math.nan,
            "s",
            "spec",
            status=Status.KEPT,
            note="a hop's CPU is spent in the caller (the first deployment) and Ray "
            "does not report it apart: the spec's value is kept and taken out of the "
            "caller's CPU (configs with fewer hops show it in latency: "
            "autotune.latency_fit.fit_hop)",
        )

    def latency(self) -> None:
        """What the service answered with, to compare with `jizhi simulate` on the calibrated spec."""
        stats = summarize(Window(self.subs[0].window.before, self.subs[-1].window.after), self.app)
        source = "ray_serve_http_request_latency_ms (buckets)"
        for q, value in (("p50", stats.p50_s), ("p99", stats.p99_s)):
            self.add(f"observed.{q}_s", value, math.nan, "s", source, status=Status.OBSERVED)
        if stats.shed_rate > 0:
            self.add(
                "observed.shed_rate",
                stats.shed_rate,
                math.nan,
                "",
                f"{_HTTP} (503)",
                status=Status.OBSERVED,
            )

    # -- stages ---------------------------------------------------------------------------------

    def stage(self, host: Host) -> None:
        dep, stage = host.deployment, host.stage
        rows_per_request = self.spec.workload.rows_per_request
        requests = self.counts(REQUESTS, dep)
        if sum(requests) <= 0:
            raise InputError(
                f"stage {stage.name}: deployment '{dep}' handled no requests in the window "
                f"({REQUESTS}): is it deployed under that name, and does traffic reach it?"
            )
        batches = self.counts(BATCHES, dep)
        batched = stage.max_batch_size > 1 and sum(batches) > 0
        calls = batches if batched else requests
        rows = [r * rows_per_request for r in requests]
        component = self.subs[0].components[dep]
        cpu = [s.cpu[component] for s in self.subs]
        self.add(
            f"observed.{dep}.cpu_per_request",
            *_fitting.ratio(cpu, requests),
            "s",
            f"CPU {component} / requests",
            status=Status.OBSERVED,
        )
        taken: list[str] = []
        if host.lookup is not None and self.store_in_process:
            store = self.counts(f"{STORE}_sum", dep)
            cpu = [c - x for c, x in zip(cpu, store, strict=True)]
            taken.append("the store's time")
        if host is self.hosts[0] and len(self.hosts) > 1:
            hop = (len(self.hosts) - 1) * mean_seconds(self.spec.overhead.hop, rows_per_request)
            cpu = [c - hop * r for c, r in zip(cpu, requests, strict=True)]
            taken.append(f"the {len(self.hosts) - 1} hop(s) it calls")
        for merged in host.merged:
            if merged.kind is StageKind.FEATURES:  # a lookup per batch, on the batch's rows
                cost = [
                    n * mean_seconds(merged.service, round(x / n)) if n else 0.0
                    for x, n in zip(rows, calls, strict=True)
                ]
            else:  # a merged ingress handles each request
                cost = [r * mean_seconds(merged.service, rows_per_request) for r in requests]
            cpu = [c - x for c, x in zip(cpu, cost, strict=True)]
            taken.append(f"{merged.name}'s service from the spec (in_ranker)")
        less = f" less {', '.join(taken)}" if taken else ""
        prefix, model = f"stages.{stage.name}.service", stage.service
        if stage.device is Device.GPU and stage.gpu is not None:
            rows_per_call = sum(rows) / sum(calls)
            self.add(
                f"stages.{stage.name}.gpu.service",
                mean_seconds(stage.gpu.service, round(rows_per_call)),
                math.nan,
                "s",
                "spec",
                status=Status.KEPT,
                note="on a GPU: Ray's CPU gauges do not see its time; the spec's is kept",
            )
            return
        if batched:
            self._batched(prefix, dep, model, cpu, calls, rows, f"CPU {component}", less)
            return
        per_call, se = _fitting.ratio(cpu, calls)
        note = f"CPU per request{less}"
        if per_call < _MIN_SERVICE_S:
            note += f"; came out {per_call * 1e3:.3g} ms, written as 1 µs"
            per_call = _MIN_SERVICE_S
        path, value, more = _service_update(prefix, model, per_call, rows_per_request)
        self.add(
            path,
            value,
            se,
            "s",
            f"CPU {component} / requests",
            note="; ".join(n for n in (note, more) if n),
        )

    def _batched(
        self,
        prefix: str,
        dep: str,
        model: ServiceTime,
        cpu: list[float],
        batches: list[float],
        rows: list[float],
        source: str,
        less: str,
    ) -> None:
        """CPU per batch = base + per_row × rows, across sub-windows with different batch sizes."""
        keep = [i for i, b in enumerate(batches) if b > 0]
        x = [rows[i] / batches[i] for i in keep]
        y = [cpu[i] / batches[i] for i in keep]
        self.add(
            f"observed.{dep}.rows_per_batch",
            sum(rows) / sum(batches),
            math.nan,
            "",
            "requests × rows_per_request / batches",
            status=Status.OBSERVED,
            note=f"{min(x):.3g}–{max(x):.3g} across sub-windows",
        )
        source += " / batches"
        fitted = _fitting.line_or_why(x, y, [batches[i] for i in keep], self.min_spread)
        if isinstance(fitted, _fitting.Line):
            note = f"CPU per batch{less}, as base + per_row × rows over {len(x)} sub-windows"
            self.add(
                f"{prefix}.base_s", fitted.intercept, fitted.intercept_se, "s", source, note=note
            )
            self.add(f"{prefix}.per_row_s", fitted.slope, fitted.slope_se, "s", source)
            return
        per_row = model.per_row_s if isinstance(model, Linear) else 0.0
        base, se = _fitting.ratio(
            [c - per_row * r for c, r in zip(cpu, rows, strict=True)], batches
        )
        note = f"CPU per batch{less}, less the spec's per_row_s × rows; {fitted}"
        if base < 0:
            note += f"; came out {base * 1e3:.3g} ms, written as 0"
        self.add(f"{prefix}.base_s", max(base, 0.0), se, "s", source, note=note)
        self.add(f"{prefix}.per_row_s", per_row, math.nan, "s", "spec", status=Status.KEPT)


def _service_update(
    prefix: str, model: ServiceTime, mean: float, rows: int
) -> tuple[str, float, str]:
    """The field of `model` that makes its mean at `rows` rows `mean`: (path, value, note)."""
    if isinstance(model, Deterministic):
        return f"{prefix}.seconds", mean, ""
    if isinstance(model, Exponential | Lognormal):
        return f"{prefix}.mean_s", mean, ""
    if isinstance(model, Linear):
        base = mean - model.per_row_s * rows
        if base >= 0:
            return f"{prefix}.base_s", base, f"per_row_s kept ({model.per_row_s * 1e6:.3g} µs)"
        return f"{prefix}.per_row_s", mean / rows, "base_s set to 0 (per_row_s × rows was more)"
    assert isinstance(model, Profile)
    return f"{prefix}.scale", model.scale * mean / mean_seconds(model, rows), "profile rescaled"
