"""Fit a spec's costs to what the running service shows, each with an uncertainty.

`calibrate(spec, snapshots)` reads snapshots of Ray's and jizhi's metrics over a window
(`serving.monitoring.live`), splits it into sub-windows and fits: the request rate; the node's
cores and the share of its CPU left to the pipeline (`node.speed`); the proxy's CPU per request;
each stage's CPU per request or, for a batched stage, per batch = base + per_row × rows; the
parameter store's base and per-key latency; the Zipf exponent that explains the cache hit rate.
`calibrated_spec(spec, calibration)` writes them into the spec. No I/O: `jizhi calibrate` fetches.
The node's speed and the spread of CPU work show only in latency: `autotune.latency_fit` fits
them by simulation.

CPU is what Ray's agent reports per process (`ray_component_cpu_percentage`, psutil's CPU % over
its last 5 s sample): CPU seconds, what a stage costs on a node whose cores it shares. Counts are
exact; histogram means are approximate (Ray 2.60 exports `_sum` from bucket midpoints).

>>> from simulator import load_spec
>>> stage_deployments(load_spec("examples/ctr.yaml"))
{'ingress': 'Ingress', 'features': 'Features', 'ranker': 'Ranker'}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autotune._fits import Fits, Fitted, Status, hosts_of, stage_deployments
from autotune._lookup_fits import fit_cache, fit_store
from autotune._windows import subwindows
from serving.monitoring.live import Labels, Snapshot, replica_component
from simulator.spec import PipelineSpec

__all__ = [
    "NEEDED_METRICS",
    "Calibration",
    "Fitted",
    "Status",
    "calibrate",
    "calibrated_spec",
    "stage_deployments",
    "trim",
]

NEEDED_METRICS = (
    "ray_serve_num_http_requests_total",
    "ray_serve_num_ongoing_http_requests",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_http_request_latency_ms_count",
    "ray_serve_http_request_latency_ms_sum",
    "ray_serve_deployment_processing_latency_ms_count",
    "ray_serve_batch_execution_time_ms_count",
    "ray_jizhi_store_lookup_seconds_bucket",
    "ray_jizhi_store_lookup_seconds_count",
    "ray_jizhi_store_lookup_seconds_sum",
    "ray_jizhi_cache_hits_total",
    "ray_jizhi_cache_misses_total",
    "ray_jizhi_keys_cut_total",
    "ray_component_cpu_percentage",
    "ray_node_cpu_count",
    "ray_node_cpu_utilization",
)
# Labels that name a session or an exporter, not a series that calibration tells apart.
_NOISE_LABELS = frozenset(
    {
        "SessionName",
        "Version",
        "WorkerId",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
    }
)


@dataclass(frozen=True)
class Calibration:
    """Everything fitted from one window of one application, and what to know about it."""

    application: str
    start: float  # epoch seconds of the first and the last snapshot used
    end: float
    subwindows: int
    parameters: tuple[Fitted, ...]
    notes: tuple[str, ...] = ()

    @property
    def window_s(self) -> float:
        return self.end - self.start

    def get(self, path: str) -> Fitted:
        for p in self.parameters:
            if p.path == path:
                return p
        raise KeyError(path)

    def render_table(self) -> str:
        rows = [("parameter", "value", "± s.e.", "status", "from")]
        rows += [
            (p.path, _show(p.value, p.unit), _show(p.stderr, p.unit), p.status.value, p.source)
            for p in self.parameters
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(4)), r[4]]) for r in rows]
        lines += ["", *(f"{p.path}: {p.note}" for p in self.parameters if p.note), *self.notes]
        return "\n".join(lines)


def _show(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "s":
        return f"{value * 1e3:.4g} ms"
    if unit == "1/s":
        return f"{value:.4g} req/s"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


def trim(snapshot: Snapshot) -> Snapshot:
    """Only the series calibration reads, without session and exporter labels (for recordings)."""
    samples: dict[tuple[str, Labels], float] = {}
    for (name, labels), value in snapshot.samples.items():
        if name in NEEDED_METRICS:
            key = (name, frozenset(kv for kv in labels if kv[0] not in _NOISE_LABELS))
            samples[key] = samples.get(key, 0.0) + value
    return Snapshot(at=snapshot.at, samples=samples)


def calibrate(
    spec: PipelineSpec,
    snapshots: Sequence[Snapshot],
    *,
    application: str = "jizhi",
    min_subwindow_s: float = 0.0,
    store_in_process: bool = True,
    min_batch_spread: float = 1.5,
    seed: int = 0,
) -> Calibration:
    """Fit `spec` (with the knobs that were deployed) to the snapshots of one application.

    `min_subwindow_s` merges consecutive snapshots into sub-windows at least that long (Ray
    exports each process's metrics every few seconds, so short ones are lumpy). With
    `store_in_process` (the memory-mapped table) the store's time is CPU of the replica that looks
    up and comes out of its stage's CPU; with a remote store (Redis) it is waiting, not CPU. A
    batched stage's per-row cost (and the store's per-key cost) is fitted only when rows per batch
    (misses per lookup) vary by `min_batch_spread`× across sub-windows. `seed` drives the
    simulated cache. Raises `InputError` naming what is missing when the data cannot support a fit.
    """
    hosts = hosts_of(spec)
    components = {h.deployment: replica_component(application, h.deployment) for h in hosts}
    subs, dropped = subwindows(snapshots, application, components, min_subwindow_s)
    fit = Fits(spec, subs, hosts, application, store_in_process, min_batch_spread)
    fit.rate()
    fit.node()
    fit.overheads()
    fit.latency()
    for host in hosts:
        fit.stage(host)
    lookup = next((h for h in hosts if h.lookup is not None), None)
    if lookup is not None:
        fit_store(fit, lookup)
        fit_cache(fit, lookup, seed)
    span = subs[-1].end - subs[0].start
    notes = [
        f"window {span:.0f} s ({subs[0].start:.0f}–{subs[-1].end:.0f} epoch s), "
        f"{len(subs)} sub-window(s)"
        + (f"; {dropped} idle interval(s) at the ends dropped" if dropped else "")
    ]
    if len(subs) < 2:
        notes.append("one sub-window: no standard errors (take more snapshots or a longer window)")
    return Calibration(
        application, subs[0].start, subs[-1].end, len(subs), tuple(fit.out), tuple(notes)
    )


def calibrated_spec(spec: PipelineSpec, calibration: Calibration) -> dict[str, Any]:
    """The spec as a dict with the fitted parameters in place (kept ones are already there);
    `simulator.load.validate_spec` loads it.

    A service model keeps its kind where the fitted field belongs to it; one fitted as base +
    per_row becomes `linear` (its cv kept), the response overhead `deterministic` 0.
    """
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_none=True)
    for p in calibration.parameters:
        if p.status is Status.FITTED:
            value = float(max(1, round(p.value))) if p.path == "node.cores" else p.value
            _set(data, p.path, value)
    if "node" in data:
        data["node"]["cores"] = int(data["node"]["cores"])
        data["node"].setdefault("proxy_concurrency", 1)
    return data


def _set(data: dict[str, Any], path: str, value: float) -> None:
    *parents, name = path.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):  # stages, by name
            node = next(item for item in node if item.get("name") == part)
        else:
            node = node.setdefault(part, {})
    if parents and parents[-1] in ("service", "proxy", "response"):
        _retarget(node, name)
    node[name] = value


def _retarget(model: dict[str, Any], name: str) -> None:
    """Turn a service-model dict into the kind that has the field `name` (keeping its cv)."""
    kind = {"base_s": "linear", "per_row_s": "linear", "seconds": "deterministic"}.get(name)
    if kind is None or model.get("model") == kind:
        return
    cv = model.get("cv", 0.0)
    model.clear()
    if kind == "linear":
        model.update({"model": "linear", "base_s": 0.0, "per_row_s": 0.0, "cv": cv})
    else:
        model.update({"model": "deterministic", "seconds": 0.0})
