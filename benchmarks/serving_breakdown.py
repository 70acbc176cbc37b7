"""Where the time goes in a served-throughput probe (`benchmarks/serving_throughput.py`).

CPU seconds of every process on the machine by role, from /proc (the HTTP proxy, each replica,
Ray's own processes, the load client, everything else), and the deltas of Ray's and jizhi's
histograms on the metrics port (proxy latency, per-deployment processing latency, batch wait,
lookup and model time); `breakdown` turns one probe's into CPU ms per ok request by role and
mean latencies along a request's path. Ray 2.60 exports a histogram's `_sum` from bucket
midpoints, so those means are approximations at bucket resolution; counts are exact.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving import cluster

if TYPE_CHECKING:
    from serving_throughput import Probe

__all__ = [
    "OTHERS",
    "breakdown",
    "cpu_by_role",
    "cpu_snapshot",
    "metric_deltas",
    "print_breakdown",
    "scrape",
]

METRICS_URL = f"http://127.0.0.1:{cluster.METRICS_PORT}/metrics"


def _say(message: str) -> None:
    print(message, flush=True)


# --- where the CPU goes: /proc --------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHERS = "processes not ours (other work, kernel)"
RAY_OWN = "Ray (raylet, GCS, dashboard, agents)"


def _role(pid: int, ppid: int, cmdline: str) -> str:
    if pid == os.getpid():
        return "benchmark script"
    if ppid == os.getpid() and "multiprocessing" in cmdline:
        return "load client"
    if cmdline.startswith("ray::ProxyActor"):
        return "HTTP proxy"
    if cmdline.startswith("ray::ServeReplica:"):  # ray::ServeReplica:APP:DEPLOYMENT
        app, _, deployment = (
            cmdline.split(maxsplit=1)[0].removeprefix("ray::ServeReplica:").partition(":")
        )
        return f"{app} {deployment}"
    if cmdline.startswith("ray::ServeController"):
        return "Serve controller"
    if cmdline.startswith(("ray::", "ray-dashboard")) or "site-packages/ray/" in cmdline:
        return RAY_OWN
    return OTHERS


Snapshot = tuple[float, float, dict[int, tuple[str, float]]]


def cpu_snapshot() -> Snapshot:
    """(wall clock, busy CPU seconds of the whole machine, {pid: (role, CPU seconds)})."""
    with Path("/proc/stat").open() as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK  # all but idle and iowait
    procs: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # fields from the 3rd (state) on
        seconds = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
        procs[pid] = (_role(pid, int(fields[1]), cmdline.strip()), seconds)
    return time.monotonic(), busy, procs


def cpu_by_role(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """CPU seconds per role between two snapshots. Processes not ours also get the kernel's share
    and processes that ended in between: what the machine's total has that no live process of a
    known role explains."""
    roles: dict[str, float] = {}
    for pid, (role, seconds) in after[2].items():
        start = before[2].get(pid, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + max(0.0, seconds - start)
    total = after[1] - before[1]
    known = sum(v for k, v in roles.items() if k != OTHERS)
    roles[OTHERS] = max(0.0, total - known)
    return {
        "wall_s": after[0] - before[0],
        "busy_s": total,
        "cores": os.cpu_count() or 1,
        "by_role_s": roles,
    }


# --- what Ray and jizhi export ----------------------------------------------------------------------

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_HISTOGRAMS = (
    "ray_serve_deployment_processing_latency_ms",
    "ray_serve_http_request_latency_ms",
    "ray_serve_batch_wait_time_ms",
    "ray_serve_batch_execution_time_ms",
    "ray_jizhi_stage_latency_seconds",
    "ray_jizhi_ranker_batch_rows",
    "ray_jizhi_store_lookup_seconds",
)
_COUNTERS = ("ray_jizhi_cache_hits_total", "ray_jizhi_cache_misses_total")


def scrape(app: str) -> dict[str, float]:
    """Sums and counts of the histograms above (and the counters) of one application, per
    deployment; {} when the metrics port does not answer."""
    try:
        with urllib.request.urlopen(METRICS_URL, timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_") or not (m := _LINE.match(line)):
            continue
        name, labels, value = m.groups()
        base = name.removesuffix("_sum").removesuffix("_count")
        if not (base in _HISTOGRAMS and name != base) and name not in _COUNTERS:
            continue
        tags = dict(_LABEL.findall(labels or ""))
        if tags.get("application") != app:
            continue
        key = f"{name}|{tags.get('deployment') or 'all'}"
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return out


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per histogram and deployment: count and mean over the window; the counters' increase."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, Any] = {}
    for key, value in delta.items():
        name, who = key.split("|")
        if name.endswith("_count") and value > 0:
            base = name.removesuffix("_count")
            total = delta.get(f"{base}_sum|{who}", 0.0)
            out.setdefault(base, {})[who] = {"count": value, "mean": total / value}
        elif name in _COUNTERS:
            out.setdefault(name, {})[who] = value
    return out


# --- where the time goes --------------------------------------------------------------------------


def breakdown(p: Probe, idle: dict[str, Any] | None, apps: Sequence[str]) -> dict[str, Any]:
    """CPU ms per ok request by role (as measured, and net of what the role takes with no load at
    all, from `idle`), and mean latencies along a request's path; `apps`: the applications the
    benchmark deployed (the probed one's replicas by deployment, the others' together)."""
    ok = max(1, p.summary["ok"])
    wall = p.cpu["wall_s"]
    idle_rate = {k: v / idle["wall_s"] for k, v in idle["by_role_s"].items()} if idle else {}
    gross: dict[str, float] = {}
    net: dict[str, float] = {}
    for role, seconds in p.cpu["by_role_s"].items():
        if role == OTHERS:
            continue
        app, _, deployment = role.partition(" ")
        shown = role
        if app in apps and deployment:
            shown = deployment if app == p.app else "the other config's replicas (idle)"
        gross[shown] = gross.get(shown, 0.0) + seconds / ok * 1e3
        background = idle_rate.get(role, 0.0) * wall
        net[shown] = net.get(shown, 0.0) + max(0.0, seconds - background) / ok * 1e3
    m = p.metrics

    def mean(name: str, who: str, scale: float = 1.0) -> float | None:
        entry = m.get(name, {}).get(who)
        return None if entry is None else float(entry["mean"]) * scale

    def count(name: str, who: str) -> float:
        return float(m.get(name, {}).get(who, {}).get("count", 0.0))

    e2e = p.summary["latency_s"]["mean_ok"]
    proxy = mean("ray_serve_http_request_latency_ms", "all")
    ingress = mean("ray_serve_deployment_processing_latency_ms", "Ingress")
    features = mean("ray_serve_deployment_processing_latency_ms", "Features")
    ranker = mean("ray_serve_deployment_processing_latency_ms", "Ranker")
    batches = count("ray_jizhi_stage_latency_seconds", "Ranker")
    ranker_requests = count("ray_serve_deployment_processing_latency_ms", "Ranker")
    path: dict[str, float | None] = {
        "client, end to end (mean of ok requests; exact)": None if e2e is None else e2e * 1e3,
        "HTTP proxy: request in to response out": proxy,
        "Ingress handler (awaits the stages)": ingress,
        "Features handler": features,
        "  feature lookup (jizhi, per call)": mean(
            "ray_jizhi_stage_latency_seconds", "Features", 1e3
        ),
        "Ranker handler (batch wait + batch)": ranker,
        "  batch wait (Ray, per batch)": mean("ray_serve_batch_wait_time_ms", "Ranker"),
        "  batch: lookup if fused + model (jizhi, per batch)": mean(
            "ray_jizhi_stage_latency_seconds", "Ranker", 1e3
        ),
        "  store multi-get (jizhi, per call)": mean(
            "ray_jizhi_store_lookup_seconds", "Features", 1e3
        )
        or mean("ray_jizhi_store_lookup_seconds", "Ranker", 1e3),
    }
    derived: dict[str, float | None] = {
        "requests per batch (exact: from counts)": ranker_requests / batches if batches else None,
    }
    if proxy is not None and ingress is not None:
        derived["≈ proxy's own work + hop to Ingress + queue for it"] = proxy - ingress
    if ingress is not None and ranker is not None:
        derived["≈ Ingress's own work + its hops to the stages"] = (
            ingress - ranker - (features or 0)
        )
    capacity = wall * p.cpu["cores"]
    return {
        "offered_rps": p.rate,
        "goodput_rps": p.summary["goodput_rps"],
        "ok_requests": p.summary["ok"],
        "cpu_ms_per_ok_request": gross,
        "cpu_ms_per_ok_request_net_of_idle": net,
        "cpu_busy_fraction": p.cpu["busy_s"] / capacity if capacity else None,
        "others_fraction": p.others_share(),
        "latency_ms": path,
        "derived": derived,
    }


def print_breakdown(label: str, b: dict[str, Any]) -> None:
    _say(
        f"\n  {label}: {b['offered_rps']:.1f} req/s offered, {b['goodput_rps']:.1f} ok/s "
        f"({b['ok_requests']} ok requests)"
    )
    busy, others = b["cpu_busy_fraction"] or 0.0, b["others_fraction"]
    _say(
        f"    the machine was {busy:.0%} busy; processes not ours took {others:.0%} of it. "
        "Our CPU per ok request:"
    )
    gross, net = b["cpu_ms_per_ok_request"], b["cpu_ms_per_ok_request_net_of_idle"]
    _say(f"      {'process':45s} {'measured':>9s} {'net of idle':>12s}")
    for role, ms in sorted(net.items(), key=lambda kv: -kv[1]):
        if gross[role] >= 0.05:
            _say(f"      {role:45s} {gross[role]:6.2f} ms {ms:9.2f} ms")
    _say(f"      {'all of ours':45s} {sum(gross.values()):6.2f} ms {sum(net.values()):9.2f} ms")
    _say("    latency, means over the window (Ray's _sum is from bucket midpoints: approximate):")
    for name, value in b["latency_ms"].items():
        if value is not None:
            _say(f"      {name:56s} {value:7.2f} ms")
    for name, value in b["derived"].items():
        if value is not None:
            unit = "" if "per batch" in name else " ms"
            _say(f"      {name:56s} {value:7.2f}{unit}")
