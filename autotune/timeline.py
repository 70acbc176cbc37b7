"""The autopilot's timeline: a table line per interval as it goes, `timeline.json` and a picture.

The picture (`timeline.png`) has three panels over time: live traffic (and shed share), live
p50/p99 against the SLO and the risk threshold, and the predicted cost of the live config; every
config generation change is a vertical line, and each interval's action is marked on the traffic.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.autopilot import Action, Policy, Traffic
from autotune.autopilot_loop import Row

__all__ = ["HEADER", "format_row", "plot_timeline", "write_timeline"]

HEADER = (
    f"{'#':>3} {'time':<8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'shed':>6} {'gen':>4} "
    f"{'live $/h':>8}  {'action':<8} reason"
)


def _number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def _offered(traffic: Traffic) -> float:
    """The arrival rate (timelines written before it was recorded: the answered rate)."""
    return traffic.requests_per_s if math.isnan(traffic.offered_per_s) else traffic.offered_per_s


def format_row(row: Row) -> str:
    """One line of the table: time, live traffic, generation, live cost, action and why."""
    traffic = row.observation.traffic
    live = row.observation.live
    clock = time.strftime("%H:%M:%S", time.localtime(row.ended_at))
    why = row.reason if row.error is None else f"[{row.error.value}] {row.reason}"
    if row.note is not None:
        why += f"; {row.note}"
    if row.rollout is not None:
        why += f" (rollout {row.rollout.value})"
    return (
        f"{row.iteration:>3} {clock:<8} "
        f"{_number(None if traffic is None else _offered(traffic)):>6} "
        f"{_number(None if traffic is None else traffic.p50_s, 1e3):>7} "
        f"{_number(None if traffic is None else traffic.p99_s, 1e3):>7} "
        f"{'-' if traffic is None else f'{traffic.shed_rate:.2%}':>6} "
        f"{row.generation:>4} {_number(None if live is None else live.cost_per_hour, 1, 3):>8}  "
        f"{row.action.value:<8} {why}"
    )


def write_timeline(
    path: Path, rows: Sequence[Row], policy: Policy, meta: dict[str, Any] | None = None
) -> None:
    """`timeline.json`: the policy, what the run was (`meta`) and every row."""
    data = {
        "policy": {
            "slo_p99_s": policy.slo_p99_s,
            "max_shed_rate": policy.max_shed_rate,
            "risk": policy.risk,
            "saving": policy.saving,
            "confirm": policy.confirm,
            "cooldown": policy.cooldown,
        },
        **(meta or {}),
        "rows": [row.to_json() for row in rows],
    }
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(data, indent=1) + "\n")
    temp.replace(path)  # a reader (or a crash) never sees half a file


_COLOURS = {Action.HOLD: "tab:gray", Action.SCALE_UP: "tab:red", Action.SAVE: "tab:green"}


def plot_timeline(path: Path, rows: Sequence[Row], policy: Policy) -> None:
    """`timeline.png`: traffic, p99 against the SLO, live cost; generation changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (traffic_ax, latency_ax, cost_ax) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, constrained_layout=True
    )
    if rows:
        origin = rows[0].started_at
        mid = [((r.started_at + r.ended_at) / 2 - origin) / 60 for r in rows]

        def series(pick: Any, scale: float = 1.0) -> list[float]:
            values = []
            for row in rows:
                value = pick(row)
                values.append(math.nan if value is None else value * scale)
            return values

        def traffic(name: str) -> Any:
            return lambda r: (
                None if r.observation.traffic is None else getattr(r.observation.traffic, name)
            )

        rate = series(lambda r: None if r.observation.traffic is None else _offered(
            r.observation.traffic))  # fmt: skip
        traffic_ax.plot(mid, rate, "o-", color="tab:blue", label="arriving req/s")
        traffic_ax.plot(mid, series(traffic("requests_per_s")), ".:", color="tab:cyan",
                        label="answered req/s")  # fmt: skip
        shed_ax = traffic_ax.twinx()
        shed_ax.plot(mid, series(traffic("shed_rate"), 100), "x:", color="tab:orange",
                     label="shed %")  # fmt: skip
        shed_ax.set_ylabel("shed %")
        shed_ax.set_ylim(bottom=0, top=max(1.0, *(v for v in series(traffic("shed_rate"), 100)
                                                   if not math.isnan(v))))  # fmt: skip
        top = max((v for v in rate if not math.isnan(v)), default=1.0)
        for x, row in zip(mid, rows, strict=True):
            marker = "X" if row.error is not None else "v"
            traffic_ax.scatter([x], [top * 1.12], color=_COLOURS[row.action], marker=marker, s=40)
        traffic_ax.set_ylim(0, top * 1.25)
        lines = traffic_ax.get_legend_handles_labels()
        shed_lines = shed_ax.get_legend_handles_labels()
        traffic_ax.legend(lines[0] + shed_lines[0], lines[1] + shed_lines[1], loc="center left",
                          fontsize="small")  # fmt: skip
        traffic_ax.set_ylabel("requests / s")
        traffic_ax.set_title(
            "live traffic; markers: hold (grey), scale up (red), save (green), X: an error"
        )
        latency_ax.plot(mid, series(traffic("p50_s"), 1e3), "o-", label="live p50")
        latency_ax.plot(mid, series(traffic("p99_s"), 1e3), "o-", label="live p99")
        latency_ax.plot(mid, series(lambda r: r.live_p99_predicted_s, 1e3), "s--",
                        color="tab:purple", alpha=0.6, label="predicted p99 (live config)")  # fmt: skip
        latency_ax.axhline(policy.slo_p99_s * 1e3, color="red", ls="--", label="SLO p99")
        latency_ax.axhline(policy.slo_p99_s * policy.risk * 1e3, color="red", ls=":",
                           alpha=0.5, label=f"risk ({policy.risk:.0%} of the SLO)")  # fmt: skip
        latency_ax.set_ylabel("ms")
        latency_ax.legend(loc="best", fontsize="small")
        cost = series(
            lambda r: None if r.observation.live is None else r.observation.live.cost_per_hour
        )
        edges = [(r.started_at - origin) / 60 for r in rows] + [(rows[-1].ended_at - origin) / 60]
        cost_ax.step(edges, [*cost, cost[-1]], where="post", color="tab:green", label="live config")
        cost_ax.plot(mid, cost, "o", color="tab:green")
        tuned = series(
            lambda r: None if r.observation.tuned is None else r.observation.tuned.cost_per_hour
        )
        cost_ax.plot(mid, tuned, "+", color="black", label="tuned config")
        cost_ax.set_ylabel("predicted $ / hour")
        cost_ax.legend(loc="best", fontsize="small")
        for before, row in itertools.pairwise(rows):
            if row.generation != before.generation:
                x = (row.started_at - origin) / 60
                for ax in (traffic_ax, latency_ax, cost_ax):
                    ax.axvline(x, color="black", alpha=0.4, lw=1)
                traffic_ax.annotate(f"gen {row.generation}", (x, 0), xycoords=("data", "axes fraction"),
                                    xytext=(2, 4), textcoords="offset points", fontsize="small")  # fmt: skip
    cost_ax.set_xlabel(
        "minutes since the first interval (vertical lines: config generation changes)"
    )
    fig.suptitle("jizhi autopilot")
    fig.savefig(path, dpi=110)
    plt.close(fig)
