"""Thin wrappers around a local Prometheus and jizhi's exporter: start, wait, stop, query.

`start` runs Debian's `prometheus` on loopback in a process session of its own (and, when asked,
`python -m serving.monitoring.exporter`), waits until `/-/ready` answers and records both process
ids in `STATE_FILE`; `stop` stops exactly those processes. `query` runs an instant PromQL query.

>>> running = start(Path(".jizhi/prometheus/prometheus.yml"), port=9090)  # doctest: +SKIP
>>> query(running.url, "up")  # doctest: +SKIP
[Sample(labels={'__name__': 'up', 'instance': '127.0.0.1:8080', 'job': 'ray'}, value=1.0), ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from simulator.errors import InputError, ServiceError

__all__ = [
    "PROMETHEUS_PORT",
    "STATE_FILE",
    "WORK_DIR",
    "Exporter",
    "PrometheusError",
    "Running",
    "Sample",
    "api",
    "port_free",
    "query",
    "running",
    "start",
    "stop",
    "write_files",
]

PROMETHEUS_PORT = 9090
STATE_FILE = Path(".jizhi") / "prometheus.json"
WORK_DIR = Path(".jizhi") / "prometheus"
_EXPORTER_MODULE = "serving.monitoring.exporter"
# Processes this process started and has not reaped yet, by pid (stopping them reaps them).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class PrometheusError(ServiceError):
    """Prometheus or the exporter did not start, answer or stop; the message says why."""


class Sample(NamedTuple):
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Exporter:
    """jizhi's exporter to run next to Prometheus: its port and the controller state it serves."""

    port: int
    state: Path


@dataclass(frozen=True)
class Running:
    """What `start` started (the content of the state file)."""

    url: str
    pid: int
    config: str
    exporter_pid: int | None = None
    exporter_url: str | None = None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_files(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Write generated files (relative path → text) under `out`; returns the paths written."""
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def _alive(pid: int, marker: str) -> bool:
    """Whether `pid` still runs the command we started (its command line contains `marker`)."""
    child = _CHILDREN.get(pid)
    if child is not None:  # started by this process: ask (and reap) it
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process reusing the id
    cmdline = _cmdline(pid)
    if cmdline is None:
        return not Path("/proc").is_dir()  # no /proc to ask: trust the id
    return marker in cmdline and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid: int, marker: str, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL it after `timeout_s`; only if it is ours."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while _alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _alive(pid, marker):
        raise PrometheusError(f"process {pid} ({marker}) survived SIGKILL")


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _CHILDREN[process.pid] = process
    return process


def _log_tail(log: Path) -> str:
    """The last error Prometheus logged (its logfmt `err=`/`msg=`), else the last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "level=error" in line or "level=fatal" in line]
    line = (errors or lines or ["(no output)"])[-1]
    for key in ("err=", "msg="):
        if key in line:
            return line.split(key, 1)[1].strip().strip('"')[:400]
    return line[-400:]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def running(state_file: Path = STATE_FILE) -> Running | None:
    """The Prometheus jizhi started, if its process still runs (a stale state file is removed)."""
    if not state_file.is_file():
        return None
    try:
        state = Running(**json.loads(state_file.read_text()))
    except (ValueError, TypeError):
        state_file.unlink()
        return None
    if _alive(state.pid, "prometheus"):
        return state
    if state.exporter_pid is not None:
        _terminate(state.exporter_pid, _EXPORTER_MODULE)
    state_file.unlink()
    return None


def _start_exporter(exporter: Exporter, log: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", _EXPORTER_MODULE, "--port", str(exporter.port)]
    process = _spawn([*command, "--state", str(exporter.state)], log)
    deadline = time.monotonic() + timeout_s
    while not _listening(exporter.port):
        if process.poll() is not None:
            raise PrometheusError(f"jizhi's exporter exited at start: {_log_tail(log)}")
        if time.monotonic() > deadline:
            _terminate(process.pid, _EXPORTER_MODULE)
            raise PrometheusError(f"jizhi's exporter did not listen within {timeout_s:.0f} s")
        time.sleep(0.05)
    return process


def start(
    config: Path,
    port: int = PROMETHEUS_PORT,
    *,
    exporter: Exporter | None = None,
    work_dir: Path = WORK_DIR,
    state_file: Path = STATE_FILE,
    timeout_s: float = 30.0,
) -> Running:
    """Start Prometheus on 127.0.0.1:`port` with `config` (and the exporter), wait until ready."""
    current = running(state_file)
    if current is not None:
        raise InputError(
            f"a Prometheus started by jizhi already runs at {current.url} (pid {current.pid}): "
            "stop it with `jizhi monitor down`"
        )
    ports = [("Prometheus", port)] + ([("exporter", exporter.port)] if exporter else [])
    for what, number in ports:
        if not port_free(number):
            raise InputError(f"port {number} on 127.0.0.1 is in use: give the {what} another port")
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus is not installed: run scripts/install-services.sh")
    exporter_process = (
        _start_exporter(exporter, work_dir / "exporter.log", 10.0) if exporter else None
    )
    log = work_dir / "prometheus.log"
    process = _spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log, timeout_s)
    except PrometheusError:
        _terminate(process.pid, "prometheus")
        if exporter_process is not None:
            _terminate(exporter_process.pid, _EXPORTER_MODULE)
        raise
    state = Running(
        url=url,
        pid=process.pid,
        config=str(config),
        exporter_pid=exporter_process.pid if exporter_process else None,
        exporter_url=f"http://127.0.0.1:{exporter.port}/metrics" if exporter else None,
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(asdict(state), indent=2))
    return state


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response,
        ):
            if response.status == 200:
                return
        if process.poll() is not None:
            raise PrometheusError(f"prometheus exited at start: {_log_tail(log)}")
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus was not ready within {timeout_s:.0f} s (log: {log})")
        time.sleep(0.1)


def stop(state_file: Path = STATE_FILE) -> bool:
    """Stop the Prometheus (and exporter) jizhi started; False when there was none."""
    if not state_file.is_file():
        return False
    try:
        state = Running(**json.loads(state_file.read_text()))
    except (ValueError, TypeError):
        state_file.unlink()
        return False
    _terminate(state.pid, "prometheus")
    if state.exporter_pid is not None:
        _terminate(state.exporter_pid, _EXPORTER_MODULE)
    state_file.unlink()
    return True


def api(url: str, path: str, timeout_s: float = 5.0) -> Any:
    """GET a Prometheus HTTP API path (e.g. '/api/v1/targets'); returns its `data`."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}{path}", timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            raise PrometheusError(f"{url}{path}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusError(f"no Prometheus answers at {url} ({reason})") from None
    if body.get("status") != "success":
        endpoint = path.partition("?")[0]
        raise InputError(f"Prometheus rejected {endpoint}: {body.get('error', body)}")
    return body["data"]


def query(url: str, promql: str, timeout_s: float = 5.0) -> list[Sample]:
    """Evaluate `promql` now; one `Sample(labels, value)` per series (a scalar has no labels)."""
    data = api(url, "/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout_s)
    if data["resultType"] == "vector":
        return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
    if data["resultType"] == "scalar":
        return [Sample({}, float(data["result"][1]))]
    raise InputError(f"{promql!r} gives a {data['resultType']}, not an instant vector or scalar")
