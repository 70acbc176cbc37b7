"""jizhi's Grafana dashboard, built with grafana-foundation-sdk and written as provisioning JSON.

Every panel asks Prometheus through the `datasource` variable, mostly over the recording rules of
`serving.monitoring.rules` (`jizhi:*`), and over jizhi's own metrics (`jizhi_*`, served by
`serving.monitoring.exporter`) for the controller row. Regenerate the committed file with

    python -m serving.monitoring.dashboard --out deploy/grafana/dashboards/jizhi.json

and check it is current with `--check`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

__all__ = [
    "DASHBOARD_FILE",
    "UID",
    "build_dashboard",
    "expand_variables",
    "panel_queries",
    "render",
]

UID = "jizhi"
DASHBOARD_FILE = Path("deploy/grafana/dashboards/jizhi.json")

_DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
_APP = 'application=~"$application"'
_DEPLOYMENT = f'{_APP}, deployment=~"$deployment"'
_STAGE = f'{_APP}, stage=~"$stage"'
_SLO = ("max(jizhi_slo_p99_seconds)", "SLO p99")
_NONE_YET = dm.SpecialValueMap(
    dm.DashboardSpecialValueMapOptions(
        match=dm.SpecialValueMatch.NULL_AND_NAN, result=dm.ValueMappingResult(text="none yet")
    )
)
_NEVER = dm.ValueMap({"0": dm.ValueMappingResult(text="never")})

_Target = tuple[str, str]  # (PromQL, legend)
_Panel = TypeVar("_Panel", timeseries.Panel, stat.Panel)


def _targets(panel: _Panel, targets: list[_Target], instant: bool = False) -> _Panel:
    for ref, (expr, legend) in zip("ABCDEFGHIJ", targets, strict=False):
        query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
        panel.with_target(query.instant() if instant else query.range())
    return panel


def _series(
    title: str, description: str, unit: str, targets: list[_Target], span: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .span(span)
        .height(8)
        .fill_opacity(0)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    if any(legend == _SLO[1] for _, legend in targets):
        panel.override_by_name(
            _SLO[1],
            [
                dm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
                dm.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
            ],
        )
    return _targets(panel, targets)


def _stat(
    title: str,
    description: str,
    unit: str,
    targets: list[_Target],
    mappings: list[dm.ValueMapping] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .span(4)
        .height(4)
        .mappings([*(mappings or []), _NONE_YET])
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(
            common.BigValueTextMode.VALUE_AND_NAME
            if len(targets) > 1
            else common.BigValueTextMode.AUTO
        )
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _targets(panel, targets, instant=True)


def _variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(_DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text="All", value="$__all"))
    )


def _quantile(metric: str, q: float) -> str:
    return f"histogram_quantile({q}, sum by (stage, le) (rate({metric}_bucket{{{_STAGE}}}[1m])))"


def _traffic_panels() -> list[Any]:
    latency = [
        (f"jizhi:http_latency_seconds:{q}{{{_APP}}}", f"{{{{application}}}} {q}")
        for q in ("p50", "p95", "p99")
    ]
    by_deployment = [
        (f"jizhi:deployment_latency_seconds:{q}{{{_DEPLOYMENT}}}", f"{{{{deployment}}}} {q}")
        for q in ("p50", "p95", "p99")
    ]
    return [
        _series("Requests per second", "HTTP requests per application, and requests each "
                "deployment handled.", "reqps", [
            (f"sum by (application) (jizhi:http_requests:rate1m{{{_APP}}})", "{{application}}"),
            (f"sum by (deployment) (jizhi:deployment_requests:rate1m{{{_DEPLOYMENT}}})",
             "{{deployment}}"),
        ], span=8),
        _series("Latency against the SLO", "End-to-end HTTP latency quantiles over 1 min; the "
                "dashed red line is the spec's p99 objective.", "s", [*latency, _SLO], span=16),
        _series("Latency by deployment", "Time a request spent in each deployment, "
                "quantiles over 1 min.", "s", by_deployment),
        _series("Shed and errors per second", "Requests answered 503 because a queue was full "
                "(shed), and other failed requests.", "reqps", [
            (f"sum by (application) (jizhi:shed:rate1m{{{_APP}}})", "shed {{application}}"),
            (f"sum by (application) (jizhi:errors:rate1m{{{_APP}}})", "errors {{application}}"),
        ], span=6),
        _series("Shed fraction", "Share of requests shed over 1 min.", "percentunit", [
            (f"max by (application) (jizhi:shed:ratio1m{{{_APP}}})", "{{application}}"),
        ], span=6),
    ]  # fmt: skip


def _pipeline_panels() -> list[Any]:
    rows = "ray_jizhi_ranker_batch_rows"
    return [
        _series("Mean batch size", "Requests per batch each deployment ran, and rows per "
                "batch the ranker scored.", "short", [
            (f"jizhi:batch_size:mean1m{{{_DEPLOYMENT}}}", "{{deployment}} requests"),
            (f"sum by (stage) (rate({rows}_sum{{{_STAGE}}}[1m])) / "
             f"sum by (stage) (rate({rows}_count{{{_STAGE}}}[1m]))", "{{stage}} rows"),
        ], span=8),
        _series("Cache hit rate", "Share of distinct keys found in the replicas' embedding "
                "cache.", "percentunit", [
            (f"jizhi:cache_hit_ratio:1m{{{_STAGE}}}", "{{stage}}"),
        ], span=8).min(0).max(1),
        _series("Keys cut per second", "Key references skipped by the long-tail cut-off.",
                "cps", [(f"jizhi:keys_cut:rate1m{{{_STAGE}}}", "{{stage}}")], span=8),
        _series("Healthy replicas", "Replicas Serve reports healthy, per deployment.", "short", [
            (f"jizhi:replicas_healthy{{{_DEPLOYMENT}}}", "{{deployment}}"),
        ], span=8).decimals(0),
        _series("Stage handler latency", "Time a request spent in each stage's handler, "
                "quantiles over 1 min.", "s", [
            (_quantile("ray_jizhi_stage_latency_seconds", 0.5), "{{stage}} p50"),
            (_quantile("ray_jizhi_stage_latency_seconds", 0.99), "{{stage}} p99"),
        ], span=8),
        _series("Parameter-store lookup latency", "Latency of the multi-gets for keys the "
                "cache missed.", "s", [
            (_quantile("ray_jizhi_store_lookup_seconds", 0.5), "{{stage}} p50"),
            (_quantile("ray_jizhi_store_lookup_seconds", 0.99), "{{stage}} p99"),
        ], span=8),
    ]  # fmt: skip


def _controller_panels() -> list[Any]:
    return [
        _stat("Config generation", "Configs jizhi has deployed.", "none", [
            ("max(jizhi_config_generation)", "generation"),
        ]).decimals(0),
        _stat("Last deploy", "When jizhi last deployed a config.", "dateTimeFromNow", [
            ("max(jizhi_config_deployed_timestamp_seconds) * 1000", "deployed"),
        ], mappings=[_NEVER]),
        _stat("Predicted cost", "Cost per hour the simulator predicted for the deployed "
              "config.", "currencyUSD", [("max(jizhi_predicted_cost_per_hour)", "per hour")]),
        _stat("Last tuning run", "Wall time of the last completed `jizhi tune`.", "s", [
            ("max(jizhi_last_tuning_duration_seconds)", "duration"),
        ]),
        _stat("Last tuning trials", "Trials the last completed `jizhi tune` evaluated.",
              "none", [("max(jizhi_last_tuning_trials)", "trials")]).decimals(0),
        _stat("Rollouts by outcome", "Rollouts of a new config since the state file began.",
              "none", [("sum by (outcome) (jizhi_rollouts_total)", "{{outcome}}")]).decimals(0),
        _stat("Autopilot intervals by action", "Intervals the autopilot held, raised capacity "
              "or saved cost.", "none", [
            ("sum by (outcome) (jizhi_autopilot_iterations_total)", "{{outcome}}"),
        ]).decimals(0),
        _stat("Autopilot errors", "Intervals that kept the config because a step failed "
              "(retried the next interval); the reasons are on the Autopilot actions panel.",
              "none", [("sum(jizhi_autopilot_errors_total)", "errors")]).decimals(0),
        _stat("Last autopilot interval", "When the autopilot last finished an interval.",
              "dateTimeFromNow", [
            ("max(jizhi_autopilot_last_iteration_timestamp_seconds) * 1000", "interval"),
        ], mappings=[_NEVER]),
        _series("Autopilot actions", "Autopilot decisions and errors per 10 minutes.", "short", [
            ("sum by (outcome) (increase(jizhi_autopilot_iterations_total[10m]))",
             "{{outcome}}"),
            ("sum by (reason) (increase(jizhi_autopilot_errors_total[10m]))",
             "error: {{reason}}"),
        ], span=12),
        _series("Predicted vs observed latency", "The simulator's prediction for the deployed "
                "config next to the measured latency and the SLO.", "s", [
            ('max(jizhi_predicted_latency_seconds{quantile="0.5"})', "predicted p50"),
            ('max(jizhi_predicted_latency_seconds{quantile="0.99"})', "predicted p99"),
            (f"max(jizhi:http_latency_seconds:p50{{{_APP}}})", "observed p50"),
            (f"max(jizhi:http_latency_seconds:p99{{{_APP}}})", "observed p99"),
            _SLO,
        ], span=24),
    ]  # fmt: skip


def build_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a plain dict, ready for `render`)."""
    builder = (
        db.Dashboard("jizhi: serving and tuning")
        .uid(UID)
        .description("Traffic, latency against the SLO, batching, cache and jizhi's own state.")
        .tags(["jizhi", "ray-serve"])
        .time("now-30m", "now")
        .refresh("10s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            _variable(
                "application",
                "Application",
                "label_values(jizhi:http_requests:rate1m, application)",
            )
        )
        .with_variable(
            _variable(
                "deployment",
                "Deployment",
                f"label_values(jizhi:replicas_healthy{{{_APP}}}, deployment)",
            )
        )
        .with_variable(
            _variable(
                "stage",
                "Stage",
                f"label_values(ray_jizhi_stage_latency_seconds_count{{{_APP}}}, stage)",
            )
        )
        .annotation(
            db.AnnotationQuery()
            .name("Deploys")
            .datasource(_DATASOURCE)
            .enable(True)
            .icon_color("blue")
            .expr("changes(jizhi_config_generation[2m]) > 0")
        )
    )
    for title, panels in (
        ("Traffic and latency", _traffic_panels()),
        ("Batching, cache and replicas", _pipeline_panels()),
        ("jizhi controller", _controller_panels()),
    ):
        builder.with_row(db.Row(title))
        for panel in panels:
            builder.with_panel(panel)
    dashboard: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(_panels(dashboard["panels"]), start=1):
        panel["id"] = number
    return dashboard


def render(dashboard: Mapping[str, Any]) -> str:
    """The JSON text written to the provisioning folder (stable: sorted keys, one trailing newline)."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows after their row."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, inside rows too, in order."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in _panels(list(dashboard.get("panels") or []))
        for target in panel.get("targets") or []
        if target.get("expr")
    ]


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """`expr` with each dashboard variable replaced by its value in `values` (default `.*`, what
    "All" means), so that Prometheus itself can run a panel's query."""
    values = values or {}
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ".*"), expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.monitoring.dashboard",
        description="Write jizhi's Grafana dashboard (JSON) for provisioning.",
    )
    parser.add_argument("--out", default=str(DASHBOARD_FILE), help=f"default {DASHBOARD_FILE}")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when --out differs from a fresh build"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    text = render(build_dashboard())
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run python -m serving.monitoring.dashboard --out {out}")
            return 1
        print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
