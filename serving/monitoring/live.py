"""What the running deployment shows over a window: snapshots of its metrics and their deltas.

A `Snapshot` is every sample of Ray's Serve metrics and jizhi's own at one instant, read either by
scraping Ray's metrics export port (`scrape`) or from Prometheus's HTTP API at a given time
(`from_prometheus`). A `Window` of two snapshots gives counter increases and histogram bucket
deltas (reset-aware), and `summarize` turns a window into `LiveStats`: request and shed rates,
latency quantiles, per-deployment processing times, batch sizes, cache and store figures — what
calibration, rollout verification and the autopilot read. Parsing and arithmetic are pure; only
`scrape` and `from_prometheus` do I/O.

Latency quantiles are interpolated within histogram buckets as Prometheus's `histogram_quantile`
does. Ray 2.60 exports a histogram's `_sum` from bucket midpoints, so means are approximate at
bucket resolution; counts and bucket counts are exact.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from serving.monitoring import prometheus
from simulator.errors import InputError, ServiceError

__all__ = [
    "PROXY_COMPONENT",
    "DeploymentStats",
    "Histogram",
    "LiveMetricsError",
    "LiveStats",
    "Snapshot",
    "Window",
    "component_cpu",
    "from_prometheus",
    "node_cpu",
    "parse",
    "prefix_total",
    "read_records",
    "render",
    "replica_component",
    "scrape",
    "summarize",
    "to_record",
]

Labels = frozenset[tuple[str, str]]
# Serve's and jizhi's metrics, and the CPU Ray's agent samples per process and per node.
_WANTED = ("ray_serve_", "ray_jizhi_", "ray_component_cpu_percentage", "ray_node_cpu_")
_TIMEOUT_S = 5.0


class LiveMetricsError(ServiceError):
    """The metrics could not be read; the message says from where and why."""


@dataclass(frozen=True)
class Snapshot:
    """Every sample (name, labels) → value at time `at` (epoch seconds)."""

    at: float
    samples: Mapping[tuple[str, Labels], float]

    def series(self, name: str, match: Mapping[str, str]) -> dict[Labels, float]:
        items = match.items()
        return {
            labels: value
            for (sample, labels), value in self.samples.items()
            if sample == name and all(pair in labels for pair in items)
        }

    def total(self, name: str, **match: str) -> float:
        """The sum of a gauge over the matching series (e.g. CPU % of every Ranker process)."""
        return sum(self.series(name, match).values())


def parse(text: str, at: float) -> Snapshot:
    """A snapshot of the Prometheus text format (Ray's and jizhi's metrics only)."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_WANTED):
            continue
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Snapshot(at=at, samples=samples)


def scrape(url: str, timeout_s: float = _TIMEOUT_S) -> Snapshot:
    """Scrape a metrics endpoint, e.g. Ray's `http://127.0.0.1:8080/metrics`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise LiveMetricsError(f"no metrics at {url} ({getattr(exc, 'reason', exc)})") from None
    return parse(text, time.time())


def from_prometheus(url: str, at: float | None = None, timeout_s: float = _TIMEOUT_S) -> Snapshot:
    """Ray's and jizhi's series as Prometheus holds them at `at` (default now), through
    `serving.monitoring.prometheus.api`; its failures become `LiveMetricsError`."""
    at = time.time() if at is None else at
    query = '{__name__=~"ray_serve_.+|ray_jizhi_.+|ray_component_cpu_percentage|ray_node_cpu_.+"}'
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    try:
        data = prometheus.api(url, path, timeout_s)
    except (prometheus.PrometheusError, InputError) as exc:
        raise LiveMetricsError(str(exc)) from None
    samples: dict[tuple[str, Labels], float] = {}
    for series in data["result"]:
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        for drop in ("instance", "job"):  # added by the scrape, not by Ray
            labels.pop(drop, None)
        key = (name, frozenset(labels.items()))
        samples[key] = samples.get(key, 0.0) + float(series["value"][1])
    return Snapshot(at=at, samples=samples)


@dataclass(frozen=True)
class Histogram:
    """Bucket deltas of one histogram over a window, summed over the matching series."""

    bounds: tuple[float, ...]  # upper bounds, ascending, +Inf last
    cumulative: tuple[float, ...]
    total: float
    sum: float

    @property
    def count(self) -> float:
        return self.total

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total > 0 else math.nan

    def quantile(self, q: float) -> float:
        """Prometheus's `histogram_quantile`: linear within the bucket; NaN without samples."""
        if self.total <= 0 or not self.bounds:
            return math.nan
        rank = q * self.total
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # beyond the last finite bucket: its lower bound, as Prometheus
                inside = cumulative - below
                fraction = (rank - below) / inside if inside > 0 else 1.0
                return lower + (bound - lower) * fraction
            lower, below = bound, cumulative
        return lower


def _increase(after: float, before: float | None) -> float:
    """A counter's increase; a counter that went down was reset (a replica restarted)."""
    if before is None or after < before:
        return after
    return after - before


@dataclass(frozen=True)
class Window:
    before: Snapshot
    after: Snapshot

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    def increase(self, name: str, **match: str) -> float:
        """Summed increase of a counter (or a histogram's `_count`/`_sum`) over the window."""
        earlier = self.before.series(name, match)
        return sum(
            _increase(value, earlier.get(labels))
            for labels, value in self.after.series(name, match).items()
        )

    def rate(self, name: str, **match: str) -> float:
        return self.increase(name, **match) / self.seconds if self.seconds > 0 else 0.0

    def histogram(self, name: str, **match: str) -> Histogram:
        """Bucket deltas of `name` (without `_bucket`) over the series matching `match`."""
        earlier = self.before.series(f"{name}_bucket", match)
        buckets: dict[float, float] = {}
        for labels, value in self.after.series(f"{name}_bucket", match).items():
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + _increase(value, earlier.get(labels))
        bounds = tuple(sorted(buckets))
        return Histogram(
            bounds=bounds,
            cumulative=tuple(buckets[b] for b in bounds),
            total=self.increase(f"{name}_count", **match),
            sum=self.increase(f"{name}_sum", **match),
        )

    def label_values(self, name: str, label: str, **match: str) -> list[str]:
        values = {dict(labels).get(label) for labels in self.after.series(name, match)}
        return sorted(v for v in values if v is not None)


@dataclass(frozen=True)
class DeploymentStats:
    requests_per_s: float
    latency_mean_s: float  # processing latency in the replica (approximate mean)
    latency_p99_s: float


@dataclass(frozen=True)
class LiveStats:
    """One application over one window. Latency excludes shed requests (503), like the simulator."""

    window_s: float
    requests_per_s: float
    ok_per_s: float
    shed_rate: float  # share of requests answered 503
    error_rate: float  # share answered another 5xx
    p50_s: float
    p95_s: float
    p99_s: float
    deployments: dict[str, DeploymentStats] = field(default_factory=dict)
    mean_batch_size: float = math.nan
    batch_execution_mean_s: float = math.nan
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    keys_cut: float = 0.0
    store_lookups: float = 0.0
    store_lookup_mean_s: float = math.nan
    in_flight_change: float = 0.0  # requests in flight at the proxy, end of window less start

    @property
    def offered_per_s(self) -> float:
        """Requests that arrived per second: those answered plus the growth of those in flight.
        Under overload the answered rate is the service's capacity, not its load; this is not."""
        if not self.window_s > 0:
            return self.requests_per_s
        return max(0.0, self.requests_per_s + self.in_flight_change / self.window_s)

    @property
    def cache_hit_rate(self) -> float:
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups > 0 else math.nan

    @property
    def busy(self) -> bool:
        """Enough traffic in the window to judge latency (at least 20 completed requests)."""
        return self.ok_per_s * self.window_s >= 20


def _status_counts(window: Window, app: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for status in window.label_values(
        "ray_serve_num_http_requests_total", "status_code", application=app
    ):
        counts[status] = window.increase(
            "ray_serve_num_http_requests_total", application=app, status_code=status
        )
    return counts


def _latency(window: Window, app: str, statuses: Iterable[str]) -> Histogram:
    """End-to-end HTTP latency (seconds) of the requests with the given status codes."""
    parts = [
        window.histogram("ray_serve_http_request_latency_ms", application=app, status_code=s)
        for s in statuses
    ]
    parts = [p for p in parts if p.bounds]
    if not parts:
        return Histogram((), (), 0.0, 0.0)
    bounds = parts[0].bounds
    cumulative = [sum(p.cumulative[i] for p in parts) for i in range(len(bounds))]
    return Histogram(
        bounds=tuple(b / 1e3 for b in bounds),
        cumulative=tuple(cumulative),
        total=sum(p.total for p in parts),
        sum=sum(p.sum for p in parts) / 1e3,
    )


ONGOING_HTTP = "ray_serve_num_ongoing_http_requests"  # a gauge of the proxy: requests in flight


def summarize(window: Window, application: str = "jizhi") -> LiveStats:
    """The application's figures over the window."""
    app = application
    counts = _status_counts(window, app)
    total = sum(counts.values())
    shed = counts.get("503", 0.0)
    errors = sum(v for k, v in counts.items() if k.startswith("5") and k != "503")
    answered = [k for k in counts if k != "503"]
    latency = _latency(window, app, answered)
    seconds = window.seconds
    deployments = {}
    for name in window.label_values(
        "ray_serve_deployment_processing_latency_ms_count", "deployment", application=app
    ):
        h = window.histogram(
            "ray_serve_deployment_processing_latency_ms", application=app, deployment=name
        )
        deployments[name] = DeploymentStats(
            requests_per_s=h.total / seconds if seconds > 0 else 0.0,
            latency_mean_s=h.mean / 1e3,
            latency_p99_s=h.quantile(0.99) / 1e3,
        )
    execution = window.histogram("ray_serve_batch_execution_time_ms", application=app)
    # Mean batch size from exact counts (requests into batched deployments / batches), not from
    # the batch-size histogram's `_sum`, which Ray builds from bucket midpoints.
    batched = window.label_values(
        "ray_serve_batch_execution_time_ms_count", "deployment", application=app
    )
    batched_requests = sum(
        window.increase("ray_serve_deployment_processing_latency_ms_count", application=app,
                        deployment=name)
        for name in batched
    )  # fmt: skip
    store = window.histogram("ray_jizhi_store_lookup_seconds", application=app)
    return LiveStats(
        window_s=seconds,
        requests_per_s=total / seconds if seconds > 0 else 0.0,
        ok_per_s=counts.get("200", 0.0) / seconds if seconds > 0 else 0.0,
        shed_rate=shed / total if total > 0 else 0.0,
        error_rate=errors / total if total > 0 else 0.0,
        p50_s=latency.quantile(0.5),
        p95_s=latency.quantile(0.95),
        p99_s=latency.quantile(0.99),
        deployments=deployments,
        mean_batch_size=batched_requests / execution.total if execution.total > 0 else math.nan,
        batch_execution_mean_s=execution.mean / 1e3,
        cache_hits=window.increase("ray_jizhi_cache_hits_total", application=app),
        cache_misses=window.increase("ray_jizhi_cache_misses_total", application=app),
        keys_cut=window.increase("ray_jizhi_keys_cut_total", application=app),
        store_lookups=store.total,
        store_lookup_mean_s=store.mean,
        in_flight_change=in_flight_change(window),
    )


def in_flight_change(window: Window) -> float:
    """How many more HTTP requests the proxies hold at the window's end than at its start (Ray's
    gauge counts every application's; 0 when it is not exported)."""
    return window.after.total(ONGOING_HTTP) - window.before.total(ONGOING_HTTP)


# --- CPU by process, gauges over time, recordings (calibration reads these) --------------------

PROXY_COMPONENT = "ray::ProxyActor"  # the HTTP proxy's process, as Ray's agent names it


def replica_component(application: str, deployment: str) -> str:
    """The process name Ray's agent gives a deployment's replicas: `ray::ServeReplica:APP:NAME`."""
    return f"ray::ServeReplica:{application}:{deployment}"


def prefix_total(snapshot: Snapshot, name: str, label: str, prefix: str, **match: str) -> float:
    """Sum of `name` over the series whose `label` is `prefix` or `prefix.<anything>`.

    Ray's agent names a worker process by its title, which carries the method it runs
    (`ray::ServeReplica:jizhi:Ranker.handle_request_with_rejection`); it sums the processes of one
    name and sets the names it no longer sees to 0, so a process's CPU is the total over its names.
    `…:Ranker` does not match `…:RankerV2`.
    """
    dotted = prefix + "."
    total = 0.0
    for labels, value in snapshot.series(name, match).items():
        found = dict(labels).get(label)
        if found is not None and (found == prefix or found.startswith(dotted)):
            total += value
    return total


def component_cpu(snapshot: Snapshot, component: str) -> float:
    """CPU of the processes named `component` (whatever method they run), in cores: 1.0 = one core.

    `ray_component_cpu_percentage` is psutil's CPU % over the agent's last sampling interval (5 s).
    """
    return prefix_total(snapshot, "ray_component_cpu_percentage", "Component", component) / 100.0


def node_cpu(snapshot: Snapshot) -> tuple[float, float]:
    """(cores, busy cores) summed over the nodes: `ray_node_cpu_count`, and
    `ray_node_cpu_utilization` (% of the node's cores) × its cores."""
    counts = {
        dict(labels).get("ip"): v for labels, v in snapshot.series("ray_node_cpu_count", {}).items()
    }
    busy = sum(
        value / 100.0 * counts.get(dict(labels).get("ip"), 0.0)
        for labels, value in snapshot.series("ray_node_cpu_utilization", {}).items()
    )
    return sum(counts.values()), busy


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(snapshot: Snapshot) -> str:
    """The snapshot in Prometheus's text format, one sample a line (what `parse` reads back)."""
    lines = []
    for (name, labels), value in sorted(
        snapshot.samples.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
    ):
        inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels))
        lines.append(f"{name}{{{inner}}} {_number(value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def to_record(snapshot: Snapshot) -> str:
    """One line of a recording: `{"at": EPOCH_S, "text": PROMETHEUS_TEXT}`."""
    return json.dumps({"at": snapshot.at, "text": render(snapshot)})


def read_records(lines: Iterable[str], source: str) -> list[Snapshot]:
    """Snapshots from a recording (JSON lines `{"at": EPOCH_S, "text": PROMETHEUS_TEXT}`).

    Blank lines are skipped; anything else that is not such a line raises `InputError` naming
    `source` and the line number.
    """
    snapshots = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            at, text = float(record["at"]), record["text"]
            if not isinstance(text, str) or not math.isfinite(at):
                raise ValueError("'at' must be a finite number and 'text' a string")
            snapshots.append(parse(text, at))
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise InputError(
                f'{source}:{number}: not a recorded snapshot {{"at": EPOCH_S, "text": "..."}} '
                f"({problem})"
            ) from None
    return snapshots
