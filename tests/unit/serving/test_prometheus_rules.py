"""Prometheus config, rules and promtool tests generated from a spec (no Prometheus needed here)."""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import pytest
import yaml

from jizhi.cli import main
from serving.metrics import NAMES as JIZHI_METRICS
from serving.monitoring import promtool_tests, rules
from serving.monitoring.prometheus import PrometheusError, query
from serving.monitoring.rules import (
    ALERTS,
    RAY_DISCOVERY_FILE,
    RAY_METRICS,
    RECORDING_RULES,
    Duration,
    MonitorSettings,
)
from simulator import PipelineSpec, load_spec
from simulator.errors import InputError
from tests.conftest import EXAMPLES, ROOT

DEPLOY = ROOT / "deploy" / "prometheus"
CTR = EXAMPLES / "ctr.yaml"


def _generated(spec: PipelineSpec, settings: MonitorSettings | None = None) -> dict[str, str]:
    return {**rules.render(spec, settings), **promtool_tests.render(spec, settings)}


def _with_slo(p99_s: float, max_shed_rate: float) -> PipelineSpec:
    spec = load_spec(CTR)
    slo = spec.slo.model_copy(update={"p99_s": p99_s, "max_shed_rate": max_shed_rate})
    return spec.model_copy(update={"slo": slo})


def _ray_source(relative: str) -> str:
    found = importlib.util.find_spec("ray")  # the installed package's files; Ray is not imported
    assert found is not None and found.submodule_search_locations
    return (Path(next(iter(found.submodule_search_locations))) / relative).read_text()


def test_recording_rules_are_the_names_the_dashboard_reads() -> None:
    assert RECORDING_RULES == (
        "jizhi:http_requests:rate1m",
        "jizhi:deployment_requests:rate1m",
        "jizhi:http_latency_seconds:p50",
        "jizhi:http_latency_seconds:p95",
        "jizhi:http_latency_seconds:p99",
        "jizhi:deployment_latency_seconds:p50",
        "jizhi:deployment_latency_seconds:p95",
        "jizhi:deployment_latency_seconds:p99",
        "jizhi:shed:rate1m",
        "jizhi:errors:rate1m",
        "jizhi:shed:ratio1m",
        "jizhi:batch_size:mean1m",
        "jizhi:cache_hit_ratio:1m",
        "jizhi:keys_cut:rate1m",
        "jizhi:replicas_healthy",
    )
    recorded = [r["record"] for r in rules.recording_rules()["groups"][0]["rules"]]
    assert tuple(recorded) == RECORDING_RULES


def test_every_recording_rule_has_a_comment_and_rules_only_read_earlier_rules() -> None:
    text = rules.render(load_spec(CTR))["rules/jizhi-recording.yml"]
    assert yaml.safe_load(text) == rules.recording_rules()
    lines = text.splitlines()
    for name in RECORDING_RULES:
        at = lines.index(f"  - record: {name}")
        assert lines[at - 1].startswith("  # ") and len(lines[at - 1]) > 20, name
    seen: set[str] = set()
    for rule in rules.recording_rules()["groups"][0]["rules"]:
        used = set(re.findall(r"jizhi:[a-z_0-9:]+", rule["expr"]))
        assert used <= seen, f"{rule['record']} reads a rule evaluated after it: {used - seen}"
        seen.add(rule["record"])


def test_rules_read_only_metrics_ray_and_jizhi_export() -> None:
    documents = [rules.recording_rules(), rules.alerting_rules(load_spec(CTR))]
    exprs = [r["expr"] for d in documents for g in d["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bray_[a-z_]+", e)}
    jizhi = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used if m.startswith("ray_jizhi_")}
    assert jizhi <= set(JIZHI_METRICS)
    assert {m for m in used if not m.startswith("ray_jizhi_")} == set(RAY_METRICS)


@pytest.mark.parametrize("metric", sorted(RAY_METRICS))
def test_each_ray_metric_is_declared_by_ray_serve(metric: str) -> None:
    """Ray exports `serve_x` as `ray_serve_x`, counters with `_total`, histograms with suffixes."""
    base = re.sub(r"_(total|bucket|sum|count)$", "", metric.removeprefix("ray_"))
    files = (
        "serve/_private/request_ingress_metrics.py",
        "serve/_private/replica.py",
        "serve/batching.py",
        "serve/_private/deployment_state.py",
    )
    sources = "".join(_ray_source(f) for f in files)
    # the proxy's names are built from the protocol: f"serve_num_{protocol_name}_requests"
    declared = base.replace("_http_", "_{protocol_name}_")
    assert f'"{base}"' in sources or f'f"{declared}"' in sources, metric


def test_ray_writes_the_discovery_file_the_config_names() -> None:
    constants = _ray_source("_private/ray_constants.py")
    name = Path(RAY_DISCOVERY_FILE).name
    assert f'PROMETHEUS_SERVICE_DISCOVERY_FILE = "{name}"' in constants


def test_alerts_carry_the_spec_slo_and_the_burn_duration() -> None:
    spec = _with_slo(0.2, 0.01)
    settings = MonitorSettings(burn_for=Duration.parse("10m"))
    alerts = {r["alert"]: r for r in rules.alerting_rules(spec, settings)["groups"][0]["rules"]}
    assert tuple(alerts) == ALERTS
    latency, shed = alerts["JizhiLatencySLOBurn"], alerts["JizhiShedSLOBurn"]
    assert latency["expr"] == 'jizhi:http_latency_seconds:p99{application="jizhi"} > 0.2'
    assert shed["expr"] == 'jizhi:shed:ratio1m{application="jizhi"} > 0.01'
    assert latency["for"] == shed["for"] == "10m"
    assert "SLO of 200ms" in latency["annotations"]["description"]
    assert "limit of 1%" in shed["annotations"]["description"]
    for alert in alerts.values():
        assert alert["labels"]["pipeline"] == "ctr-ranking"
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert set(alert["annotations"]) == {"summary", "description"}
    assert alerts["JizhiReplicasBelowTarget"]["for"] == "2m"
    assert alerts["JizhiDeploymentUnhealthy"]["for"] == "1m"


def test_scrape_config_targets_ray_and_the_exporter() -> None:
    config = rules.scrape_config()
    assert config["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ray"]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert "file_sd_configs" not in jobs["ray"]
    assert jobs["jizhi"]["static_configs"] == [{"targets": ["127.0.0.1:9108"]}]
    settings = MonitorSettings(
        ray_metrics="10.0.0.5:8081",
        ray_discovery=RAY_DISCOVERY_FILE,
        exporter="127.0.0.1:19108",
        interval=Duration.parse("15s"),
    )
    jobs = {job["job_name"]: job for job in rules.scrape_config(settings)["scrape_configs"]}
    assert jobs["ray"]["static_configs"] == [{"targets": ["10.0.0.5:8081"]}]
    assert jobs["ray"]["file_sd_configs"] == [{"files": [RAY_DISCOVERY_FILE]}]
    assert jobs["jizhi"]["static_configs"] == [{"targets": ["127.0.0.1:19108"]}]


def test_default_application_is_the_one_jizhi_serve_deploys() -> None:
    from serving.deploy import APP_NAME

    assert MonitorSettings().application == APP_NAME


@pytest.mark.parametrize(
    ("text", "ms", "canonical"),
    [("5m", 300_000, "5m"), ("90s", 90_000, "1m30s"), ("1h30m", 5_400_000, "1h30m"),
     ("250ms", 250, "250ms"), ("1d", 86_400_000, "1d"), ("2m0s", 120_000, "2m")],
)  # fmt: skip
def test_durations_parse_like_prometheus(text: str, ms: int, canonical: str) -> None:
    duration = Duration.parse(text)
    assert duration.ms == ms and str(duration) == canonical


@pytest.mark.parametrize("text", ["5", "5min", "", "m5", "-5m", "5s1m", "1.5m"])
def test_bad_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(InputError, match=r"--for: not a Prometheus duration like 30s"):
        Duration.parse(text, "--for")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ray_metrics": "localhost"}, r"Ray metrics target: expected HOST:PORT"),
        ({"exporter": "127.0.0.1:70000"}, r"exporter target: expected HOST:PORT"),
        ({"interval": Duration(60_000)}, r"scrape interval must be > 0 and <= 15s"),
        ({"burn_for": Duration(0)}, r"--for must be > 0"),
    ],
)
def test_bad_settings_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        MonitorSettings(**fields)  # type: ignore[arg-type]


def test_committed_deploy_files_equal_freshly_generated_ones() -> None:
    """deploy/prometheus is `jizhi monitor rules examples/ctr.yaml --out deploy/prometheus`."""
    generated = _generated(load_spec(CTR))
    committed = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert committed == set(generated)
    for path, text in generated.items():
        assert (DEPLOY / path).read_text() == text, f"{path} differs: regenerate it"


def test_promtool_tests_cover_every_rule_and_alert_both_ways() -> None:
    files = promtool_tests.render(_with_slo(0.3, 0.02))
    recording = yaml.safe_load(files["tests/recording.yml"])
    checked = {c["expr"] for t in recording["tests"] for c in t["promql_expr_test"]}
    assert checked == set(RECORDING_RULES)
    alerts = yaml.safe_load(files["tests/alerts.yml"])
    checks = [c for t in alerts["tests"] for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in checks if c["exp_alerts"]} == set(ALERTS)
    assert {c["alertname"] for c in checks if not c["exp_alerts"]} == set(ALERTS)


def test_monitor_rules_writes_what_render_returns(tmp_path: Path) -> None:
    out = tmp_path / "prometheus"
    argv = ["monitor", "rules", str(CTR), "--out", str(out), "--for", "10m", "--interval", "15s"]
    assert main(argv) == 0
    settings = MonitorSettings(interval=Duration(15_000), burn_for=Duration(600_000))
    for path, text in _generated(load_spec(CTR), settings).items():
        assert (out / path).read_text() == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rules", str(CTR), "--out", "x", "--for", "5min"], "--for: not a Prometheus duration"),
        (["rules", "no/such.yaml", "--out", "x"], "spec file not found"),
        (["rules", str(CTR), "--out", "x", "--ray-metrics", "8080"], "expected HOST:PORT"),
        (["up", str(CTR), "--port", "0"], "--port: a port is 1..65535"),
        (["up", str(CTR), "--interval", "1m"], "scrape interval must be > 0 and <= 15s"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["monitor", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jizhi monitor: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / ".jizhi" / "prometheus.json").exists()


def test_up_refuses_a_port_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["monitor", "up", str(CTR), "--port", str(port), "--no-exporter"]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and err.count("\n") == 1
    assert not (tmp_path / ".jizhi" / "prometheus.json").exists()


def test_down_and_status_without_a_prometheus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["monitor", "status"]) == 0
    assert main(["monitor", "down"]) == 0
    out = capsys.readouterr().out
    assert "no Prometheus started by jizhi" in out


def test_query_names_the_url_when_nothing_answers() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(PrometheusError, match=rf"no Prometheus answers at http://127.0.0.1:{port}"):
        query(f"http://127.0.0.1:{port}", "up", timeout_s=1.0)
