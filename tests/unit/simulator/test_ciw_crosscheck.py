"""Cross-check against an independent discrete-event library (ciw) on an open tandem network:
Poisson arrivals → M/M/1 → M/M/2. Jackson's theorem gives each node's mean wait as well."""

from __future__ import annotations

import math

import ciw
import pytest

from simulator import simulate
from simulator.load import validate_spec

LAMBDA, MU1, MU2 = 700.0, 1000.0, 500.0


def _theory() -> tuple[float, float]:
    w1 = (LAMBDA / MU1) / (MU1 - LAMBDA)  # M/M/1: 2.33 ms
    a, c = LAMBDA / MU2, 2
    top = a**c / math.factorial(c) * c / (c - a)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return w1, p_wait / (c * MU2 - LAMBDA)  # M/M/2 (Erlang C): 1.92 ms


def _ciw_waits(customers: int, seed: int) -> tuple[float, float]:
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(LAMBDA), None],
        service_distributions=[ciw.dists.Exponential(MU1), ciw.dists.Exponential(MU2)],
        number_of_servers=[1, 2],
        routing=[[0.0, 1.0], [0.0, 0.0]],
    )
    ciw.seed(seed)
    sim = ciw.Simulation(network)
    sim.simulate_until_max_customers(customers, method="Finish")
    records = sim.get_all_records()
    warm = 10.0  # seconds
    w1 = [r.waiting_time for r in records if r.node == 1 and r.arrival_date > warm]
    w2 = [r.waiting_time for r in records if r.node == 2 and r.arrival_date > warm]
    return sum(w1) / len(w1), sum(w2) / len(w2)


def test_tandem_network_agrees_with_ciw_and_jackson() -> None:
    spec = validate_spec(
        {
            "name": "tandem",
            "workload": {"rate_rps": LAMBDA},
            "stages": [
                {
                    "name": "first",
                    "service": {"model": "exponential", "mean_s": 1 / MU1},
                    "max_ongoing_requests": 1,
                },
                {
                    "name": "second",
                    "service": {"model": "exponential", "mean_s": 1 / MU2},
                    "replicas": 2,
                    "max_ongoing_requests": 1,
                },
            ],
            "slo": {"p99_s": 1.0},
            "router": {"initial_backoff_s": 0},  # the textbook router: no retry back-off
        },
        source="test",
    )
    report = simulate(spec, requests=300_000, warmup_requests=10_000, seed=21)
    ours = (report.stages[0].queue_wait.mean_s, report.stages[1].queue_wait.mean_s)
    theirs = _ciw_waits(customers=100_000, seed=21)
    theory = _theory()
    for node in (0, 1):
        assert ours[node] == pytest.approx(theory[node], rel=0.05)
        assert theirs[node] == pytest.approx(theory[node], rel=0.10)  # fewer customers: wider
        assert ours[node] == pytest.approx(theirs[node], rel=0.12)
