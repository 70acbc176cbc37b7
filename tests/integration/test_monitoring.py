"""The dashboard against reality: a real Prometheus with jizhi's rules scrapes the real
deployment (and jizhi's exporter) while `jizhi load` drives it, and every panel's query returns
data. A panel whose query comes back empty here would be empty for an operator too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jizhi.cli import main
from serving import cluster
from serving.monitoring import prometheus, rules
from serving.monitoring.dashboard import DASHBOARD_FILE, expand_variables, panel_queries
from serving.monitoring.exporter import read_state
from simulator import load_spec

from .services import EXAMPLE_SPEC, ROOT, SMALL, free_port

pytestmark = pytest.mark.integration

LOAD_RPS = 15.0  # the SMALL deployment keeps up with ~20 req/s on 2 shared cores
LOAD_S = 40.0


def test_every_dashboard_panel_gets_data_from_prometheus_scraping_the_deployment(
    served: Path, tmp_path: Path, controller_state: Path
) -> None:
    # a cut-off, so that keys are cut; `jizhi serve` records the deploy for the exporter
    with_cutoff = [*SMALL, "--set", "features.cutoff_rank=5000"]
    assert main(["serve", EXAMPLE_SPEC, "--model", str(served), *with_cutoff]) == 0
    generation = read_state(controller_state).generation
    assert generation >= 1

    exporter = prometheus.Exporter(port=free_port(), state=controller_state)
    settings = rules.MonitorSettings(
        ray_metrics=f"127.0.0.1:{cluster.METRICS_PORT}", exporter=f"127.0.0.1:{exporter.port}"
    )
    prometheus.write_files(tmp_path, rules.render(load_spec(EXAMPLE_SPEC), settings))
    state_file = tmp_path / "prometheus.json"
    running = prometheus.start(
        tmp_path / "prometheus.yml",
        free_port(),
        exporter=exporter,
        work_dir=tmp_path,
        state_file=state_file,
    )
    try:
        report = tmp_path / "load.json"
        load = ["load", "http://127.0.0.1:8000", "--rate", str(LOAD_RPS), "--duration",
                str(LOAD_S), "--model", str(served), "--seed", "3", "--out", str(report)]  # fmt: skip
        assert main(load) == 0
        assert json.loads(report.read_text())["ok"] > 0.9 * LOAD_RPS * LOAD_S

        dashboard = json.loads((ROOT / DASHBOARD_FILE).read_text())
        queries = panel_queries(dashboard)
        assert len(queries) >= 15
        empty = queries
        deadline = time.monotonic() + 60  # the recording rules run every 5 s on 1 m windows
        while empty and time.monotonic() < deadline:
            empty = [
                (t, q) for t, q in empty if not prometheus.query(running.url, expand_variables(q))
            ]
            if empty:
                time.sleep(3)
        assert not empty, f"panels without data: {empty}"

        up = prometheus.query(running.url, "up")
        assert {s.labels["job"]: s.value for s in up} == {"ray": 1.0, "jizhi": 1.0}
        observed = prometheus.query(
            running.url, 'jizhi:http_latency_seconds:p99{application="jizhi"}'
        )
        assert observed and 0.0 < observed[0].value < 5.0
        assert prometheus.query(running.url, "jizhi_config_generation")[0].value == generation
        hit = prometheus.query(running.url, 'jizhi:cache_hit_ratio:1m{stage="features"}')
        assert hit and 0.0 < hit[0].value < 1.0
    finally:
        prometheus.stop(state_file)
        main(["serve", EXAMPLE_SPEC, "--model", str(served), *SMALL])
