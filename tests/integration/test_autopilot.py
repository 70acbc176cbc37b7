"""The autopilot on the real deployment under a traffic step (low → 2× → low); about 3.5 minutes.

What is honest to assert on this machine. The service is CPU-bound on 2 shared cores: it keeps up
with a few tens of req/s, and its p99 at any rate is several times the 50 ms the example's SLO
asks for (docs/serving.md, "Where the time goes"), while the simulator, which the autopilot
here re-calibrates only to the live request rate (`--recalibrate rate`: the full fit's costs move
with whatever else runs on this shared machine, which would make the expected decisions a guess),
sees one replica per stage serve thousands of req/s within 50 ms. So:

- With the example's SLO every interval would be "at risk" and the autopilot would keep raising
  to configs the model cannot tell apart — a test of nothing. The test sets the SLO to 1 s, which
  this machine holds at 4 and 8 req/s with room to spare.
- At 4 and at 8 req/s the tuned config is the same, the cheapest (one replica per stage): the
  model has no reason to add capacity at the step up, and with the live SLO holding the right
  reaction is to hold. A capacity raise at the step can only come from the live p99 crossing 90 %
  of the SLO, which depends on what else runs on the machine; so the test does not demand one.
  It checks the decisions against the rules instead: replaying `autotune.autopilot.step` over
  the observations the timeline recorded gives exactly the actions the autopilot took, and every
  rollout it took shows as a new config generation, a rollout record, and a counted interval.
- Cost to shed: the deployment starts with a second Features replica (predicted $0.216/h against
  $0.168/h for one replica per stage, a 22 % saving). While the live SLO holds, the autopilot must
  find that saving, confirm it over two intervals, roll it out (verified live; --tolerance 4 so
  that 8-second windows of 30-60 requests, whose p99 is their slowest request or two, do not roll
  it back on noise — a breach of the 1 s SLO still would) and end on the cheaper config. That it
  sheds the cost while traffic is low rather than only after the drop is the same reason as above:
  in the model neither rate needs the second replica.
- Not one request of the load fails, through every interval, tuning run and rollout.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune.autopilot import Observation, PilotState, Policy, at_risk, step
from jizhi.cli import main
from jizhi.commands.rollout import HISTORY
from jizhi.commands.serve import DEPLOYED
from serving import cluster
from serving.monitoring.exporter import read_state

from .services import EXAMPLE_SPEC, SMALL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LOW, HIGH = 4.0, 8.0
PHASES = ((LOW, 40.0), (HIGH, 55.0), (LOW, 60.0))  # (req/s, seconds), one `jizhi load` each
STARTUP_S = 4.0  # a load process imports and plans before its first send
OVER = [*SMALL, "--set", "features.replicas=2"]  # one Features replica more than needed
SPEC = [
    "--set", "slo.p99_s=1.0",
    # small simulations: each interval tunes in ~10 s on the shared cores
    "--set", "tuning.trial_requests=800", "--set", "tuning.trial_warmup_requests=100",
    "--set", "simulation.requests=2000", "--set", "simulation.warmup_requests=200",
]  # fmt: skip
AUTOPILOT = [
    "--interval", "12", "--trials", "6", "--confirm", "2", "--cooldown", "1", "--workers", "1",
    "--window", "8", "--settle", "3", "--tolerance", "4.0", "--timeout", "60",
    "--recalibrate", "rate",
]  # fmt: skip


def _drive(model: Path, out: Path, phases: list[dict[str, Any]], failures: list[str]) -> None:
    """Run the load phases one after the other; note each one's sending window."""
    for number, (rate, seconds) in enumerate(PHASES):
        report = out / f"load-{number}.json"
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "jizhi.cli", "load", "http://127.0.0.1:8000", "--rate",
             str(rate), "--duration", str(seconds), "--model", str(model), "--seed", str(number),
             "--out", str(report)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=seconds + 90,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            failures.append(f"load phase {number}: exit {done.returncode}: {done.stderr[-400:]}")
            return
        phases.append(
            {"rate": rate, "from": started + STARTUP_S, "to": time.time(), "report": report}
        )


def _phase_of(row: dict[str, Any], phases: list[dict[str, Any]]) -> int | None:
    """The phase whose sending window holds the row's whole measurement window."""
    for number, phase in enumerate(phases):
        if phase["from"] <= row["started_at"] and row["ended_at"] <= phase["to"]:
            return number
    return None


def test_the_autopilot_follows_a_traffic_step(
    served: Path, tmp_path: Path, controller_state: Path
) -> None:
    assert main(["serve", EXAMPLE_SPEC, "--model", str(served), *OVER]) == 0
    out = tmp_path / "autopilot"
    phases: list[dict[str, Any]] = []
    failures: list[str] = []
    history_before = HISTORY.read_text().count("\n") if HISTORY.is_file() else 0
    counted_before = read_state(controller_state).autopilot_iterations
    driver = threading.Thread(target=_drive, args=(served, tmp_path, phases, failures))
    driver.start()
    try:
        time.sleep(STARTUP_S + 1)  # the first window starts with traffic flowing
        total = sum(seconds for _, seconds in PHASES)
        argv = ["autopilot", EXAMPLE_SPEC, "--model", str(served), *OVER, *SPEC, *AUTOPILOT,
                "--duration", str(total), "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        driver.join(timeout=total + 120)
        assert not driver.is_alive(), "the load phases did not finish"
        assert not failures, failures
        live_yaml = out / "live.yaml"
        exported = tmp_path / "live-serve.yaml"
        assert main(["export", EXAMPLE_SPEC, "--model", str(served), "--config", str(live_yaml),
                     "--out", str(exported)]) == 0  # fmt: skip
        deployed = yaml.safe_load(DEPLOYED.read_text())
        assert deployed == yaml.safe_load(exported.read_text()), "live.yaml is not what runs"
        assert cluster.status()["applications"]["jizhi"]["status"] == "RUNNING"
    finally:
        main(["serve", EXAMPLE_SPEC, "--model", str(served), *SMALL])  # in place, load or not
        driver.join(timeout=240)

    # not one request failed, in any phase
    for phase, (rate, seconds) in zip(phases, PHASES, strict=True):
        summary = json.loads(phase["report"].read_text())
        assert summary["ok"] == summary["requests"] > 0.9 * rate * seconds, summary["errors"]

    timeline = json.loads((out / "timeline.json").read_text())
    rows = timeline["rows"]
    assert timeline["stopped"] == "done" and len(rows) >= 4
    assert (out / "timeline.png").stat().st_size > 10_000
    assert [r for r in rows if r["error"]] == [], "an interval failed"
    policy = Policy(**timeline["policy"])

    # the decisions are the rules' on what was measured
    state = PilotState(policy)
    for row in rows:
        state, decision = step(state, Observation.from_json(row["observation"]))
        assert (decision.action.value, decision.reason) == (row["action"], row["reason"]), row

    # the step up and the drop were measured
    by_phase: dict[int, list[float]] = {}
    for row in rows:
        number = _phase_of(row, phases)
        if number is not None:
            by_phase.setdefault(number, []).append(row["observation"]["traffic"]["requests_per_s"])
    assert set(by_phase) == {0, 1, 2}, f"a phase held no whole interval: {by_phase}"
    high = statistics.median(by_phase[1])  # 8 req/s less the gaps between load processes
    assert high > 1.5 * statistics.median(by_phase[0]), by_phase
    assert high > 1.5 * statistics.median(by_phase[2]), by_phase

    # every rollout shows as a new generation, a rollout record and nothing else changes it
    rollouts = [r for r in rows if r["rollout"] is not None]
    for before, after in itertools.pairwise(rows):
        changed = after["generation"] != before["generation"]
        assert changed == (before["rollout"] is not None), (before, after)
    history = HISTORY.read_text().splitlines()[history_before:]
    assert len(history) == len(rollouts)
    counted = read_state(controller_state).autopilot_iterations
    assert sum(counted.values()) - sum(counted_before.values()) == len(rows)

    # the spare replica is shed while the live SLO holds, and the cheaper config stays
    costs = [r["observation"]["live"]["cost_per_hour"] for r in rows if r["observation"]["live"]]
    assert costs[0] == pytest.approx(0.216)
    first = [Observation.from_json(r["observation"]).traffic for r in rows[:2]]
    assert all(t is not None and t.busy and at_risk(t, policy) is None for t in first), (
        f"the live p99 broke 90 % of 1 s at {LOW} req/s: the machine is overloaded ({first})"
    )
    saves = [r for r in rows if r["action"] == "save"]
    assert saves and saves[0]["rollout"] == "applied", rows
    assert costs[-1] <= 0.9 * costs[0]
