"""The engine against queueing theory: M/M/1, M/M/c (Erlang C), M/D/1 (Pollaczek–Khinchine),
M/M/1/K shedding, Little's law and conservation.

Request counts are chosen so that 5% is at least two standard errors of the mean waiting time
(the sample mean of waits is strongly autocorrelated near saturation: ρ = 0.9 needs ~10^6).
"""

from __future__ import annotations

import math

import pytest

from simulator import simulate

from .helpers import example

# requests per utilisation level
_REQUESTS = {0.5: 300_000, 0.8: 300_000, 0.9: 1_000_000}


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    """Mean wait in queue of M/M/c (Erlang C)."""
    a = lam / mu
    top = a**c / math.factorial(c) * c / (c - a)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_mm1_mean_wait(rho: float) -> None:
    mu = 1000.0  # examples/queueing/mm1.yaml: exponential service, mean 1 ms
    spec = example("queueing/mm1.yaml", f"workload.rate_rps={rho * mu}")
    report = simulate(spec, requests=_REQUESTS[rho], warmup_requests=20_000, seed=11)
    theory = rho / (mu - rho * mu)  # ρ=0.5: 1 ms; 0.8: 4 ms; 0.9: 9 ms
    assert report.stages[0].queue_wait.mean_s == pytest.approx(theory, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_mmc_mean_wait_erlang_c(rho: float) -> None:
    mu, c = 100.0, 4  # examples/queueing/mmc.yaml: 4 replicas, exponential 10 ms
    lam = rho * c * mu
    spec = example("queueing/mmc.yaml", f"workload.rate_rps={lam}")
    report = simulate(spec, requests=_REQUESTS[rho], warmup_requests=20_000, seed=12)
    theory = erlang_c_wait(lam, mu, c)  # ρ=0.5: 0.87 ms; 0.8: 7.45 ms; 0.9: 20.4 ms
    assert report.stages[0].queue_wait.mean_s == pytest.approx(theory, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_md1_mean_wait_pollaczek_khinchine(rho: float) -> None:
    d = 0.001  # examples/queueing/md1.yaml: deterministic 1 ms
    spec = example("queueing/md1.yaml", f"workload.rate_rps={rho / d}")
    report = simulate(spec, requests=_REQUESTS[rho] // 2, warmup_requests=20_000, seed=13)
    theory = rho * d / (2 * (1 - rho))  # ρ=0.5: 0.5 ms; 0.8: 2 ms; 0.9: 4.5 ms
    assert report.stages[0].queue_wait.mean_s == pytest.approx(theory, rel=0.05)


def test_mm1k_shed_rate_matches_blocking_probability() -> None:
    # One request in service plus max_queued_requests = 5 waiting: M/M/1/K with K = 6.
    rho, k = 0.9, 6
    spec = example("queueing/mm1.yaml", "workload.rate_rps=900", "server.max_queued_requests=5")
    report = simulate(spec, requests=300_000, warmup_requests=10_000, seed=14)
    blocking = (1 - rho) * rho**k / (1 - rho ** (k + 1))  # 0.0839
    assert report.shed_rate == pytest.approx(blocking, rel=0.05)


def test_littles_law_per_stage_and_conservation() -> None:
    report = simulate(example("ctr.yaml"), requests=40_000, seed=15)
    for stage in report.stages:
        # L = λ W: time-average number in the stage against arrival rate × mean time in stage.
        assert stage.mean_in_stage == pytest.approx(
            stage.arrival_rate_rps * stage.latency.mean_s, rel=0.03
        ), stage.name
    assert report.arrived_total == (
        report.completed_total + report.shed_total + report.in_flight_at_end
    )
    assert report.completed + report.shed == report.requests


def test_conservation_with_shedding_and_hops() -> None:
    spec = example(
        "ctr.yaml",
        "workload.rate_rps=4000",
        "ranker.replicas=1",
        "ranker.max_queued_requests=20",
    )
    report = simulate(spec, requests=10_000, seed=16)
    assert report.shed > 0
    assert report.arrived_total == (
        report.completed_total + report.shed_total + report.in_flight_at_end
    )
    assert report.completed + report.shed == report.requests
