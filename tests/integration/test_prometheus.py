"""The generated Prometheus files against promtool, and a real Prometheus started on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from serving.monitoring import prometheus, promtool_tests, rules
from serving.monitoring.rules import ALERTS, RECORDING_RULES, Duration, MonitorSettings
from simulator import load_spec
from simulator.errors import InputError
from tests.conftest import EXAMPLES, ROOT

from .services import free_port

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    """Run promtool; fails (never skips) when it is missing or says no."""
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is not installed: run `make services`"
    done = subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_shipped_files_pass_promtool() -> None:
    promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    promtool("check", "rules", *(str(p) for p in sorted((DEPLOY / "rules").glob("*.yml"))))
    out = promtool("test", "rules", *(str(p) for p in sorted((DEPLOY / "tests").glob("*.yml"))))
    assert out.count("SUCCESS") == 2


def test_rules_for_another_slo_pass_their_promtool_tests(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    spec = spec.model_copy(
        update={"slo": spec.slo.model_copy(update={"p99_s": 0.75, "max_shed_rate": 0.6})}
    )
    discovery = tmp_path / "discovery.json"
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:8080"]}]))
    settings = MonitorSettings(
        ray_discovery=str(discovery), interval=Duration(15_000), burn_for=Duration(90_000)
    )
    files = {**rules.render(spec, settings), **promtool_tests.render(spec, settings)}
    prometheus.write_files(tmp_path, files)
    assert (
        "> 0.75" in files["rules/jizhi-alerts.yml"]
        and "for: 1m30s" in files["rules/jizhi-alerts.yml"]
    )
    promtool("check", "config", str(tmp_path / "prometheus.yml"))
    out = promtool("test", "rules", *(str(p) for p in sorted((tmp_path / "tests").glob("*.yml"))))
    assert out.count("SUCCESS") == 2


class _FakeRay(BaseHTTPRequestHandler):
    """Ray's metrics export port, reduced to a few Serve series; the counter grows per scrape."""

    scrapes = 0

    def do_GET(self) -> None:
        _FakeRay.scrapes += 1
        app = 'application="jizhi"'
        body = (
            "# TYPE ray_serve_num_http_requests_total counter\n"
            f'ray_serve_num_http_requests_total{{{app},route="/",method="POST",status_code="200"}}'
            f" {10 * _FakeRay.scrapes}\n"
            f'ray_serve_deployment_replica_healthy{{{app},deployment="Ranker",replica="r1"}} 1\n'
            f'ray_serve_autoscaling_target_replicas{{{app},deployment="Ranker"}} 1\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fake_ray_metrics() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _poll(what: str, check: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.25)


def test_prometheus_loads_every_rule_scrapes_both_jobs_and_stops(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    state_file = tmp_path / "prometheus.json"
    with fake_ray_metrics() as ray_port:
        settings = MonitorSettings(
            ray_metrics=f"127.0.0.1:{ray_port}",
            exporter=f"127.0.0.1:{free_port()}",  # nothing listens: the target is down
            interval=Duration(1_000),
        )
        config = prometheus.write_files(tmp_path / "prom", rules.render(spec, settings))[0]
        port = free_port()
        started = prometheus.start(config, port, work_dir=tmp_path / "prom", state_file=state_file)
        try:
            assert started.url == f"http://127.0.0.1:{port}" and started.exporter_pid is None
            assert prometheus.running(state_file) == started
            with pytest.raises(InputError, match="already runs"):
                prometheus.start(config, free_port(), state_file=state_file)
            with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use"):
                prometheus.start(config, port, state_file=tmp_path / "other.json")

            def rules_ok() -> dict[str, str]:
                groups = prometheus.api(started.url, "/api/v1/rules")["groups"]
                health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
                return health if set(health.values()) == {"ok"} else {}

            health = _poll("every rule evaluated ok", rules_ok)
            assert set(health) == set(RECORDING_RULES) | set(ALERTS)

            def targets() -> dict[str, str]:
                active = prometheus.api(started.url, "/api/v1/targets")["activeTargets"]
                found = {t["labels"]["job"]: t["health"] for t in active}
                return found if found.get("ray") == "up" and "jizhi" in found else {}

            assert _poll("the ray and jizhi targets", targets)["jizhi"] in ("down", "unknown")
            rate = _poll(
                "a request rate recorded from the fake Ray",
                lambda: prometheus.query(started.url, "jizhi:http_requests:rate1m"),
            )
            assert rate[0].labels == {
                "__name__": "jizhi:http_requests:rate1m",
                "application": "jizhi",
            }
            assert rate[0].value > 0
            healthy = prometheus.query(started.url, "jizhi:replicas_healthy")
            assert [(s.labels["deployment"], s.value) for s in healthy] == [("Ranker", 1.0)]
            with pytest.raises(InputError, match="Prometheus rejected /api/v1/query"):
                prometheus.query(started.url, "sum(")
        finally:
            assert prometheus.stop(state_file)
    with pytest.raises(ProcessLookupError):
        os.kill(started.pid, 0)
    assert not state_file.exists() and prometheus.running(state_file) is None
    assert not prometheus.stop(state_file)
    with pytest.raises(prometheus.PrometheusError, match="no Prometheus answers"):
        prometheus.query(started.url, "up", timeout_s=1.0)
