"""Thin wrappers over a local Ray head and Serve's REST API (the dashboard, port 8265).

`jizhi serve` starts a head on loopback when none answers, deploys with `PUT
/api/serve/applications/` — what `serve deploy` does, so a later deploy of a changed config is
applied in place — and polls the application until it runs or fails. The head it starts is
recorded in `STATE_FILE`, so `jizhi serve --stop` stops only what jizhi started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from simulator.errors import InputError, ServiceError

__all__ = ["DASHBOARD", "ServeError", "deploy", "ensure_head", "stop_head", "wait_running"]

DASHBOARD = "http://127.0.0.1:8265"
METRICS_PORT = 8080
STATE_FILE = Path(".jizhi") / "ray-head.json"


class ServeError(ServiceError):
    """The cluster or the application did not do what was asked; the message says why."""


def _request(method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{DASHBOARD}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip() else None


def head_running() -> bool:
    try:
        _request("GET", "/api/version", timeout=2.0)
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")  # local loopback head: no token (BRIEF §3)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray runs workers at niceness 15 by default, so on a shared machine any other process (a
    # load client, a build) takes the CPU from the replicas first; serving runs at normal priority.
    env.setdefault("RAY_worker_niceness", "0")
    # Metrics every 2 s instead of Ray's 10 s, so that rollout checks and the autopilot see
    # short windows.
    env.setdefault("RAY_metrics_report_interval_ms", "2000")
    return env


def ensure_head(
    num_cpus: float, num_gpus: int | None = None, metrics_port: int = METRICS_PORT
) -> bool:
    """Start a loopback Ray head unless one answers; True when this call started it.

    Resource requests are logical: the head advertises at least `num_cpus` CPUs so that a
    config sized for production replicas also runs on a small machine.
    """
    if head_running():
        return False
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        raise ServeError("the `ray` command is not installed in this environment")
    command = [
        ray, "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", "8265",
        "--num-cpus", str(max(int(num_cpus + 0.999), os.cpu_count() or 1)),
        "--metrics-export-port", str(metrics_port),
        "--disable-usage-stats",
    ]  # fmt: skip
    if num_gpus is not None:
        command += ["--num-gpus", str(num_gpus)]
    # `--block` keeps `ray start` in the foreground as the parent of the head's processes, in a
    # session of its own: stopping it by its process group stops exactly what we started.
    log = STATE_FILE.parent / "ray-head.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--block"], env=_ray_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while not head_running():
        if process.poll() is not None:
            raise ServeError(f"ray start failed: {log.read_text().strip()[-400:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGTERM)
            raise ServeError("the Ray dashboard did not answer within 90 s after ray start")
        time.sleep(0.5)
    STATE_FILE.write_text(json.dumps({"pgid": process.pid, "metrics_port": metrics_port}))
    return True


def cluster_gpus() -> float:
    """GPUs the running cluster offers (from the dashboard's node list)."""
    try:
        nodes = _request("GET", "/nodes?view=summary")["data"]["summary"]
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return 0.0
    total = 0.0
    for node in nodes:
        resources = (node.get("raylet") or {}).get("resourcesTotal") or {}
        total += float(resources.get("GPU", 0.0))
    return total


def deploy(config: dict[str, Any]) -> float:
    """Apply a Serve config (in place when only config-file fields changed); returns the time of
    the request, for `wait_running(since=...)`."""
    needs_gpu = any(
        d.get("ray_actor_options", {}).get("num_gpus")
        for app in config["applications"]
        for d in app["deployments"]
    )
    if needs_gpu and cluster_gpus() == 0:
        raise InputError(
            "the config runs the ranker on a GPU but the Ray cluster has none: "
            "set ranker.device=cpu or deploy to a cluster with GPU nodes"
        )
    requested = time.time()
    try:
        _request("PUT", "/api/serve/applications/", config, timeout=60.0)
        return requested
    except urllib.error.HTTPError as exc:
        raise ServeError(
            f"deploy rejected: HTTP {exc.code}: {exc.read().decode()[-600:]}"
        ) from None


def status() -> dict[str, Any]:
    """Serve's view of the applications and deployments (the dashboard's JSON)."""
    try:
        result: dict[str, Any] = _request("GET", "/api/serve/applications/")
    except (urllib.error.URLError, OSError) as exc:
        raise ServeError(f"no Ray dashboard at {DASHBOARD} ({exc})") from None
    return result


def wait_running(app: str, since: float = 0.0, timeout_s: float = 180.0) -> dict[str, Any]:
    """Poll until `app`, deployed at or after `since` (epoch seconds), is RUNNING; raise with
    Serve's message when it fails or times out."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status().get("applications", {}).get(app, {})
        state = last.get("status")
        if float(last.get("last_deployed_time_s") or 0.0) < since - 1.0:
            time.sleep(0.5)  # Serve still shows the previous deploy
            continue
        if state == "RUNNING":
            return last
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServeError(f"application {app} is {state}: {_why(last)}")
        time.sleep(0.5)
    raise ServeError(f"application {app} not running after {timeout_s:.0f} s: {_why(last)}")


def _why(app: dict[str, Any]) -> str:
    """Serve's messages, each cut to its last line (a replica's traceback ends with the error)."""
    messages = [app.get("message") or ""]
    for name, deployment in (app.get("deployments") or {}).items():
        if deployment.get("status") != "HEALTHY":
            message = (deployment.get("message") or "").strip().splitlines()
            messages.append(f"{name}: {deployment.get('status')} {message[-1] if message else ''}")
    return "; ".join(m.strip() for m in messages if m and m.strip())[:1500] or "no message"


def stop_head() -> bool:
    """Shut Serve down and stop the head jizhi started; False when there was none of ours."""
    if not STATE_FILE.exists():
        return False
    if head_running():
        with contextlib.suppress(urllib.error.URLError, OSError):
            _request("DELETE", "/api/serve/applications/", timeout=60.0)
    pgid = int(json.loads(STATE_FILE.read_text())["pgid"])
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises once the whole group is gone
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    STATE_FILE.unlink(missing_ok=True)
    return True
