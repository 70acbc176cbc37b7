"""The latency fit: node.speed and the spread of CPU work recovered from a known simulated node,
its bounds, and its place in calibration (the recorded fixture, the autopilot's recalibrate)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from autotune.calibration import Status, calibrate, calibrated_spec
from autotune.latency_fit import (
    Target,
    cv_paths,
    fit_hop,
    fit_latency,
    handle_hops,
    recalibrate,
    with_latency_fit,
)
from serving.monitoring.live import LiveStats
from simulator import InputError, PipelineSpec, simulate
from simulator.load import validate_spec
from tests.unit.autotune.calibration_helpers import fixture_spec, recording
from tests.unit.autotune.helpers import TINY

REQUESTS = 2000


def _node_spec(speed: float, cv: float) -> PipelineSpec:
    """The tiny pipeline on a 2-core node, every piece of CPU work with the same cv."""
    data: dict[str, Any] = copy.deepcopy(TINY)
    data["workload"]["rate_rps"] = 60
    data["node"] = {"cores": 2, "speed": speed}
    data["overhead"] = {
        "proxy": {"model": "lognormal", "mean_s": 0.001, "cv": cv},
        "hop": {"model": "lognormal", "mean_s": 0.0004, "cv": cv},
    }
    data["stages"][0]["service"]["cv"] = cv
    data["stages"][1]["service"]["cv"] = cv
    return validate_spec(data, source="node")


def _latency(spec: PipelineSpec) -> tuple[float, float]:
    report = simulate(spec, requests=REQUESTS, warmup_requests=REQUESTS // 10, seed=0)
    return report.latency.p50_s, report.latency.p99_s


def test_cv_paths_are_the_cpu_work_that_has_a_cv() -> None:
    assert cv_paths(_node_spec(1.0, 0.3)) == (
        "overhead.proxy",
        "overhead.hop",
        "stages.front.service",
        "stages.model.service",
    )  # the response overhead is deterministic: no cv


def test_a_known_node_speed_and_spread_come_back() -> None:
    p50, p99 = _latency(_node_spec(0.35, 0.9))
    target = Target(_node_spec(1.0, 0.3), p50, p99)
    fit = fit_latency([target], requests=REQUESTS, warmup_requests=REQUESTS // 10)
    assert fit.speed == pytest.approx(0.35, rel=0.1)
    assert fit.cv == pytest.approx(0.9, rel=0.3)
    ((p50_sim, p99_sim),) = fit.predicted
    assert p50_sim == pytest.approx(p50, rel=0.05)
    assert p99_sim == pytest.approx(p99, rel=0.1)
    assert fit.notes == ()
    assert fit.simulations == 4 * (7 + 2) + 1
    written = {r.path: r.value for r in fit.rows() if r.status is Status.FITTED}
    assert written["node.speed"] == fit.speed
    assert written["stages.model.service.cv"] == written["overhead.proxy.cv"] == fit.cv


def test_a_target_beyond_the_bounds_keeps_the_bound_and_says_why() -> None:
    target = Target(_node_spec(1.0, 0.3), 1e-5, 1e-4)
    fit = fit_latency([target], requests=500, warmup_requests=50, steps=2)
    assert fit.speed == 1.0 and fit.cv == 0.05
    assert any("even at full speed" in n for n in fit.notes), fit.notes


def test_the_fit_needs_a_node_and_a_latency() -> None:
    data = copy.deepcopy(TINY)
    with pytest.raises(InputError, match="node section"):
        Target(validate_spec(data, source="tiny"), 0.01, 0.02)
    with pytest.raises(InputError, match="observed p99 > 0"):
        Target(_node_spec(1.0, 0.3), 0.01, math.nan)
    with pytest.raises(InputError, match="at least one"):
        fit_latency([])


def test_several_targets_share_one_speed() -> None:
    """Two rates of the same node: the fit is the one speed that explains both medians."""
    measured = [_latency(_node_spec(0.5, 0.5).model_copy(update={"workload": w}))
                for w in _workloads((60, 140))]  # fmt: skip
    targets = [
        Target(_node_spec(1.0, 0.5).model_copy(update={"workload": w}), p50, p99)
        for w, (p50, p99) in zip(_workloads((60, 140)), measured, strict=True)
    ]
    fit = fit_latency(targets, requests=REQUESTS, warmup_requests=REQUESTS // 10)
    assert fit.speed == pytest.approx(0.5, rel=0.1)
    assert len(fit.predicted) == 2
    assert not any(r.path.startswith("predicted.") for r in fit.rows())


def _workloads(rates: tuple[float, ...]) -> list[Any]:
    base = _node_spec(1.0, 0.3).workload
    return [base.model_copy(update={"rate_rps": rate}) for rate in rates]


def test_the_recorded_fixture_gets_a_speed_that_reproduces_its_p50() -> None:
    spec = fixture_spec()
    calibration = with_latency_fit(spec, calibrate(spec, recording()), requests=REQUESTS)
    observed = calibration.get("observed.p50_s").value
    speed = calibration.get("node.speed")
    assert speed.status is Status.FITTED and 0.02 <= speed.value <= 1.0
    assert calibration.get("predicted.p50_s").value == pytest.approx(observed, rel=0.1)
    data = calibrated_spec(spec, calibration)
    assert data["node"]["speed"] == speed.value
    assert data["overhead"]["proxy"]["cv"] == calibration.get("overhead.proxy.cv").value
    assert any(n.startswith("latency fit:") for n in calibration.notes)


def test_recalibrate_fits_the_autopilots_signature() -> None:
    stats = LiveStats(window_s=54, requests_per_s=11.2, ok_per_s=11.2, shed_rate=0.0,
                      error_rate=0.0, p50_s=0.2, p95_s=0.8, p99_s=0.96)  # fmt: skip
    calibrated = recalibrate(fixture_spec(), stats, recording())
    assert calibrated.workload.zipf_alpha == pytest.approx(1.0, abs=0.05)
    assert calibrated.workload.rate_rps == pytest.approx(605 / 54)
    assert calibrated.node is not None and calibrated.node.speed < 1.0


def _hop_world(hop_s: float, front_s: float, fused: bool, rate: float) -> PipelineSpec:
    """The tiny pipeline on a node with a hop of `hop_s` and the front's own work `front_s`;
    `fused`: the front runs inside the model's replicas (no hop)."""
    data = _node_spec(0.5, 0.4).model_dump(mode="json", exclude_none=True)
    data["workload"]["rate_rps"] = rate
    data["overhead"]["hop"] = (
        {"model": "lognormal", "mean_s": hop_s, "cv": 0.4}
        if hop_s > 0
        else {"model": "deterministic", "seconds": 0.0}
    )
    data["stages"][0]["service"]["mean_s"] = front_s
    data["stages"][0]["in_ranker"] = fused
    return validate_spec(data, source="hop world")


def test_a_known_hop_comes_back_from_a_fused_config() -> None:
    """The real hop costs 3 ms; the front's CPU gauge counted it with its own 1 ms. Measured apart
    and fused, at two rates; the fit moves the hop out of the front and finds the 3 ms again."""
    true_hop, front_cpu = 0.003, 0.004
    cases = [(fused, rate) for fused in (False, True) for rate in (30.0, 60.0)]
    measured = []
    for fused, rate in cases:
        report = simulate(_hop_world(true_hop, front_cpu - true_hop, fused, rate),
                          requests=REQUESTS, warmup_requests=200, seed=1)  # fmt: skip
        measured.append(report.latency)

    def targets_at(hop_s: float) -> list[Target]:
        return [
            Target(_hop_world(hop_s, front_cpu - hop_s, fused, rate), m.p50_s, m.p99_s)
            for (fused, rate), m in zip(cases, measured, strict=True)
        ]

    fit = fit_hop(targets_at, high_s=0.0035, requests=REQUESTS, warmup_requests=200)
    assert fit.seconds == pytest.approx(true_hop, rel=0.15)
    assert fit.note is None and abs(fit.slope) < 0.05
    for p50, m in zip(fit.predicted, measured, strict=True):
        assert p50 == pytest.approx(m.p50_s, rel=0.1)


def test_the_hop_fit_needs_two_hop_counts_and_keeps_its_bounds() -> None:
    assert handle_hops(_hop_world(0.001, 0.001, False, 60)) == 1
    assert handle_hops(_hop_world(0.001, 0.001, True, 60)) == 0
    one_shape = [Target(_hop_world(0.001, 0.001, False, 60), 0.01, 0.02)]
    with pytest.raises(InputError, match="different numbers of handle hops"):
        fit_hop(lambda h: one_shape, high_s=0.001)
    # The fused config measured slower than apart: no hop explains it, 0 is kept and said.
    observed = {False: 0.010, True: 0.020}

    def slow_fused(hop_s: float) -> list[Target]:
        return [Target(_hop_world(hop_s, 0.004 - hop_s, fused, 60), p50, 2 * p50)
                for fused, p50 in observed.items()]  # fmt: skip

    fit = fit_hop(slow_fused, high_s=0.003, requests=500, warmup_requests=50)
    assert fit.seconds == 0.0 and fit.note is not None and "0 kept" in fit.note
    assert fit.simulations == 1
