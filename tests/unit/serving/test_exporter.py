"""jizhi's own exporter: events recorded into the state file, scraped through the collector."""

from __future__ import annotations

import logging
import math
import multiprocessing
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.monitoring.exporter import (
    METRIC_NAMES,
    AutopilotAction,
    AutopilotError,
    ControllerCollector,
    RolloutOutcome,
    read_state,
    record_autopilot,
    record_deploy,
    record_rollout,
    record_tuning,
)
from tests.conftest import ROOT

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(path: Path) -> Samples:
    registry = CollectorRegistry()
    registry.register(ControllerCollector(path))
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_metric_is_there_before_the_first_event(tmp_path: Path) -> None:
    samples = scrape(tmp_path / "controller.json")
    assert {name for name, _ in samples} == set(METRIC_NAMES)
    assert value(samples, "jizhi_config_generation") == 0
    assert value(samples, "jizhi_config_deployed_timestamp_seconds") == 0
    for quantile in ("0.5", "0.99"):
        assert math.isnan(value(samples, "jizhi_predicted_latency_seconds", quantile=quantile))
    for name in (
        "jizhi_predicted_cost_per_hour",
        "jizhi_slo_p99_seconds",
        "jizhi_last_tuning_duration_seconds",
        "jizhi_last_tuning_trials",
    ):
        assert math.isnan(value(samples, name)), name
    for outcome in RolloutOutcome:
        assert value(samples, "jizhi_rollouts_total", outcome=outcome.value) == 0
    for action in AutopilotAction:
        assert value(samples, "jizhi_autopilot_iterations_total", outcome=action.value) == 0
    for reason in AutopilotError:
        assert value(samples, "jizhi_autopilot_errors_total", reason=reason.value) == 0
    assert value(samples, "jizhi_autopilot_last_iteration_timestamp_seconds") == 0
    assert value(samples, "jizhi_controller_state_loaded") == 0


def test_deploys_tuning_and_rollouts_are_scraped(tmp_path: Path) -> None:
    path = tmp_path / "state" / "controller.json"
    config = {"ranker": {"replicas": 2, "max_batch_size": 16}}
    assert record_deploy(0.01, 0.04, 1.5, 0.05, {}, path, clock=lambda: 100.0) == 1
    assert record_deploy(0.012, 0.045, 2.25, 0.05, config, path, clock=lambda: 200.0) == 2
    record_tuning(12.5, 40, path)
    record_rollout(RolloutOutcome.APPLIED, path)
    record_rollout(RolloutOutcome.APPLIED, path)
    record_rollout(RolloutOutcome.FAILED, path)

    samples = scrape(path)
    assert value(samples, "jizhi_config_generation") == 2
    assert value(samples, "jizhi_config_deployed_timestamp_seconds") == 200.0
    assert value(samples, "jizhi_predicted_latency_seconds", quantile="0.5") == 0.012
    assert value(samples, "jizhi_predicted_latency_seconds", quantile="0.99") == 0.045
    assert value(samples, "jizhi_predicted_cost_per_hour") == 2.25
    assert value(samples, "jizhi_slo_p99_seconds") == 0.05
    assert value(samples, "jizhi_last_tuning_duration_seconds") == 12.5
    assert value(samples, "jizhi_last_tuning_trials") == 40
    assert value(samples, "jizhi_rollouts_total", outcome="applied") == 2
    assert value(samples, "jizhi_rollouts_total", outcome="rolled_back") == 0
    assert value(samples, "jizhi_rollouts_total", outcome="failed") == 1
    assert value(samples, "jizhi_controller_state_loaded") == 1
    assert read_state(path).config == config
    left = sorted(p.name for p in path.parent.iterdir())  # no temporary file behind
    assert left == ["controller.json", "controller.json.lock"]


def test_autopilot_intervals_are_counted_by_action_and_error(tmp_path: Path) -> None:
    path = tmp_path / "controller.json"
    record_autopilot(AutopilotAction.HOLD, None, path, clock=lambda: 10.0)
    record_autopilot(AutopilotAction.HOLD, AutopilotError.METRICS, path, clock=lambda: 20.0)
    record_autopilot(AutopilotAction.SAVE, AutopilotError.ROLLOUT, path, clock=lambda: 30.0)
    record_autopilot(AutopilotAction.SCALE_UP, None, path, clock=lambda: 40.0)
    samples = scrape(path)
    iterations = {a.value: value(samples, "jizhi_autopilot_iterations_total", outcome=a.value)
                  for a in AutopilotAction}  # fmt: skip
    assert iterations == {"hold": 2, "scale_up": 1, "save": 1}
    errors = {r.value: value(samples, "jizhi_autopilot_errors_total", reason=r.value)
              for r in AutopilotError}  # fmt: skip
    assert errors == {
        "metrics_unavailable": 1, "metric_missing": 0, "calibration_failed": 0,
        "tuning_failed": 0, "no_feasible_config": 0, "rollout_failed": 1,
    }  # fmt: skip
    assert value(samples, "jizhi_autopilot_last_iteration_timestamp_seconds") == 40.0
    with pytest.raises(ValueError, match="'coast' is not a valid AutopilotAction"):
        record_autopilot(cast(Any, "coast"), None, path)
    assert read_state(path).autopilot_iterations[AutopilotAction.HOLD] == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: record_deploy(0.01, math.nan, 1.0, 0.05, {}, p), "predicted_p99_s: .*finite"),
        (lambda p: record_deploy(0.01, 0.02, -1.0, 0.05, {}, p), "predicted_cost_per_hour: .*0"),
        (lambda p: record_deploy(0.01, 0.02, 1.0, 0.0, {}, p), "slo_p99_s: .*greater than 0"),
        (lambda p: record_deploy(0.01, 0.02, 1.0, 0.05, {"x": object()}, p), "config is not JSON"),
        (lambda p: record_tuning(1.0, -3, p), "tuning_trials: .*0"),
        (lambda p: record_rollout(cast(Any, "promoted"), p), "'promoted' is not a valid RolloutOutcome"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_and_nothing_is_written(call, message: str, tmp_path: Path) -> None:
    path = tmp_path / "controller.json"
    with pytest.raises(ValueError, match=message):
        call(path)
    assert not path.exists()


@pytest.mark.parametrize("text", ["{not json", '{"generation": -1}', '{"colour": "blue"}', ""])
def test_an_invalid_file_is_served_as_defaults_and_the_reason_logged(
    text: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "controller.json"
    path.write_text(text)
    collector = ControllerCollector(path)
    registry = CollectorRegistry()
    registry.register(collector)
    with caplog.at_level(logging.INFO, logger="serving.monitoring.exporter"):
        samples = parse(generate_latest(registry).decode())
        generate_latest(registry)  # the same reason is not logged twice
    assert value(samples, "jizhi_config_generation") == 0
    assert value(samples, "jizhi_controller_state_loaded") == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"state file {path} is unreadable" in warnings[0].getMessage()

    record_deploy(0.01, 0.02, 1.0, 0.05, {}, path)  # a writer keeps the bad file aside
    assert (tmp_path / "controller.json.invalid").read_text() == text
    assert value(scrape(path), "jizhi_config_generation") == 1


def test_a_missing_file_is_logged_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="serving.monitoring.exporter"):
        scrape(tmp_path / "controller.json")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"no state file at {tmp_path / 'controller.json'} yet; serving the defaults")
    ]


def _rollouts(path: str, n: int) -> None:
    for _ in range(n):
        record_rollout(RolloutOutcome.ROLLED_BACK, path)


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "controller.json"
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_rollouts, args=(str(path), 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert read_state(path).rollouts[RolloutOutcome.ROLLED_BACK] == 100


def _exporter(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.monitoring.exporter", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _url(process: subprocess.Popen[str], timeout_s: float = 30.0) -> str:
    """The metrics URL the exporter logs once it listens."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.2)
        if ready:
            line = process.stderr.readline()
            lines.append(line)
            if "serving jizhi metrics on " in line:
                return line.split("serving jizhi metrics on ")[1].split()[0]
        if process.poll() is not None:
            break
    raise AssertionError(f"the exporter did not start: {''.join(lines)}")


def test_the_exporter_process_serves_the_file_on_loopback(tmp_path: Path) -> None:
    path = tmp_path / "controller.json"
    path.write_text("garbage")
    process = _exporter("--port", "0", "--state", str(path))
    try:
        url = _url(process)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert value(parse(response.read().decode()), "jizhi_controller_state_loaded") == 0
        record_deploy(0.01, 0.03, 0.75, 0.05, {}, path)
        with urllib.request.urlopen(url, timeout=10) as response:
            samples = parse(response.read().decode())
        assert value(samples, "jizhi_config_generation") == 1
        assert value(samples, "jizhi_predicted_cost_per_hour") == 0.75
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


def test_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _exporter("--port", str(port), "--state", str(tmp_path / "c.json"))
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"jizhi exporter: error: cannot listen on 127.0.0.1:{port}: ")


def test_jizhi_tune_records_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jizhi.cli import main
    from serving.monitoring import exporter
    from tests.unit.autotune.helpers import tiny_file

    state = tmp_path / "controller.json"
    monkeypatch.setattr(exporter, "STATE_FILE", state)
    spec = tiny_file(tmp_path)
    args = ["tune", str(spec), "--trials", "3", "--workers", "1", "--out", str(tmp_path / "out")]
    assert main([*args, "--no-report", "--set", "tuning.trial_requests=200"]) == 0
    recorded = read_state(state)
    assert recorded.tuning_trials == 3
    assert recorded.tuning_duration_s is not None and recorded.tuning_duration_s > 0
    assert recorded.generation == 0  # tuning deploys nothing
