"""`jizhi monitor up SPEC | down | status | rules SPEC --out DIR`: Prometheus with jizhi's rules.

`up` writes the scrape config, the recording rules and the spec's SLO alerts under
`.jizhi/prometheus/`, starts Prometheus on loopback and jizhi's exporter next to it; `rules`
writes the same files plus their promtool unit tests to a folder (this is how
`deploy/prometheus/` is made).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from jizhi.commands._args import whole_number
from simulator.errors import InputError

if TYPE_CHECKING:
    from serving.monitoring.rules import MonitorSettings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = subparsers.add_parser(
        "monitor",
        help="Prometheus for a local deployment: scrape config, recording rules, SLO alerts",
        description="Start, stop and inspect a loopback Prometheus with jizhi's rules, or write "
        "its config and rules for an existing Prometheus.",
    )
    actions = monitor.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up", help="start Prometheus (and jizhi's exporter) on loopback with SPEC's SLO alerts"
    )
    up.add_argument("spec", help="pipeline spec (YAML): its slo sets the alert thresholds")
    _rule_arguments(up)
    up.add_argument("--port", type=whole_number, default=9090, help="Prometheus port (9090)")
    up.add_argument(
        "--no-exporter",
        action="store_true",
        help="do not start jizhi's exporter (scrape it anyway)",
    )
    up.add_argument(
        "--state",
        help="controller state file the exporter serves (default .jizhi/controller.json)",
    )
    up.set_defaults(func=run_up)

    down = actions.add_parser("down", help="stop the Prometheus and exporter jizhi started")
    down.set_defaults(func=run_down)
    status = actions.add_parser("status", help="targets, rules and firing alerts")
    status.set_defaults(func=run_status)

    rules = actions.add_parser(
        "rules", help="write prometheus.yml, the rule files and their promtool tests to a folder"
    )
    rules.add_argument("spec", help="pipeline spec (YAML): its slo sets the alert thresholds")
    rules.add_argument("--out", required=True, help="output folder, e.g. deploy/prometheus")
    _rule_arguments(rules)
    rules.set_defaults(func=run_rules)


def _exporter_port(args: argparse.Namespace) -> int:
    from serving.monitoring.exporter import EXPORTER_PORT

    return int(args.exporter_port if args.exporter_port is not None else EXPORTER_PORT)


def _rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray-metrics",
        metavar="HOST:PORT",
        help="Ray's metrics export address (default: the local head's, 127.0.0.1:8080)",
    )
    parser.add_argument(
        "--ray-discovery",
        nargs="?",
        const="",
        metavar="FILE",
        help="also scrape every node listed in Ray's service-discovery file (multi-node; "
        "default file /tmp/ray/prom_metrics_service_discovery.json)",
    )
    parser.add_argument(
        "--exporter-port",
        type=whole_number,
        help="jizhi's exporter port (9108)",
    )
    parser.add_argument(
        "--for", dest="burn_for", default="5m", help="how long an SLO may burn before it alerts"
    )
    parser.add_argument("--interval", default="5s", help="scrape and rule evaluation interval")


def _port(value: int, what: str) -> int:
    if not 0 < value < 65536:
        raise InputError(f"{what}: a port is 1..65535 (got {value})")
    return value


def _ray_metrics_default() -> str:
    """The metrics port of the Ray head `jizhi serve` started, else Ray's usual 8080."""
    from serving import cluster

    port = cluster.METRICS_PORT
    if cluster.STATE_FILE.is_file():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            port = int(json.loads(cluster.STATE_FILE.read_text()).get("metrics_port", port))
    return f"127.0.0.1:{port}"


def _settings(args: argparse.Namespace) -> MonitorSettings:
    from serving.monitoring.rules import RAY_DISCOVERY_FILE, Duration, MonitorSettings

    discovery = args.ray_discovery
    return MonitorSettings(
        ray_metrics=args.ray_metrics or _ray_metrics_default(),
        ray_discovery=RAY_DISCOVERY_FILE if discovery == "" else discovery,
        exporter=f"127.0.0.1:{_port(_exporter_port(args), '--exporter-port')}",
        interval=Duration.parse(args.interval, "--interval"),
        burn_for=Duration.parse(args.burn_for, "--for"),
    )


def run_rules(args: argparse.Namespace) -> int:
    from serving.monitoring import promtool_tests, rules
    from serving.monitoring.prometheus import write_files
    from simulator import load_spec

    spec = load_spec(args.spec)
    settings = _settings(args)
    files = {**rules.render(spec, settings), **promtool_tests.render(spec, settings)}
    for path in write_files(Path(args.out), files):
        print(f"wrote {path}")
    return 0


def run_up(args: argparse.Namespace) -> int:
    from serving.monitoring import prometheus, rules
    from simulator import load_spec

    spec = load_spec(args.spec)
    settings = _settings(args)
    port = _port(args.port, "--port")
    current = prometheus.running()
    if current is not None:
        raise InputError(f"Prometheus already runs at {current.url}: `jizhi monitor down` first")
    config = prometheus.write_files(prometheus.WORK_DIR, rules.render(spec, settings))[0]
    exporter = None
    if not args.no_exporter:
        from serving.monitoring.exporter import STATE_FILE

        exporter = prometheus.Exporter(
            port=_exporter_port(args), state=Path(args.state or STATE_FILE)
        )
    started = prometheus.start(config, port, exporter=exporter)
    print(f"Prometheus on {started.url} (config {config})")
    print(f"  scraping Ray at {settings.ray_metrics} and jizhi's exporter at {settings.exporter}")
    print(
        f"  alerts: p99 > {spec.slo.p99_s * 1000:g}ms or shed rate > {spec.slo.max_shed_rate:g}"
        f" for {settings.burn_for}; replicas below target for {rules.REPLICAS_FOR}"
    )
    print("stop it with `jizhi monitor down`")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from serving.monitoring import prometheus

    stopped = prometheus.stop()
    print("stopped the Prometheus jizhi started" if stopped else "no Prometheus started by jizhi")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from serving.monitoring import prometheus

    state = prometheus.running()
    if state is None:
        print("no Prometheus started by jizhi (start one with `jizhi monitor up SPEC`)")
        return 0
    print(f"Prometheus {state.url} (pid {state.pid}, config {state.config})")
    if state.exporter_url:
        print(f"exporter {state.exporter_url} (pid {state.exporter_pid})")
    targets = prometheus.api(state.url, "/api/v1/targets")["activeTargets"]
    if not targets:
        print("  no targets yet (Prometheus applies its scrape config within 5 s)")
    for target in targets:
        error = f" ({target['lastError']})" if target.get("lastError") else ""
        print(
            f"  target {target['labels']['job']:<6} {target['scrapeUrl']}: {target['health']}{error}"
        )
    rules = [r for g in prometheus.api(state.url, "/api/v1/rules")["groups"] for r in g["rules"]]
    healthy = sum(r["health"] == "ok" for r in rules)
    print(f"  rules: {len(rules)} loaded, {healthy} evaluated ok")
    alerts = prometheus.api(state.url, "/api/v1/alerts")["alerts"]
    for alert in alerts:
        labels = alert["labels"]
        where = labels.get("deployment") or labels.get("application", "")
        print(f"  alert {labels['alertname']} {where}: {alert['state']}")
    if not alerts:
        print("  no alerts pending or firing")
    return 0
