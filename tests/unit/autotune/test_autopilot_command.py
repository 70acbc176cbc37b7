"""`jizhi autopilot` end to end without Ray: a fake metrics endpoint and a fake Serve REST API
(`serving.cluster`), so the command's real wiring — measuring, tuning, predicting, rolling out,
recording — runs as it would on a cluster."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from jizhi.cli import main
from serving.deploy import serve_config
from serving.monitoring import exporter
from serving.monitoring.exporter import RolloutOutcome
from simulator import load_pipeline
from tests.conftest import EXAMPLES

SPEC = str(EXAMPLES / "ctr.yaml")
SMALL = ["ingress.replicas=1", "features.replicas=1", "ranker.replicas=1",
         "ranker.max_batch_size=8", "ranker.max_ongoing_requests=16"]  # fmt: skip
OVER = [*SMALL, "features.replicas=2"]  # $0.216/h; one replica per stage is $0.168/h
FAST = ["tuning.trial_requests=300", "tuning.trial_warmup_requests=50",
        "simulation.requests=500", "simulation.warmup_requests=50"]  # fmt: skip
RATE = 20.0


def metrics_text(elapsed: float) -> str:
    """Serve's HTTP counters after `elapsed` seconds at RATE req/s, every request 10-20 ms."""
    n = RATE * elapsed
    labels = 'application="jizhi",status_code="200"'
    return "\n".join([
        "# TYPE ray_serve_num_http_requests_total counter",
        f'ray_serve_num_http_requests_total{{{labels},route="/"}} {n}',
        "# TYPE ray_serve_http_request_latency_ms histogram",
        f'ray_serve_http_request_latency_ms_bucket{{{labels},le="10.0"}} 0',
        f'ray_serve_http_request_latency_ms_bucket{{{labels},le="20.0"}} {n}',
        f'ray_serve_http_request_latency_ms_bucket{{{labels},le="+Inf"}} {n}',
        f"ray_serve_http_request_latency_ms_count{{{labels}}} {n}",
        f"ray_serve_http_request_latency_ms_sum{{{labels}}} {15 * n}",
        "",
    ])  # fmt: skip


@pytest.fixture
def metrics_url() -> Iterator[str]:
    began = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics_text(time.monotonic() - began).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


class FakeServe:
    """What `serving.cluster` would do against Ray: keep the configs deployed, in order."""

    def __init__(self) -> None:
        self.deployed: list[dict[str, Any]] = []

    def deploy(self, config: dict[str, Any]) -> float:
        self.deployed.append(config)
        return time.time()

    def wait_running(
        self, app: str, since: float = 0.0, timeout_s: float = 180.0
    ) -> dict[str, Any]:
        return {"status": "RUNNING"}


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path, FakeServe]:
    """A deployed spare-replica config with the thinnest Ray layer faked; (model, deployed file,
    controller state, the fake)."""
    from jizhi.commands import autopilot, rollout, serve
    from serving import cluster, models

    model = tmp_path / "model"
    model.mkdir()
    deployed_file = tmp_path / ".jizhi" / "serve-config.yaml"
    deployed_file.parent.mkdir()
    spec = load_pipeline(SPEC, None, OVER)
    deployed_file.write_text(yaml.safe_dump(serve_config(spec, str(model.resolve()))))
    fake = FakeServe()
    state = tmp_path / "controller.json"
    monkeypatch.setattr(models, "read_artifact", lambda path: None)
    monkeypatch.setattr(cluster, "head_running", lambda: True)
    monkeypatch.setattr(cluster, "deploy", fake.deploy)
    monkeypatch.setattr(cluster, "wait_running", fake.wait_running)
    monkeypatch.setattr(serve, "DEPLOYED", deployed_file)
    monkeypatch.setattr(autopilot, "DEPLOYED", deployed_file)
    monkeypatch.setattr(rollout, "HISTORY", tmp_path / ".jizhi" / "rollouts.jsonl")
    monkeypatch.setattr(exporter, "STATE_FILE", state)
    return model, deployed_file, state, fake


def _argv(model: Path, metrics_url: str, out: Path, *extra: str) -> list[str]:
    sets = [arg for item in [*OVER, *FAST] for arg in ("--set", item)]
    return [
        "autopilot", SPEC, "--model", str(model), *sets, "--metrics", metrics_url,
        "--interval", "1", "--iterations", "2", "--trials", "6", "--confirm", "1",
        "--cooldown", "1", "--window", "0.5", "--settle", "0.1", "--out", str(out), *extra,
    ]  # fmt: skip


def test_without_cpu_gauges_the_full_calibration_fails_and_the_config_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics_url: str
) -> None:
    # the fake endpoint serves HTTP counters and latency, not the CPU gauges a full fit needs
    model, deployed_file, state, fake = _setup(tmp_path, monkeypatch)
    before = deployed_file.read_text()
    out = tmp_path / "run"
    assert main(_argv(model, metrics_url, out)) == 0
    rows = json.loads((out / "timeline.json").read_text())["rows"]
    assert [(r["action"], r["error"]) for r in rows] == [("hold", "calibration_failed")] * 2
    assert "no CPU gauge" in rows[0]["reason"]
    assert fake.deployed == [] and deployed_file.read_text() == before
    assert (
        exporter.read_state(state).autopilot_errors[exporter.AutopilotError("calibration_failed")]
        == 2
    )


def test_the_command_sheds_a_spare_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics_url: str
) -> None:
    model, deployed_file, state, fake = _setup(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert main(_argv(model, metrics_url, out, "--recalibrate", "rate")) == 0

    timeline = json.loads((out / "timeline.json").read_text())
    rows = timeline["rows"]
    assert [(r["action"], r["rollout"], r["error"]) for r in rows] == [
        ("save", "applied", None), ("hold", None, None),
    ], [r["reason"] for r in rows]  # fmt: skip
    traffic = rows[0]["observation"]["traffic"]
    assert traffic["requests_per_s"] == pytest.approx(RATE, rel=0.25)
    assert 0.01 < traffic["p99_s"] <= 0.02  # within the 10-20 ms bucket
    assert rows[0]["observation"]["live"]["cost_per_hour"] == pytest.approx(0.216)
    assert rows[1]["observation"]["live"]["cost_per_hour"] < 0.9 * 0.216
    assert [r["generation"] for r in rows] == [0, 1]
    # the saving went out as the tuned config's Serve config, which is now the deployed one
    (new,) = fake.deployed
    deployments = {d["name"]: d for d in new["applications"][0]["deployments"]}
    assert deployments["Features"]["num_replicas"] == 1
    assert yaml.safe_load(deployed_file.read_text()) == new
    live = load_pipeline(SPEC, str(out / "live.yaml"), [])
    assert serve_config(live, str(model.resolve())) == new
    (record,) = [json.loads(line) for line in (tmp_path / ".jizhi" / "rollouts.jsonl").open()]
    assert record["outcome"] == "applied" and record["generation"] == 1
    counted = exporter.read_state(state)
    assert counted.autopilot_iterations == {"hold": 1, "scale_up": 0, "save": 1}
    assert counted.rollouts[RolloutOutcome.APPLIED] == 1 and counted.tuning_trials is not None
    assert sorted(p.name for p in (out / "intervals").iterdir()) == ["0001", "0002"]
    assert (out / "timeline.png").is_file()
