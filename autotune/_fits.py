"""The fits behind `autotune.calibration`: one method per parameter, each adding `Fitted` rows.

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
from simulator.cache import CachePolicy
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
_REQUESTS = "ray_serve_deployment_processing_latency_ms_count"
_BATCHES = "ray_serve_batch_execution_time_ms_count"
_STORE = "ray_jizhi_store_lookup_seconds"
_HITS = "ray_jizhi_cache_hits_total"
_MISSES = "ray_jizhi_cache_misses_total"
_CUT = "ray_jizhi_keys_cut_total"
_SERVING_SHAPE = (StageKind.COMPUTE, StageKind.FEATURES, StageKind.COMPUTE)
_SERVING_DEPLOYMENTS = ("Ingress", "Features", "Ranker")  # serving/app.py's deployment names
_MIN_SPEED = 0.01
_ALPHA_AGREE = 0.05  # the hit-rate and keys-cut estimates of alpha agree within this
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
        requests = self.counts(_REQUESTS, dep)
        if sum(requests) <= 0:
            raise InputError(
                f"stage {stage.name}: deployment '{dep}' handled no requests in the window "
                f"({_REQUESTS}): is it deployed under that name, and does traffic reach it?"
            )
        batches = self.counts(_BATCHES, dep)
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
            store = self.counts(f"{_STORE}_sum", dep)
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
        fitted = _line(x, y, [batches[i] for i in keep], self.min_spread)
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

    # -- parameter store and cache --------------------------------------------------------------

    def store(self, host: Host) -> None:
        lookup = host.lookup
        assert lookup is not None and lookup.store is not None
        prefix, spec_store = f"stages.{lookup.name}.store", lookup.store
        counts = self.counts(f"{_STORE}_count", host.deployment)
        sums = self.counts(f"{_STORE}_sum", host.deployment)
        misses = self.counts(_MISSES, host.deployment)
        if sum(counts) <= 0:
            for name in ("base_s", "per_key_s"):
                self.add(
                    f"{prefix}.{name}",
                    getattr(spec_store, name),
                    math.nan,
                    "s",
                    "spec",
                    status=Status.KEPT,
                    note="no store lookups in the window",
                )
            return
        keep = [i for i, n in enumerate(counts) if n > 0]
        x = [misses[i] / counts[i] for i in keep]
        y = [sums[i] / counts[i] for i in keep]
        source = f"{_STORE} (midpoint sums), {_MISSES}"
        self.add(
            "observed.misses_per_lookup",
            sum(misses) / sum(counts),
            math.nan,
            "",
            f"{_MISSES} / lookups",
            status=Status.OBSERVED,
            note=f"{min(x):.3g}–{max(x):.3g} across sub-windows",
        )
        approximate = "approximate: Ray builds the histogram's _sum from bucket midpoints"
        fitted = _line(x, y, [counts[i] for i in keep], self.min_spread)
        if isinstance(fitted, _fitting.Line):
            note = f"latency per lookup as base + per_key × misses over {len(x)} sub-windows"
            self.add(
                f"{prefix}.base_s",
                fitted.intercept,
                fitted.intercept_se,
                "s",
                source,
                note=f"{note}; {approximate}",
            )
            self.add(f"{prefix}.per_key_s", fitted.slope, fitted.slope_se, "s", source)
            return
        per_key = spec_store.per_key_s
        base, se = _fitting.ratio(
            [sums[i] - per_key * misses[i] for i in keep], [counts[i] for i in keep]
        )
        note = f"latency per lookup less the spec's per_key_s × misses; {fitted}; {approximate}"
        self.add(f"{prefix}.base_s", max(base, 0.0), se, "s", source, note=note)
        self.add(f"{prefix}.per_key_s", per_key, math.nan, "s", "spec", status=Status.KEPT)

    def cache(self, host: Host, seed: int) -> None:
        lookup, dep, workload = host.lookup, host.deployment, self.spec.workload
        assert lookup is not None
        hits, misses = sum(self.counts(_HITS, dep)), sum(self.counts(_MISSES, dep))
        lookups = hits + misses
        if lookups <= 0:
            raise InputError(
                f"stage {lookup.name}: no cache lookups in the window ({_HITS}, {_MISSES} of "
                f"deployment '{dep}'): every key was cut, or jizhi's metrics are not exported"
            )
        hit_rate = hits / lookups
        self.add(
            "observed.cache_hit_rate",
            hit_rate,
            math.sqrt(hit_rate * (1 - hit_rate) / lookups),
            "",
            f"{_HITS}, {_MISSES}",
            status=Status.OBSERVED,
            note=f"{hits:.0f} hits of {lookups:.0f} distinct keys per call; binomial s.e.",
        )
        requests, batches = sum(self.counts(_REQUESTS, dep)), sum(self.counts(_BATCHES, dep))
        by_cut = self._alpha_from_cut(lookup, dep, requests)
        policy, capacity = lookup.cache_policy or CachePolicy.NONE, lookup.cache_capacity or 0
        if policy is CachePolicy.NONE or capacity == 0:
            self.add(
                "workload.zipf_alpha",
                workload.zipf_alpha,
                math.nan,
                "",
                "spec",
                status=Status.KEPT,
                note="no cache deployed: the hit rate says nothing of alpha",
            )
            return
        batched = host.stage.max_batch_size > 1 and batches > 0
        first = self.subs[0].window.before  # how warm the caches were when the window opened
        before = first.total(_HITS, application=self.app, deployment=dep) + first.total(
            _MISSES, application=self.app, deployment=dep
        )
        replicas = host.stage.replicas
        segments = tuple(  # each sub-window's calls per replica and requests per call
            (max(1, round(c / replicas)), r / c)
            for r, c in zip(
                self.counts(_REQUESTS, dep),
                self.counts(_BATCHES, dep) if batched else self.counts(_REQUESTS, dep),
                strict=True,
            )
            if c > 0
        )
        calls = sum(c for c, _ in segments)
        setting = _fitting.CacheSetting(
            policy=policy,
            capacity=capacity,
            vocab_size=workload.vocab_size,
            keys_per_request=workload.keys_per_request,
            cutoff_rank=lookup.cutoff_rank,
            warm_calls=round(before / lookups * calls),
            segments=segments,
        )
        prefer = by_cut.alpha if by_cut is not None else workload.zipf_alpha
        fit = _fitting.alpha_from_hit_rate(setting, hit_rate, lookups, seed, prefer=prefer)
        notes = [
            f"replayed a {policy.value} cache of {capacity} keys per replica ({replicas} "
            f"replica(s), {setting.warm_calls} calls of warm-up), vocab {workload.vocab_size}, "
            f"{workload.keys_per_request} keys per request"
            + (f", cut-off {lookup.cutoff_rank}" if lookup.cutoff_rank else "")
        ]
        if fit.at_bound:
            notes.append(f"no alpha in {_fitting.ALPHA_RANGE} gives this hit rate: the nearest")
        if fit.roots:
            anchor = "the keys-cut estimate" if by_cut is not None else "the spec's alpha"
            roots = ", ".join(f"{r:.3g}" for r in fit.roots)
            notes.append(f"alphas {roots} all give this hit rate: took the one nearest {anchor}")
        if by_cut is not None and abs(fit.alpha - by_cut.alpha) > max(
            _ALPHA_AGREE, 3 * math.hypot(fit.se, by_cut.se)
        ):
            notes.append(
                f"disagrees with the keys-cut estimate {by_cut.alpha:.3g}: check "
                "vocab_size, keys per request and the cut-off against the deployment"
            )
        self.add(
            "workload.zipf_alpha",
            fit.alpha,
            fit.se,
            "",
            f"{_HITS}, {_MISSES}",
            note="; ".join(notes),
        )

    def _alpha_from_cut(
        self, lookup: StageSpec, dep: str, requests: float
    ) -> _fitting.AlphaFit | None:
        """A check on alpha: the share of key references the cut-off skipped, P(rank ≥ K)."""
        workload, cutoff = self.spec.workload, lookup.cutoff_rank
        if cutoff is None or cutoff >= workload.vocab_size:
            return None
        cut, keys = sum(self.counts(_CUT, dep)), requests * workload.keys_per_request
        if not 0 < cut < keys:
            return None
        fit = _fitting.alpha_from_cut(workload.vocab_size, cutoff, cut / keys, keys)
        self.add(
            "observed.zipf_alpha_from_cut",
            fit.alpha,
            fit.se,
            "",
            f"{_CUT} / key references",
            status=Status.OBSERVED,
            note=f"a check: {cut / keys:.4g} of key references had rank ≥ {cutoff}",
        )
        return fit


def _line(x: list[float], y: list[float], w: list[float], min_spread: float) -> _fitting.Line | str:
    """The regression where the data can carry a slope; otherwise why not (for the note)."""
    if len(x) < 3:
        return f"{len(x)} sub-window(s) cannot carry a slope (3 needed): the spec's is kept"
    if min(x) <= 0 or max(x) < min_spread * min(x):
        return (
            f"x varied too little for a slope ({min(x):.3g}–{max(x):.3g}, {min_spread:g}× "
            "needed): the spec's is kept"
        )
    fitted = _fitting.line(x, y, w)
    if fitted.intercept < 0 or fitted.slope < 0:
        return (
            f"the regression gave a negative term ({fitted.intercept:.3g} "
            f"{fitted.slope:+.3g} × x): the spec's slope is kept"
        )
    return fitted


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
