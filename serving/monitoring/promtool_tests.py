"""promtool unit tests for the generated rules (`promtool test rules tests/*.yml`).

Every recording rule is evaluated on input series whose expected values were worked out by hand
(the comments give the arithmetic), and every alert is shown both firing and holding, with the
thresholds of the spec it was generated for. Counters grow by a fixed step every 15 s, so a
`rate(…[1m])` is that step × 4 / 60. Histogram inputs are chosen so that each quantile lands on a
bucket boundary, where `histogram_quantile` is exact.

>>> from simulator import load_spec
>>> sorted(render(load_spec("examples/ctr.yaml")))
['tests/alerts.yml', 'tests/recording.yml']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from serving.monitoring.rules import (
    REPLICAS_FOR,
    UNHEALTHY_FOR,
    Duration,
    MonitorSettings,
    alerting_rules,
)
from simulator.spec import PipelineSpec

__all__ = ["render"]

_STEP_MS = 15_000
_HTTP = "ray_serve_num_http_requests_total"
_HTTP_LATENCY = "ray_serve_http_request_latency_ms_bucket"
_PROXY = {"route": "/", "method": "POST"}


def _num(value: float) -> str:
    return f"{value:.15g}"


def _selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    return {"series": _selector(name, labels), "values": values}


def _counter(per_step: float, steps: int) -> str:
    """A counter growing by `per_step` every 15 s: rate(…[1m]) = per_step × 4 / 60."""
    return f"0+{_num(per_step)}x{steps}"


def _gauge(value: float, steps: int) -> str:
    return f"{_num(value)}x{steps}"


def _histogram(
    name: str, labels: dict[str, str], cumulative: Mapping[str, float], steps: int
) -> list[dict[str, str]]:
    """Bucket series of a histogram whose cumulative counts grow by `cumulative[le]` per step."""
    return [_series(name, {**labels, "le": le}, _counter(n, steps)) for le, n in cumulative.items()]


def _expect(value: float, **labels: str) -> tuple[dict[str, str], float]:
    return labels, value


def _recording_tests() -> dict[str, Any]:
    steps, app, other = 12, {"application": "jizhi"}, {"application": "other"}
    ranker = {**app, "deployment": "Ranker"}
    # HTTP at the proxy, per 15 s: 90 × 200, 15 × 404, 30 × 503, 15 × 500 → 6 + 1 + 2 + 1 = 10/s.
    # The proxy's health route (no application) is left out; `other` only answers 200 (1/s).
    http = [
        _series(_HTTP, {**app, **_PROXY, "status_code": code}, _counter(n, steps))
        for code, n in (("200", 90), ("404", 15), ("503", 30), ("500", 15))
    ]
    http += [
        _series(_HTTP, {"application": "", "route": "/-/healthz", "method": "GET",
                        "status_code": "200"}, _counter(150, steps)),
        _series(_HTTP, {**other, **_PROXY, "status_code": "200"}, _counter(15, steps)),
    ]  # fmt: skip
    # Latency of answered requests, cumulative per bucket (ms) per 15 s → rates 5, 9.5, 9.9, 10/s:
    # p50 = 5 ms (rank 5 ends bucket le=5), p95 = 10 ms (rank 9.5), p99 = 20 ms (rank 9.9).
    # The 503s are all slower than 20 ms and must not count.
    latency = {"5": 75, "10": 142.5, "20": 148.5, "+Inf": 150}
    http += _histogram(_HTTP_LATENCY, {**app, **_PROXY, "status_code": "200"}, latency, steps)
    slow = {"5": 0, "10": 0, "20": 0, "+Inf": 1500}
    http += _histogram(_HTTP_LATENCY, {**app, **_PROXY, "status_code": "503"}, slow, steps)
    # Two Ranker replicas, each half the requests (5/s) and half of each latency bucket.
    half = {le: n / 2 for le, n in latency.items()}
    replicas = []
    for replica in ("r1", "r2"):
        labels = {**ranker, "replica": replica}
        replicas.append(
            _series(
                "ray_serve_deployment_request_counter_total",
                {**labels, "route": "/"},
                _counter(75, steps),
            )
        )
        replicas += _histogram(
            "ray_serve_deployment_processing_latency_ms_bucket",
            {**labels, "route": "/"},
            half,
            steps,
        )
    # Batches: r1 15 batches of 8 requests per 15 s, r2 30 batches of 2 → 180 / 45 = 4 requests
    # per batch (the mean of the two replicas' means would be 5).
    for replica, total, batches in (("r1", 120, 15), ("r2", 60, 30)):
        labels = {**ranker, "replica": replica, "function_name": "score"}
        replicas.append(_series("ray_serve_actual_batch_size_sum", labels, _counter(total, steps)))
        replicas.append(
            _series("ray_serve_actual_batch_size_count", labels, _counter(batches, steps))
        )
    # Cache: features 45 hits + 15 misses per 15 s → 0.75; ranker only hits → 1; lookup only
    # misses → 0. Cut-off: 37.5 keys per 15 s → 2.5/s.
    stage = {"features": {**app, "deployment": "Features", "replica": "f1", "stage": "features"}}
    stage["ranker"] = {**app, "deployment": "Ranker", "replica": "r1", "stage": "ranker"}
    stage["lookup"] = {**app, "deployment": "Lookup", "replica": "l1", "stage": "lookup"}
    cache = [
        _series("ray_jizhi_cache_hits_total", stage["features"], _counter(45, steps)),
        _series("ray_jizhi_cache_misses_total", stage["features"], _counter(15, steps)),
        _series("ray_jizhi_cache_hits_total", stage["ranker"], _counter(15, steps)),
        _series("ray_jizhi_cache_misses_total", stage["lookup"], _counter(15, steps)),
        _series("ray_jizhi_keys_cut_total", stage["features"], _counter(37.5, steps)),
    ]
    # Replica health: Ranker 2 of 3 healthy, Ingress 1 of 1, Features none reported (0 of 4).
    health = [
        _series("ray_serve_deployment_replica_healthy", {**ranker, "replica": r}, _gauge(v, steps))
        for r, v in (("r1", 1), ("r2", 1), ("r3", 0))
    ]
    health.append(
        _series(
            "ray_serve_deployment_replica_healthy",
            {**app, "deployment": "Ingress", "replica": "i1"},
            _gauge(1, steps),
        )
    )
    health += [
        _series("ray_serve_autoscaling_target_replicas", {**app, "deployment": d}, _gauge(n, steps))
        for d, n in (("Ranker", 3), ("Ingress", 1), ("Features", 4))
    ]
    expected: list[tuple[str, list[tuple[dict[str, str], float]]]] = [
        ("jizhi:http_requests:rate1m", [_expect(10, **app), _expect(1, **other)]),
        ("jizhi:shed:rate1m", [_expect(2, **app), _expect(0, **other)]),
        ("jizhi:errors:rate1m", [_expect(1, **app), _expect(0, **other)]),
        ("jizhi:shed:ratio1m", [_expect(0.2, **app), _expect(0, **other)]),
        ("jizhi:http_latency_seconds:p50", [_expect(0.005, **app)]),
        ("jizhi:http_latency_seconds:p95", [_expect(0.01, **app)]),
        ("jizhi:http_latency_seconds:p99", [_expect(0.02, **app)]),
        ("jizhi:deployment_requests:rate1m", [_expect(10, **ranker)]),
        ("jizhi:deployment_latency_seconds:p50", [_expect(0.005, **ranker)]),
        ("jizhi:deployment_latency_seconds:p95", [_expect(0.01, **ranker)]),
        ("jizhi:deployment_latency_seconds:p99", [_expect(0.02, **ranker)]),
        ("jizhi:batch_size:mean1m", [_expect(4, **ranker)]),
        (
            "jizhi:cache_hit_ratio:1m",
            [
                _expect(0.75, **app, stage="features"),
                _expect(1, **app, stage="ranker"),
                _expect(0, **app, stage="lookup"),
            ],
        ),
        ("jizhi:keys_cut:rate1m", [_expect(2.5, **app, stage="features")]),
        (
            "jizhi:replicas_healthy",
            [
                _expect(2, **ranker),
                _expect(1, **app, deployment="Ingress"),
                _expect(0, **app, deployment="Features"),
            ],
        ),
    ]
    checks = [
        {
            "expr": rule,
            "eval_time": "2m",
            "exp_samples": [{"labels": _selector(rule, ls), "value": v} for ls, v in samples],
        }
        for rule, samples in expected
    ]
    return {
        "rule_files": ["../rules/jizhi-recording.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "name": "every recording rule on hand-computed inputs",
                "interval": "15s",
                "input_series": http + replicas + cache + health,
                "promql_expr_test": checks,
            }
        ],
    }


def _humanize_duration(seconds: float) -> str:
    """Prometheus's `humanizeDuration` template function, for the expected annotations."""
    if seconds == 0:
        return "0s"
    if abs(seconds) >= 1:
        sign, value = ("-" if seconds < 0 else ""), abs(seconds)
        whole = int(value)
        days, hours, minutes = whole // 86400, whole // 3600 % 24, whole // 60 % 60
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {whole % 60}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {whole % 60}s"
        if minutes:
            return f"{sign}{minutes}m {whole % 60}s"
        return f"{sign}{value:.4g}s"
    prefix = ""
    for unit in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(seconds) >= 1:
            break
        prefix, seconds = unit, seconds * 1000
    return f"{seconds:.4g}{prefix}s"


def _fire_and_hold(
    alerts: dict[str, Any], alert: str, wait: Duration, firing: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Checks that `alert` is only pending halfway through `wait` and fires 2m after it."""
    return [
        {"eval_time": str(Duration(wait.ms // 2)), "alertname": alert, "exp_alerts": []},
        {
            "eval_time": str(Duration(wait.ms + 120_000)),
            "alertname": alert,
            "exp_alerts": [
                {"exp_labels": labels, "exp_annotations": _annotations(alerts[alert], labels, v)}
                for labels, v in ((f["labels"], f["value"]) for f in firing)
            ],
        },
    ]


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, str]:
    """The rule's annotation templates expanded for one alert (only the functions the rules use)."""
    expanded = {}
    for key, template in rule["annotations"].items():
        text = template
        for name, label in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", label)
        text = text.replace("{{ $value | humanizeDuration }}", _humanize_duration(value))
        text = text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")
        status = "DEPLOY_FAILED" if value == 1 else "UNHEALTHY"
        text = text.replace(
            "{{ if eq $value 1.0 }}DEPLOY_FAILED{{ else }}UNHEALTHY{{ end }}", status
        )
        expanded[key] = text.replace("{{ $value }}", _num(value))
    return expanded


def _alert_tests(spec: PipelineSpec, settings: MonitorSettings) -> dict[str, Any]:
    rules = {r["alert"]: r for r in alerting_rules(spec, settings)["groups"][0]["rules"]}
    burn = settings.burn_for
    replicas_for, unhealthy_for = Duration.parse(REPLICAS_FOR), Duration.parse(UNHEALTHY_FOR)
    longest = max(burn, replicas_for, unhealthy_for).ms + 180_000
    steps = math.ceil(longest / _STEP_MS)
    app = {"application": settings.application}
    other = {"application": f"not-{settings.application}"}
    base = {"severity": "critical", "pipeline": spec.name}
    tests: list[dict[str, Any]] = []

    def test(name: str, series: list[dict[str, str]], checks: list[dict[str, Any]]) -> None:
        tests.append({"name": name, "interval": "15s", "input_series": series,
                      "alert_rule_test": checks})  # fmt: skip

    # p99 latency: every answered request above the top finite bucket (2 × SLO) → p99 = 2 × SLO;
    # holding: every answered request under SLO / 2, while shed (503) requests and another
    # application are slow.
    slo_ms = spec.slo.p99_s * 1000
    low, high = _num(slo_ms / 2), _num(slo_ms * 2)
    ok = {**app, **_PROXY, "status_code": "200"}
    above = {low: 0, high: 0, "+Inf": 150}
    below = {low: 150, high: 150, "+Inf": 150}
    test(
        "p99 latency over the SLO fires after --for",
        _histogram(_HTTP_LATENCY, ok, above, steps),
        _fire_and_hold(rules, "JizhiLatencySLOBurn", burn,
                       [{"labels": {**base, **app}, "value": float(high) / 1000}]),
    )  # fmt: skip
    test(
        "p99 latency under the SLO holds (slow shed requests and other applications ignored)",
        _histogram(_HTTP_LATENCY, ok, below, steps)
        + _histogram(_HTTP_LATENCY, {**ok, "status_code": "503"}, above, steps)
        + _histogram(_HTTP_LATENCY, {**ok, **other}, above, steps),
        [{"eval_time": str(Duration(burn.ms + 120_000)), "alertname": "JizhiLatencySLOBurn",
          "exp_alerts": []}],
    )  # fmt: skip

    # Shed ratio: half of all requests shed (all of them when the limit is 50 % or more).
    limit = spec.slo.max_shed_rate
    if limit < 1:
        shed_per_step, ok_per_step = (750, 750) if limit < 0.5 else (1500, 0)
        series = [_series(_HTTP, {**ok, "status_code": "503"}, _counter(shed_per_step, steps))]
        if ok_per_step:
            series.append(_series(_HTTP, ok, _counter(ok_per_step, steps)))
        fired = shed_per_step / (shed_per_step + ok_per_step)
        test(
            "shed ratio over the limit fires after --for",
            series,
            _fire_and_hold(rules, "JizhiShedSLOBurn", burn,
                           [{"labels": {**base, **app}, "value": fired}]),
        )  # fmt: skip
    holding = [_series(_HTTP, ok, _counter(1500 - 750 * limit, steps))]
    if limit > 0:
        holding.append(_series(_HTTP, {**ok, "status_code": "503"}, _counter(750 * limit, steps)))
    holding.append(_series(_HTTP, {**ok, **other, "status_code": "503"}, _counter(150, steps)))
    test(
        "shed ratio at half the limit holds (another application's shedding ignored)",
        holding,
        [{"eval_time": str(Duration(burn.ms + 120_000)), "alertname": "JizhiShedSLOBurn",
          "exp_alerts": []}],
    )  # fmt: skip

    # Replicas: Ranker 1 of 2 healthy, Features none of 1 reported; holding: 2 of 2.
    warn = {**base, "severity": "warning"}
    healthy, target = (
        "ray_serve_deployment_replica_healthy",
        "ray_serve_autoscaling_target_replicas",
    )
    ranker, features = {**app, "deployment": "Ranker"}, {**app, "deployment": "Features"}
    test(
        "fewer healthy replicas than the target fires",
        [
            _series(healthy, {**ranker, "replica": "r1"}, _gauge(1, steps)),
            _series(healthy, {**ranker, "replica": "r2"}, _gauge(0, steps)),
            _series(target, ranker, _gauge(2, steps)),
            _series(target, features, _gauge(1, steps)),
        ],
        _fire_and_hold(rules, "JizhiReplicasBelowTarget", replicas_for, [
            {"labels": {**warn, **ranker}, "value": 1.0},
            {"labels": {**warn, **features}, "value": 0.0},
        ]),
    )  # fmt: skip
    test(
        "all target replicas healthy holds (another application ignored)",
        [
            _series(healthy, {**ranker, "replica": "r1"}, _gauge(1, steps)),
            _series(healthy, {**ranker, "replica": "r2"}, _gauge(1, steps)),
            _series(target, ranker, _gauge(2, steps)),
            _series(target, {**other, "deployment": "Ranker"}, _gauge(3, steps)),
        ],
        [{"eval_time": str(Duration(replicas_for.ms + 120_000)),
          "alertname": "JizhiReplicasBelowTarget", "exp_alerts": []}],
    )  # fmt: skip

    # Deployment status: 2 = UNHEALTHY, 1 = DEPLOY_FAILED fire; 6, 3 and 0 (unknown) hold.
    status = "ray_serve_deployment_status"
    test(
        "an UNHEALTHY or DEPLOY_FAILED deployment fires",
        [_series(status, ranker, _gauge(2, steps)), _series(status, features, _gauge(1, steps))],
        _fire_and_hold(rules, "JizhiDeploymentUnhealthy", unhealthy_for, [
            {"labels": {**base, **ranker}, "value": 2.0},
            {"labels": {**base, **features}, "value": 1.0},
        ]),
    )  # fmt: skip
    test(
        "HEALTHY, UPDATING and unknown deployments hold (another application ignored)",
        [
            _series(status, ranker, _gauge(6, steps)),
            _series(status, features, _gauge(3, steps)),
            _series(status, {**app, "deployment": "Ingress"}, _gauge(0, steps)),
            _series(status, {**other, "deployment": "Ranker"}, _gauge(2, steps)),
        ],
        [{"eval_time": str(Duration(unhealthy_for.ms + 120_000)),
          "alertname": "JizhiDeploymentUnhealthy", "exp_alerts": []}],
    )  # fmt: skip
    return {
        "rule_files": ["../rules/jizhi-recording.yml", "../rules/jizhi-alerts.yml"],
        "evaluation_interval": "15s",
        "tests": tests,
    }


def render(spec: PipelineSpec, settings: MonitorSettings | None = None) -> dict[str, str]:
    """The promtool test files, by path relative to the folder of prometheus.yml."""
    settings = settings or MonitorSettings()
    header = (
        f"# promtool unit tests of the rules generated for the pipeline '{spec.name}';"
        "\n# run `promtool test rules tests/*.yml`. Generated by `jizhi monitor rules`."
    )
    files = {
        "tests/recording.yml": _recording_tests(),
        "tests/alerts.yml": _alert_tests(spec, settings),
    }
    return {
        path: header + "\n" + yaml.safe_dump(doc, sort_keys=False, width=1_000)
        for path, doc in files.items()
    }
