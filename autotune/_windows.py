"""Sub-windows of a run of snapshots: counter deltas, and the CPU seconds each process used in them.

A snapshot's CPU gauge stands for the interval that ends at it (Ray's agent reports the CPU used
since its previous sample), so the CPU seconds of a sub-window are Σ gauge(t_j) × (t_j − t_{j−1})
over its snapshots after the first. Ray's metrics endpoint now and then answers without the
agent's gauges (15–25 % of scrapes every 2 s in one 40-minute run, every CPU and node gauge gone
at once): such an interval is left out of the sums, and the sub-window's CPU is the mean over the
intervals that reported, times its length — read as zero, it took a fifth off every CPU cost and
off the node's cores. A sub-window with no report at all joins the one before it. Idle
sub-windows at both ends (no HTTP request of the application) are dropped: the load had not
started or had stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.monitoring.live import (
    PROXY_COMPONENT,
    Snapshot,
    Window,
    component_cpu,
    node_cpu,
)
from simulator.errors import InputError

__all__ = ["SubWindow", "subwindows"]

_HTTP = "ray_serve_num_http_requests_total"
_CPU = "ray_component_cpu_percentage"


@dataclass(frozen=True)
class SubWindow:
    window: Window
    components: Mapping[str, str]  # deployment → its replicas' process name
    cpu: Mapping[str, float]  # process name → CPU seconds used in the sub-window
    cores: float  # the node's cores (mean over the sub-window)
    node_busy_s: float  # CPU seconds the node used, every process together

    @property
    def proxy(self) -> str:
        return PROXY_COMPONENT

    @property
    def start(self) -> float:
        return self.window.before.at

    @property
    def end(self) -> float:
        return self.window.after.at

    @property
    def seconds(self) -> float:
        return self.window.seconds

    @property
    def pipeline_cpu_s(self) -> float:
        """CPU seconds of the proxy and the application's replicas."""
        return sum(self.cpu.values())


def subwindows(
    snapshots: Sequence[Snapshot],
    application: str,
    components: Mapping[str, str],
    min_seconds: float = 0.0,
) -> tuple[list[SubWindow], int]:
    """Sub-windows of at least `min_seconds` over the busy part of the snapshots, and how many
    idle snapshot intervals were dropped at the ends. Raises `InputError` naming what is missing."""
    ordered: list[Snapshot] = []
    for snap in sorted(snapshots, key=lambda s: s.at):
        if not ordered or snap.at > ordered[-1].at:
            ordered.append(snap)
    if len(ordered) < 2:
        raise InputError(
            f"calibration needs at least 2 snapshots of the metrics taken apart in time "
            f"(got {len(ordered)}): differences between snapshots are what it fits"
        )
    busy = [
        i
        for i, (a, b) in enumerate(itertools.pairwise(ordered))
        if Window(a, b).increase(_HTTP, application=application) > 0
    ]
    if not busy:
        raise InputError(
            f"no HTTP requests of application '{application}' in the window "
            f"({ordered[0].at:.0f}–{ordered[-1].at:.0f} s, {len(ordered)} snapshots, {_HTTP}): "
            "calibrate while the service takes traffic"
        )
    kept = ordered[busy[0] : busy[-1] + 2]
    dropped = len(ordered) - len(kept)
    _require(kept, {**components, "proxy": PROXY_COMPONENT})
    groups: list[list[Snapshot]] = [[kept[0]]]
    for snap in kept[1:]:
        groups[-1].append(snap)
        if snap.at - groups[-1][0].at >= min_seconds and snap is not kept[-1]:
            groups.append([snap])
    if len(groups) > 1 and groups[-1][-1].at - groups[-1][0].at < min_seconds:
        groups[-2].extend(groups.pop()[1:])  # a short tail joins the sub-window before it
    joined: list[list[Snapshot]] = []
    for group in groups:  # a sub-window the agent never reported in joins a neighbour
        if joined and not (_reported(joined[-1]) and _reported(group)):
            joined[-1].extend(group[1:])
        else:
            joined.append(group)
    if not _reported(joined[-1]):
        raise InputError(
            f"no scrape after the first in the window has Ray's CPU gauges ({_CPU}): "
            "take a longer window"
        )
    return [_observe(g, components) for g in joined], dropped


def _reports_cpu(snapshot: Snapshot) -> bool:
    """Whether this scrape has the agent's CPU gauges (the endpoint now and then has none)."""
    return bool(snapshot.series(_CPU, {}))


def _reported(group: list[Snapshot]) -> bool:
    return any(_reports_cpu(s) for s in group[1:])


def _require(snapshots: list[Snapshot], components: Mapping[str, str]) -> None:
    for deployment, component in components.items():
        dotted = component + "."
        found = any(
            (c == component or c.startswith(dotted))
            for snap in snapshots
            for labels in snap.series(_CPU, {})
            if (c := dict(labels).get("Component")) is not None
        )
        if not found:
            what = "the HTTP proxy" if deployment == "proxy" else f"deployment '{deployment}'"
            raise InputError(
                f'no CPU gauge ({_CPU}{{Component="{component}"}}) for {what} in the window: '
                "Ray's dashboard agent reports it; is the deployment named so?"
            )
    if not any(snap.series("ray_node_cpu_count", {}) for snap in snapshots):
        raise InputError("no ray_node_cpu_count in the window: Ray's dashboard agent reports it")


def _observe(group: list[Snapshot], components: Mapping[str, str]) -> SubWindow:
    names = [PROXY_COMPONENT, *components.values()]
    cpu = dict.fromkeys(names, 0.0)
    cores = busy = covered = 0.0
    for a, b in itertools.pairwise(group):
        if not _reports_cpu(b):
            continue
        dt = b.at - a.at
        covered += dt
        for name in names:
            cpu[name] += component_cpu(b, name) * dt
        node_cores, node_busy = node_cpu(b)
        cores += node_cores * dt
        busy += node_busy * dt
    window = Window(group[0], group[-1])
    scale = window.seconds / covered if covered > 0 else 0.0  # the gaps at the reported mean
    return SubWindow(
        window=window,
        components=dict(components),
        cpu={name: seconds * scale for name, seconds in cpu.items()},
        cores=cores / covered if covered > 0 else 0.0,
        node_busy_s=busy * scale,
    )
