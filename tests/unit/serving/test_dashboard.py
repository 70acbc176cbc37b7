"""The Grafana dashboard: committed JSON is current, every panel queries the right names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.metrics import NAMES
from serving.monitoring.dashboard import (
    build_dashboard,
    expand_variables,
    main,
    panel_queries,
    render,
)
from serving.monitoring.exporter import METRIC_NAMES
from serving.monitoring.rules import RECORDING_RULES
from tests.conftest import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
COMMITTED = GRAFANA / "dashboards" / "jizhi.json"

# The dashboard may use every recording rule of serving/monitoring/rules.py (whose names
# tests/unit/serving/test_prometheus_rules.py pins), and uses all of them.
RULES = set(RECORDING_RULES)
# serving metrics the dashboard shows through a rule rather than by name
VIA_RULES = {
    "ray_jizhi_cache_hits_total": "jizhi:cache_hit_ratio:1m",
    "ray_jizhi_cache_misses_total": "jizhi:cache_hit_ratio:1m",
    "ray_jizhi_keys_cut_total": "jizhi:keys_cut:rate1m",
}
NOT_ON_THE_DASHBOARD = {"jizhi_controller_state_loaded"}  # the exporter's own health

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return build_dashboard()


def names(exprs: list[str]) -> set[str]:
    return {token for expr in exprs for token in _NAME.findall(expr)}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, rows' panels included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.extend(panel.get("panels") or [])
        if panel["type"] != "row":
            out.append(panel)
    return out


def test_the_committed_json_is_a_fresh_build(dashboard: dict[str, Any]) -> None:
    assert COMMITTED.read_text() == render(dashboard), (
        "run: python -m serving.monitoring.dashboard --out deploy/grafana/dashboards/jizhi.json"
    )


def test_check_flag_tells_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--out", str(COMMITTED)]) == 0
    stale = tmp_path / "jizhi.json"
    stale.write_text("{}\n")
    assert main(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(["--out", str(stale)]) == 0
    assert json.loads(stale.read_text())["uid"] == "jizhi"


def test_every_panel_queries_prometheus_through_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uses = {"type": "prometheus", "uid": "${datasource}"}
    for name in ("application", "deployment", "stage"):
        assert variables[name]["datasource"] == uses
    assert all(a["datasource"] == uses for a in dashboard["annotations"]["list"])
    shown = panels(dashboard)
    assert len(shown) >= 15
    for panel in shown:
        assert panel["datasource"] == uses, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
        assert all(t.get("datasource", uses) == uses for t in panel["targets"]), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_ids_are_unique_and_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_rules_used_are_exactly_the_recording_rules(dashboard: dict[str, Any]) -> None:
    exprs = [e for _, e in panel_queries(dashboard)]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"]]
    assert {n for n in names(exprs) if n.startswith("jizhi:")} == RULES


def test_every_serving_metric_is_shown(dashboard: dict[str, Any]) -> None:
    used = names([e for _, e in panel_queries(dashboard)])
    for name, (kind, _) in NAMES.items():
        if name in VIA_RULES:
            assert VIA_RULES[name] in used, name
            continue
        forms = {name}
        if kind == "histogram":
            forms = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        assert forms & used, f"no panel shows {name}"


def test_every_exporter_metric_is_shown(dashboard: dict[str, Any]) -> None:
    used = names([e for _, e in panel_queries(dashboard)])
    assert set(METRIC_NAMES) - used == NOT_ON_THE_DASHBOARD


def test_the_slo_is_a_series_on_the_latency_panels(dashboard: dict[str, Any]) -> None:
    queries = panel_queries(dashboard)
    for title in ("Latency against the SLO", "Predicted vs observed latency"):
        assert (title, "max(jizhi_slo_p99_seconds)") in queries


def test_queries_use_only_the_dashboards_own_variables(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for title, expr in panel_queries(dashboard):
        assert "$__" not in expr, title  # Grafana built-ins would not run in Prometheus
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined - {"datasource"}, (title, used)


def test_every_query_parses_as_promql(dashboard: dict[str, Any]) -> None:
    import promql_parser  # a dev dependency: a parser of Prometheus's grammar (Rust)

    exprs = [e for _, e in panel_queries(dashboard)]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    for expr in exprs:
        promql_parser.parse(expand_variables(expr))  # raises ValueError with the parser's reason


def test_panel_queries_walks_collapsed_rows() -> None:
    target = {"expr": "up", "refId": "A"}
    dashboard = {
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [target, {"expr": ""}]},
            {"type": "row", "title": "r", "collapsed": True, "panels": [
                {"type": "stat", "title": "inside", "targets": [{"expr": "sum(up)"}]},
            ]},
            {"type": "text", "title": "no targets"},
        ]
    }  # fmt: skip
    assert panel_queries(dashboard) == [("top", "up"), ("inside", "sum(up)")]


def test_expand_variables() -> None:
    expr = 'x{a=~"$application", d=~"${deployment}"}'
    assert expand_variables(expr) == 'x{a=~".*", d=~".*"}'
    assert expand_variables(expr, {"application": "jizhi"}) == 'x{a=~"jizhi", d=~".*"}'


def test_provisioning_points_grafana_at_the_dashboard_folder() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["isDefault"]) == ("prometheus", True)
    assert source["url"].startswith("http://127.0.0.1:")
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/jizhi.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${JIZHI_DASHBOARDS_DIR}"
    assert COMMITTED.parent.name == "dashboards"
