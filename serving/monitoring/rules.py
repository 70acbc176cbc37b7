"""Prometheus scrape config, recording rules and SLO alerts for a pipeline, generated from its spec.

Ray exports its Serve metrics with the `ray_` prefix, counters with `_total` and histograms with
`_bucket/_sum/_count`; its latency histograms are in milliseconds. The recording rules turn them
into the few series jizhi's dashboard and alerts read (`RECORDING_RULES`, in seconds and per
second); the alerts compare them with the spec's SLO. Nothing here does I/O: `render` returns the
files' text, `jizhi monitor` writes them.

>>> from simulator import load_spec
>>> files = render(load_spec("examples/ctr.yaml"))
>>> sorted(files)
['prometheus.yml', 'rules/jizhi-alerts.yml', 'rules/jizhi-recording.yml']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from serving.cluster import METRICS_PORT
from serving.monitoring.exporter import EXPORTER_PORT
from simulator.errors import InputError
from simulator.spec import PipelineSpec

__all__ = [
    "ALERTS",
    "RAY_DISCOVERY_FILE",
    "RAY_METRICS",
    "RECORDING_RULES",
    "REPLICAS_FOR",
    "UNHEALTHY_FOR",
    "Duration",
    "MonitorSettings",
    "alerting_rules",
    "recording_rules",
    "render",
    "scrape_config",
]

# Where Ray writes its Prometheus file-based service discovery: every live node's metrics export
# address (ray/_private/metrics_agent.py writes it into the session folder and links it here).
RAY_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
_APPLICATION = "jizhi"  # serving.deploy.APP_NAME
_MAX_INTERVAL_MS = 15_000  # the rules use 1m windows: at least 4 samples in each
REPLICAS_FOR = "2m"  # healthy replicas below Serve's target this long: a warning
UNHEALTHY_FOR = "1m"  # a deployment UNHEALTHY or DEPLOY_FAILED this long: critical

# The Ray 2.60 Serve metrics the rules read (Prometheus names), with their labels.
RAY_METRICS: dict[str, str] = {
    "ray_serve_num_http_requests_total": "proxy: HTTP responses {application, route, method, status_code}",
    "ray_serve_http_request_latency_ms_bucket": "proxy: end-to-end HTTP latency, ms {application, route, method, status_code, le}",
    "ray_serve_deployment_request_counter_total": "replica: requests processed {application, deployment, replica, route}",
    "ray_serve_deployment_processing_latency_ms_bucket": "replica: processing latency, ms {application, deployment, replica, route, le}",
    "ray_serve_actual_batch_size_sum": "@serve.batch: requests per batch {application, deployment, replica, function_name}",
    "ray_serve_actual_batch_size_count": "@serve.batch: batches {application, deployment, replica, function_name}",
    "ray_serve_deployment_replica_healthy": "controller: 1 per healthy replica, 0 unhealthy {application, deployment, replica}",
    "ray_serve_autoscaling_target_replicas": "controller: replicas Serve wants, num_replicas without autoscaling {application, deployment}",
    "ray_serve_deployment_status": "controller: 1 DEPLOY_FAILED, 2 UNHEALTHY, 3 UPDATING, 4 UPSCALING, 5 DOWNSCALING, 6 HEALTHY {application, deployment}",
}  # fmt: skip

_UNITS_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_TARGET = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


@dataclass(frozen=True, order=True)
class Duration:
    """A Prometheus duration ('30s', '5m', '1h30m'), held in whole milliseconds."""

    ms: int

    @classmethod
    def parse(cls, text: str, what: str = "duration") -> Duration:
        match = _DURATION.match(text.strip())
        if not text.strip() or match is None:
            raise InputError(
                f"{what}: not a Prometheus duration like 30s, 5m or 1h30m (got {text!r})"
            )
        counts = [int(g) if g else 0 for g in match.groups()]
        return cls(sum(n * unit for n, unit in zip(counts, _UNITS_MS.values(), strict=True)))

    def __str__(self) -> str:
        """The canonical form Prometheus prints: '1m30s', '5m', '0s'."""
        if self.ms == 0:
            return "0s"
        parts, rest = [], self.ms
        for unit, size in _UNITS_MS.items():
            if rest >= size:
                parts.append(f"{rest // size}{unit}")
                rest %= size
        return "".join(parts)


@dataclass(frozen=True)
class MonitorSettings:
    """What Prometheus scrapes and how often, and how long an SLO may burn before it alerts."""

    ray_metrics: str = f"127.0.0.1:{METRICS_PORT}"
    ray_discovery: str | None = None  # RAY_DISCOVERY_FILE on a multi-node cluster
    exporter: str = f"127.0.0.1:{EXPORTER_PORT}"
    interval: Duration = Duration(5_000)
    burn_for: Duration = Duration(300_000)
    application: str = _APPLICATION

    def __post_init__(self) -> None:
        for what, target in (("Ray metrics", self.ray_metrics), ("exporter", self.exporter)):
            match = _TARGET.match(target)
            if match is None or not 0 < int(match.group(1)) < 65536:
                raise InputError(f"{what} target: expected HOST:PORT (got {target!r})")
        if not 0 < self.interval.ms <= _MAX_INTERVAL_MS:
            raise InputError(
                f"scrape interval must be > 0 and <= 15s: the rules average over 1m "
                f"(got {self.interval})"
            )
        if self.burn_for.ms <= 0:
            raise InputError(
                "--for must be > 0, e.g. 5m: how long an SLO may burn before it alerts"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.application):
            raise InputError(f"application name {self.application!r}: letters, digits, _ . - only")


@dataclass(frozen=True)
class _Rule:
    name: str
    help: str
    expr: str


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[1m]))"


def _quantile(q: str, metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, {_rate(metric, f'{by}, le', selector)}) / 1000"


# The proxy's own routes (/-/healthz, /-/routes) carry no application: leave them out.
_ANY = '{application!=""}'
_NOT_SHED = '{application!="", status_code!="503"}'
_SHED = '{application!="", status_code="503"}'
_ERRORS = '{application!="", status_code=~"5..", status_code!="503"}'
_HTTP = "ray_serve_num_http_requests_total"
_HTTP_LATENCY = "ray_serve_http_request_latency_ms_bucket"
_LATENCY = "ray_serve_deployment_processing_latency_ms_bucket"
_BY_DEPLOYMENT = "application, deployment"
_BY_STAGE = "application, stage"
_HITS = _rate("ray_jizhi_cache_hits_total", _BY_STAGE)
_MISSES = _rate("ray_jizhi_cache_misses_total", _BY_STAGE)
_PERCENTILES = (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99"))

# In evaluation order: a rule may read the ones before it (same group, same timestamp).
_RULES: tuple[_Rule, ...] = (
    _Rule(
        "jizhi:http_requests:rate1m",
        "HTTP requests/s through Serve's proxy, all status codes, by application",
        _rate(_HTTP, "application", _ANY),
    ),
    _Rule(
        "jizhi:deployment_requests:rate1m",
        "requests/s processed by each deployment's replicas",
        _rate("ray_serve_deployment_request_counter_total", _BY_DEPLOYMENT),
    ),
    *(
        _Rule(
            f"jizhi:http_latency_seconds:{name}",
            f"end-to-end HTTP latency {name} at the proxy, seconds, by application; "
            "shed requests (503) excluded, as in the simulator",
            _quantile(q, _HTTP_LATENCY, "application", _NOT_SHED),
        )
        for name, q in _PERCENTILES
    ),
    *(
        _Rule(
            f"jizhi:deployment_latency_seconds:{name}",
            f"processing latency {name} inside each deployment's replicas, seconds",
            _quantile(q, _LATENCY, _BY_DEPLOYMENT),
        )
        for name, q in _PERCENTILES
    ),
    _Rule(
        "jizhi:shed:rate1m",
        "requests/s shed with HTTP 503 (max_queued_requests reached); 0 when none",
        f"{_rate(_HTTP, 'application', _SHED)} or 0 * jizhi:http_requests:rate1m",
    ),
    _Rule(
        "jizhi:errors:rate1m",
        "requests/s answered with a 5xx other than 503; 0 when none",
        f"{_rate(_HTTP, 'application', _ERRORS)} or 0 * jizhi:http_requests:rate1m",
    ),
    _Rule(
        "jizhi:shed:ratio1m",
        "fraction of requests shed (compare with the spec's slo.max_shed_rate)",
        "jizhi:shed:rate1m / jizhi:http_requests:rate1m",
    ),
    _Rule(
        "jizhi:batch_size:mean1m",
        "mean requests per @serve.batch call, by deployment",
        f"{_rate('ray_serve_actual_batch_size_sum', _BY_DEPLOYMENT)}"
        f" / {_rate('ray_serve_actual_batch_size_count', _BY_DEPLOYMENT)}",
    ),
    _Rule(
        "jizhi:cache_hit_ratio:1m",
        "embedding-cache hits / (hits + misses), by stage; either counter may not exist yet",
        f"({_HITS} or 0 * {_MISSES}) / ({_HITS} + {_MISSES} or {_HITS} or {_MISSES})",
    ),
    _Rule(
        "jizhi:keys_cut:rate1m",
        "key references/s skipped by the long-tail cut-off, by stage",
        _rate("ray_jizhi_keys_cut_total", _BY_STAGE),
    ),
    _Rule(
        "jizhi:replicas_healthy",
        "healthy replicas by deployment; 0 for a deployment Serve targets but none is healthy",
        f"sum by ({_BY_DEPLOYMENT}) (ray_serve_deployment_replica_healthy)"
        f" or 0 * max by ({_BY_DEPLOYMENT}) (ray_serve_autoscaling_target_replicas)",
    ),
)

RECORDING_RULES: tuple[str, ...] = tuple(rule.name for rule in _RULES)
ALERTS: tuple[str, ...] = (
    "JizhiLatencySLOBurn",
    "JizhiShedSLOBurn",
    "JizhiReplicasBelowTarget",
    "JizhiDeploymentUnhealthy",
)


def recording_rules() -> dict[str, Any]:
    """The recording-rule group (a Prometheus rule file as a dict)."""
    rules = [{"record": rule.name, "expr": rule.expr} for rule in _RULES]
    return {"groups": [{"name": "jizhi-recording", "rules": rules}]}


def alerting_rules(spec: PipelineSpec, settings: MonitorSettings | None = None) -> dict[str, Any]:
    """SLO-burn and replica-health alerts with the spec's thresholds (a rule file as a dict)."""
    settings = settings or MonitorSettings()
    app = f'application="{settings.application}"'
    burn = str(settings.burn_for)
    p99, shed = spec.slo.p99_s, spec.slo.max_shed_rate
    labels = {"pipeline": spec.name}
    rules: list[dict[str, Any]] = [
        {
            "alert": "JizhiLatencySLOBurn",
            "expr": f"jizhi:http_latency_seconds:p99{{{app}}} > {p99!r}",
            "for": burn,
            "labels": {"severity": "critical", **labels},
            "annotations": {
                "summary": "p99 latency of {{ $labels.application }} is over its SLO",
                "description": "p99 HTTP latency is {{ $value | humanizeDuration }}, over the SLO"
                f" of {p99 * 1000:g}ms (pipeline {spec.name}) for {burn}.",
            },
        },
        {
            "alert": "JizhiShedSLOBurn",
            "expr": f"jizhi:shed:ratio1m{{{app}}} > {shed!r}",
            "for": burn,
            "labels": {"severity": "critical", **labels},
            "annotations": {
                "summary": "{{ $labels.application }} sheds more requests than its SLO allows",
                "description": "{{ $value | humanizePercentage }} of requests are shed (HTTP 503),"
                f" over the limit of {shed * 100:g}% (pipeline {spec.name}) for {burn}.",
            },
        },
        {
            "alert": "JizhiReplicasBelowTarget",
            "expr": f"jizhi:replicas_healthy{{{app}}} < on ({_BY_DEPLOYMENT})"
            f" max by ({_BY_DEPLOYMENT}) (ray_serve_autoscaling_target_replicas{{{app}}})",
            "for": REPLICAS_FOR,
            "labels": {"severity": "warning", **labels},
            "annotations": {
                "summary": "{{ $labels.deployment }} has fewer healthy replicas than configured",
                "description": "{{ $labels.deployment }} of {{ $labels.application }} has"
                " {{ $value }} healthy replica(s), fewer than Serve's target, for"
                f" {REPLICAS_FOR}.",
            },
        },
        {
            "alert": "JizhiDeploymentUnhealthy",
            "expr": f"(max by ({_BY_DEPLOYMENT}) (ray_serve_deployment_status{{{app}}}) <= 2) > 0",
            "for": UNHEALTHY_FOR,
            "labels": {"severity": "critical", **labels},
            "annotations": {
                "summary": "{{ $labels.deployment }} is unhealthy",
                "description": "Serve reports {{ $labels.deployment }} of"
                " {{ $labels.application }} as {{ if eq $value 1.0 }}DEPLOY_FAILED{{ else }}"
                "UNHEALTHY{{ end }} (a replica failed its health check or could not start)"
                f" for {UNHEALTHY_FOR}.",
            },
        },
    ]
    return {"groups": [{"name": "jizhi-alerts", "rules": rules}]}


def scrape_config(
    settings: MonitorSettings | None = None,
    rule_files: tuple[str, ...] = ("rules/jizhi-recording.yml", "rules/jizhi-alerts.yml"),
) -> dict[str, Any]:
    """prometheus.yml: Ray's metrics export port (job `ray`) and jizhi's exporter (job `jizhi`)."""
    settings = settings or MonitorSettings()
    ray: dict[str, Any] = {
        "job_name": "ray",
        "static_configs": [{"targets": [settings.ray_metrics]}],
    }
    if settings.ray_discovery:
        ray["file_sd_configs"] = [{"files": [settings.ray_discovery]}]
    return {
        "global": {
            "scrape_interval": str(settings.interval),
            "evaluation_interval": str(settings.interval),
        },
        "rule_files": list(rule_files),
        "scrape_configs": [
            ray,
            {"job_name": "jizhi", "static_configs": [{"targets": [settings.exporter]}]},
        ],
    }


def _dump(document: dict[str, Any], header: str) -> str:
    text = yaml.safe_dump(document, sort_keys=False, width=1_000, allow_unicode=True)
    return f"{header}\n{text}"


def _with_comments(text: str) -> str:
    """Put each recording rule's meaning on the line above it (rule files have no help field)."""
    helps = {rule.name: rule.help for rule in _RULES}
    lines = []
    for line in text.splitlines():
        name = line.strip().removeprefix("- record: ")
        if name in helps:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f"{indent}# {helps[name]}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def render(spec: PipelineSpec, settings: MonitorSettings | None = None) -> dict[str, str]:
    """prometheus.yml and the two rule files, by path relative to the config's folder."""
    settings = settings or MonitorSettings()
    header = (
        f"# Generated by `jizhi monitor` for the pipeline '{spec.name}'"
        f" (p99 SLO {spec.slo.p99_s * 1000:g}ms,\n# max shed rate {spec.slo.max_shed_rate:g}):"
        " regenerate with `jizhi monitor rules SPEC --out DIR`, do not edit."
    )
    return {
        "prometheus.yml": _dump(scrape_config(settings), header),
        "rules/jizhi-recording.yml": _with_comments(_dump(recording_rules(), header)),
        "rules/jizhi-alerts.yml": _dump(alerting_rules(spec, settings), header),
    }
