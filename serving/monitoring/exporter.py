"""jizhi's own metrics: what the tuner and the controller did, for Prometheus and the dashboard.

CLI processes (`jizhi serve`, `jizhi tune`, a rollout) record events into a JSON state file,
`.jizhi/controller.json` by default, written atomically under a file lock; a long-running
exporter serves it on `EXPORTER_PORT` and re-reads the file at every scrape, so it never holds
state of its own and can be restarted at any time.

>>> generation = record_deploy(0.012, 0.041, 1.25, 0.05, {"ranker": {"replicas": 2}})
>>> record_rollout(RolloutOutcome.APPLIED)
>>> record_autopilot(AutopilotAction.HOLD, AutopilotError.METRICS)

and, in another terminal, `python -m serving.monitoring.exporter --port 9108`.

Every metric exists from the first scrape on, so a Grafana panel always gets a series: counts
and the generation start at 0, the deploy timestamp at 0 (never deployed), and values that have
no meaning yet (predicted latency and cost, the SLO, the last tuning run) are NaN.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import socketserver
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.errors import ServiceError

__all__ = [
    "EXPORTER_PORT",
    "METRIC_NAMES",
    "STATE_FILE",
    "AutopilotAction",
    "AutopilotError",
    "ControllerCollector",
    "ControllerState",
    "RolloutOutcome",
    "read_state",
    "record_autopilot",
    "record_deploy",
    "record_rollout",
    "record_tuning",
    "serve_exporter",
]

EXPORTER_PORT = 9108
STATE_FILE = Path(".jizhi") / "controller.json"

log = logging.getLogger(__name__)


class RolloutOutcome(str, Enum):
    """How a rollout of a new config ended."""

    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class AutopilotAction(str, Enum):
    """What the autopilot decided in one interval."""

    HOLD = "hold"  # keep the live config
    SCALE_UP = "scale_up"  # the SLO is at risk: roll out the tuned config at once
    SAVE = "save"  # a confirmed saving: roll out the cheaper tuned config


class AutopilotError(str, Enum):
    """Why an autopilot interval kept the live config without judging it (retried next interval)."""

    METRICS = "metrics_unavailable"  # Prometheus or Ray's metrics endpoint did not answer
    METRIC_MISSING = "metric_missing"  # requests flowed but their latency was not reported
    CALIBRATION = "calibration_failed"  # re-calibrating the spec raised
    TUNING = "tuning_failed"  # the tuning run (or a prediction) raised
    NO_FEASIBLE = "no_feasible_config"  # no config held the constraints at the live rate
    ROLLOUT = "rollout_failed"  # the deploy failed (the old config was restored)


# Exported name (as Prometheus sees it) → (kind, description); the dashboard is tested against it.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "jizhi_config_generation": ("gauge", "configs jizhi has deployed (0: none yet)"),
    "jizhi_config_deployed_timestamp_seconds": (
        "gauge",
        "Unix time of the last deploy (0: none yet)",
    ),
    "jizhi_predicted_latency_seconds": (
        "gauge",
        "end-to-end latency the simulator predicted for the deployed config, by quantile",
    ),
    "jizhi_predicted_cost_per_hour": ("gauge", "cost per hour predicted for the deployed config"),
    "jizhi_slo_p99_seconds": ("gauge", "the p99 latency objective of the deployed spec"),
    "jizhi_last_tuning_duration_seconds": ("gauge", "wall time of the last completed tuning run"),
    "jizhi_last_tuning_trials": ("gauge", "trials the last completed tuning run evaluated"),
    "jizhi_rollouts_total": ("counter", "rollouts of a new config, by outcome"),
    "jizhi_autopilot_iterations_total": ("counter", "autopilot intervals, by the action decided"),
    "jizhi_autopilot_errors_total": (
        "counter",
        "autopilot intervals that kept the config because a step failed, by reason",
    ),
    "jizhi_autopilot_last_iteration_timestamp_seconds": (
        "gauge",
        "Unix time of the autopilot's last interval (0: none yet)",
    ),
    "jizhi_controller_state_loaded": (
        "gauge",
        "1 when the values come from the state file, 0 when it is missing or unreadable",
    ),
}

_QUANTILES = (("0.5", "predicted_p50_s"), ("0.99", "predicted_p99_s"))

_Finite = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0)]


class ControllerState(BaseModel):
    """The state file: the last deploy, the last tuning run, the rollout and autopilot counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    generation: _Count = 0
    deployed_at: _Finite | None = None
    predicted_p50_s: _Finite | None = None
    predicted_p99_s: _Finite | None = None
    predicted_cost_per_hour: _Finite | None = None
    slo_p99_s: _Positive | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    tuning_duration_s: _Finite | None = None
    tuning_trials: _Count | None = None
    tuned_at: _Finite | None = None
    rollouts: dict[RolloutOutcome, _Count] = Field(
        default_factory=lambda: dict.fromkeys(RolloutOutcome, 0)
    )
    autopilot_iterations: dict[AutopilotAction, _Count] = Field(
        default_factory=lambda: dict.fromkeys(AutopilotAction, 0)
    )
    autopilot_errors: dict[AutopilotError, _Count] = Field(
        default_factory=lambda: dict.fromkeys(AutopilotError, 0)
    )
    autopilot_at: _Finite | None = None


def _changed(state: ControllerState, **fields: Any) -> ControllerState:
    """A copy of `state` with `fields` replaced, validated like the file (bad values raise)."""
    try:
        return ControllerState.model_validate({**state.model_dump(), **fields})
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _parse_state(text: str) -> ControllerState:
    """The state in a state file's text; ValueError with a one-line reason when it is invalid."""
    try:
        return ControllerState.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None


def _resolve(path: Path | str | None) -> Path:
    """`path`, or `STATE_FILE` as it is at call time (tests and tools may point it elsewhere)."""
    return STATE_FILE if path is None else Path(path)


def read_state(path: Path | str | None = None) -> ControllerState:
    """The recorded state (the defaults when no file exists); ValueError when it is invalid."""
    path = _resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ControllerState()
    try:
        return _parse_state(text)
    except ValueError as exc:
        raise ValueError(f"state file {path} is invalid: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of `path` with an exclusive lock on a file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f"{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        temp.chmod(0o644)  # the exporter may run as another user
        temp.replace(path)  # atomic: a reader sees the old file or the new one
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _update(
    path: Path | str | None, change: Callable[[ControllerState], ControllerState]
) -> ControllerState:
    """Read, change and write the state under the lock; an invalid file is kept aside and replaced."""
    path = _resolve(path)
    with _locked(path):
        try:
            state = read_state(path)
        except ValueError as exc:
            aside = path.with_name(f"{path.name}.invalid")
            path.replace(aside)
            log.warning("%s; moved it to %s and started a fresh state", exc, aside)
            state = ControllerState()
        new = change(state)
        _write_atomically(path, new.model_dump_json(indent=2) + "\n")
    return new


def record_deploy(
    predicted_p50_s: float,
    predicted_p99_s: float,
    predicted_cost_per_hour: float,
    slo_p99_s: float,
    config: dict[str, Any],
    path: Path | str | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> int:
    """Record that `config` was deployed with these predictions; returns its config generation."""
    try:
        config = json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config is not JSON data: {exc}") from None

    def deployed(state: ControllerState) -> ControllerState:
        return _changed(
            state,
            generation=state.generation + 1,
            deployed_at=clock(),
            predicted_p50_s=predicted_p50_s,
            predicted_p99_s=predicted_p99_s,
            predicted_cost_per_hour=predicted_cost_per_hour,
            slo_p99_s=slo_p99_s,
            config=config,
        )

    return _update(path, deployed).generation


def record_tuning(
    duration_s: float,
    trials: int,
    path: Path | str | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Record a completed tuning run: its wall time and the trials it evaluated."""
    _update(
        path,
        lambda state: _changed(
            state, tuning_duration_s=duration_s, tuning_trials=trials, tuned_at=clock()
        ),
    )


def record_rollout(outcome: RolloutOutcome, path: Path | str | None = None) -> None:
    """Count one rollout that ended with `outcome`."""
    outcome = RolloutOutcome(outcome)

    def counted(state: ControllerState) -> ControllerState:
        rollouts = dict(state.rollouts)
        rollouts[outcome] = rollouts.get(outcome, 0) + 1
        return _changed(state, rollouts=rollouts)

    _update(path, counted)


def record_autopilot(
    action: AutopilotAction,
    error: AutopilotError | None = None,
    path: Path | str | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Count one autopilot interval: the action it decided and, when a step failed, why."""
    action = AutopilotAction(action)
    error = None if error is None else AutopilotError(error)

    def counted(state: ControllerState) -> ControllerState:
        iterations = dict(state.autopilot_iterations)
        iterations[action] = iterations.get(action, 0) + 1
        errors = dict(state.autopilot_errors)
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
        return _changed(
            state, autopilot_iterations=iterations, autopilot_errors=errors, autopilot_at=clock()
        )

    _update(path, counted)


def _value(value: float | None, default: float = math.nan) -> float:
    return default if value is None else float(value)


def _families(state: ControllerState, loaded: bool) -> list[Metric]:
    """The metric families for a state; pure, so the collector and its tests share it."""

    def gauge(name: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, METRIC_NAMES[name][1], value=value)

    latency = GaugeMetricFamily(
        "jizhi_predicted_latency_seconds",
        METRIC_NAMES["jizhi_predicted_latency_seconds"][1],
        labels=["quantile"],
    )
    for quantile, field in _QUANTILES:
        latency.add_metric([quantile], _value(getattr(state, field)))
    rollouts = CounterMetricFamily(
        "jizhi_rollouts", METRIC_NAMES["jizhi_rollouts_total"][1], labels=["outcome"]
    )
    for outcome in RolloutOutcome:
        rollouts.add_metric([outcome.value], float(state.rollouts.get(outcome, 0)))
    iterations = CounterMetricFamily(
        "jizhi_autopilot_iterations",
        METRIC_NAMES["jizhi_autopilot_iterations_total"][1],
        labels=["outcome"],
    )
    for action in AutopilotAction:
        iterations.add_metric([action.value], float(state.autopilot_iterations.get(action, 0)))
    errors = CounterMetricFamily(
        "jizhi_autopilot_errors", METRIC_NAMES["jizhi_autopilot_errors_total"][1], labels=["reason"]
    )
    for reason in AutopilotError:
        errors.add_metric([reason.value], float(state.autopilot_errors.get(reason, 0)))
    return [
        gauge("jizhi_config_generation", float(state.generation)),
        gauge("jizhi_config_deployed_timestamp_seconds", _value(state.deployed_at, 0.0)),
        latency,
        gauge("jizhi_predicted_cost_per_hour", _value(state.predicted_cost_per_hour)),
        gauge("jizhi_slo_p99_seconds", _value(state.slo_p99_s)),
        gauge("jizhi_last_tuning_duration_seconds", _value(state.tuning_duration_s)),
        gauge(
            "jizhi_last_tuning_trials",
            _value(None if state.tuning_trials is None else float(state.tuning_trials)),
        ),
        rollouts,
        iterations,
        errors,
        gauge("jizhi_autopilot_last_iteration_timestamp_seconds", _value(state.autopilot_at, 0.0)),
        gauge("jizhi_controller_state_loaded", 1.0 if loaded else 0.0),
    ]


class ControllerCollector(Collector):
    """A prometheus_client collector that re-reads the state file at every scrape.

    A missing or invalid file never fails a scrape: the defaults are served, and the reason is
    logged once each time it changes.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self._path = _resolve(path)
        self._problem: str | None = None

    def describe(self) -> Iterable[Metric]:
        return _families(ControllerState(), loaded=False)

    def collect(self) -> Iterable[Metric]:
        level, problem = logging.INFO, None
        try:
            state = _parse_state(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state, problem = ControllerState(), f"no state file at {self._path} yet"
        except (OSError, ValueError) as exc:
            level, problem = logging.WARNING, f"state file {self._path} is unreadable: {exc}"
            state = ControllerState()
        if problem != self._problem:
            log.log(level, f"{problem}; serving the defaults" if problem else f"read {self._path}")
            self._problem = problem
        return _families(state, loaded=problem is None)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


def serve_exporter(port: int = EXPORTER_PORT, state_path: Path | str | None = None) -> None:
    """Serve `/metrics` on 127.0.0.1:`port` (0: any free port) until interrupted."""
    state_path = _resolve(state_path)
    registry = CollectorRegistry()
    registry.register(ControllerCollector(state_path))
    try:
        server = make_server(
            "127.0.0.1", port, make_wsgi_app(registry), _Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ServiceError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    with server:
        log.info(
            "serving jizhi metrics on http://127.0.0.1:%d/metrics from %s",
            server.server_port,
            state_path,
        )
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.monitoring.exporter",
        description="Serve jizhi's own metrics (the controller state file) for Prometheus.",
    )
    parser.add_argument(
        "--port", type=int, default=EXPORTER_PORT, help=f"port (default {EXPORTER_PORT})"
    )
    parser.add_argument("--state", default=str(STATE_FILE), help=f"default {STATE_FILE}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_exporter(args.port, args.state)
    except ServiceError as exc:
        print(f"jizhi exporter: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
