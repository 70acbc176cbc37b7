"""Arrival processes, service-time models and the Zipf sampler."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from simulator import InputError, simulate
from simulator.service import make_sampler, mean_seconds
from simulator.spec import Linear, Lognormal, Profile, WorkloadSpec
from simulator.workload import arrival_times
from simulator.zipf import ZipfSampler, zipf_probabilities

from .helpers import one_stage, trace_file


def _take(workload: WorkloadSpec, n: int, seed: int = 0) -> np.ndarray:
    return np.fromiter(
        itertools.islice(arrival_times(workload, np.random.default_rng(seed)), n), float
    )


def test_poisson_rate_and_exponential_gaps() -> None:
    times = _take(WorkloadSpec(rate_rps=500.0), 200_000)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.01)  # CV of an exponential


def test_schedule_rates_per_segment_and_repeat() -> None:
    workload = WorkloadSpec.model_validate(
        {
            "arrival": "schedule",
            "rate_rps": 100.0,
            "schedule": [
                {"duration_s": 10, "rate_factor": 1.0},
                {"duration_s": 5, "rate_factor": 4.0},
                {"duration_s": 5, "rate_factor": 0.0},
            ],
        }
    )
    times = _take(workload, 130_000)  # 3000 arrivals per 20 s period
    phase = times[times < 40 * 20] % 20  # 40 periods of 20 s
    assert np.sum(phase < 10) / 400 == pytest.approx(100, rel=0.03)  # 100 req/s for 10 s
    assert np.sum((phase >= 10) & (phase < 15)) / 200 == pytest.approx(400, rel=0.03)
    assert np.sum(phase >= 15) == 0  # rate 0


def test_trace_replay_is_exact_and_can_be_rescaled(tmp_path: Path) -> None:
    path = trace_file(tmp_path, [10.0, 10.5, 11.0, 13.0])
    replay = WorkloadSpec.model_validate({"arrival": "trace", "trace_file": str(path)})
    assert _take(replay, 10).tolist() == [0.0, 0.5, 1.0, 3.0]
    rescaled = WorkloadSpec.model_validate(
        {"arrival": "trace", "trace_file": str(path), "rate_rps": 2.0}
    )
    assert _take(rescaled, 10).tolist() == pytest.approx([0.0, 0.25, 0.5, 1.5])


def test_bad_trace_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("0.0\n0.1\nsoon\n")
    workload = WorkloadSpec.model_validate({"arrival": "trace", "trace_file": str(path)})
    with pytest.raises(InputError, match=r"line 3: expected a timestamp in seconds \(got 'soon'\)"):
        _take(workload, 3)


def test_a_trace_shorter_than_the_run_is_reported(tmp_path: Path) -> None:
    spec = one_stage(
        {"service": {"model": "deterministic", "seconds": 0.001}},
        {"arrival": "trace", "trace_file": str(trace_file(tmp_path, [0.0, 1.0, 2.0]))},
    )
    with pytest.raises(InputError, match="the workload ended after 3 arrivals"):
        simulate(spec, requests=10, warmup_requests=0)


def test_lognormal_and_linear_models_have_the_stated_moments() -> None:
    rng = np.random.default_rng(1)
    lognormal = make_sampler(Lognormal(mean_s=0.004, cv=0.5), rng)
    draws = np.array([lognormal(1) for _ in range(200_000)])
    assert draws.mean() == pytest.approx(0.004, rel=0.01)
    assert draws.std() / draws.mean() == pytest.approx(0.5, rel=0.03)
    linear = make_sampler(Linear(base_s=0.002, per_row_s=0.0001, cv=0.1), rng)
    rows_64 = np.array([linear(64) for _ in range(100_000)])
    assert rows_64.mean() == pytest.approx(0.002 + 64 * 0.0001, rel=0.01)


def test_profile_interpolates_quantiles_between_sizes_and_scales_beyond() -> None:
    profile = Profile(table={1: [0.001, 0.003], 4: [0.004, 0.012]})
    sampler = make_sampler(profile, np.random.default_rng(2))
    at_1 = {sampler(1) for _ in range(200)}
    assert at_1 == {0.001, 0.003}
    at_2 = {round(sampler(2), 9) for _ in range(200)}
    assert at_2 == {0.002, 0.006}  # one third of the way from size 1 to size 4
    at_8 = {round(sampler(8), 9) for _ in range(200)}
    assert at_8 == {0.008, 0.024}
    assert mean_seconds(profile, 4) == pytest.approx(0.008)


def test_profile_file_written_by_jizhi_profile(tmp_path: Path) -> None:
    path = tmp_path / "profile_cpu.json"
    path.write_text('{"device": "cpu", "latency_s": {"1": [0.001], "8": [0.002]}}')
    sampler = make_sampler(Profile(file=path, scale=2.0), np.random.default_rng(0))
    assert sampler(8) == pytest.approx(0.004)
    path.write_text('{"device": "cpu"}')
    with pytest.raises(InputError, match="not a latency profile"):
        make_sampler(Profile(file=path), np.random.default_rng(0))


@pytest.mark.parametrize("alpha", [0.6, 1.0, 1.3])
def test_zipf_sampler_matches_the_distribution(alpha: float) -> None:
    n = 1000
    keys = ZipfSampler(n, alpha, np.random.default_rng(5)).sample(1_000_000)
    assert keys.min() >= 0 and keys.max() < n
    observed = np.bincount(keys, minlength=n)
    expected = zipf_probabilities(n, alpha) * keys.size
    # goodness of fit over all 1000 ranks (p-values at this seed: 0.06, 0.18, 0.35)
    assert chisquare(observed, expected).pvalue > 0.01


def test_zipf_sampler_is_seeded() -> None:
    a = ZipfSampler(10**6, 0.9, np.random.default_rng(1)).sample(1000)
    b = ZipfSampler(10**6, 0.9, np.random.default_rng(1)).sample(1000)
    c = ZipfSampler(10**6, 0.9, np.random.default_rng(2)).sample(1000)
    assert (a == b).all() and not (a == c).all()
