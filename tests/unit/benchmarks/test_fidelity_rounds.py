"""Joining a fidelity run's rounds: one case per config and rate, with the load client's summary."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from fidelity_rounds import merge_rounds, quiet_probes, round_changes

from serving.loadgen import Outcome, RequestRecords, summarize


def _probe(
    config: str, rate: float, latencies: list[float], seconds: float, k: int
) -> dict[str, Any]:
    n = len(latencies)
    scheduled = np.linspace(0.0, seconds, n, endpoint=False)
    outcome = [Outcome.TIMEOUT if math.isnan(v) else Outcome.OK for v in latencies]
    records = RequestRecords(
        scheduled,
        np.full(n, 0.001),
        np.asarray(latencies, dtype=float),
        np.asarray([list(Outcome).index(o) for o in outcome], np.int8),
        np.asarray([0 if o is Outcome.TIMEOUT else 200 for o in outcome], np.int16),
    )
    load = summarize(records, seconds)
    load["records"] = {
        "scheduled_s": scheduled.tolist(),
        "lateness_s": records.lateness_s.tolist(),
        "latency_s": records.latency_s.tolist(),
        "outcome": [o.value for o in outcome],
        "status": records.status.tolist(),
    }
    return {
        "config": config, "assignments": [f"x={config}"], "rate": rate, "round": k,
        "load": load, "snapshots": [{"at": k}], "steal": 0.1 * (k + 1), "busy_host": k == 1,
    }  # fmt: skip


def test_rounds_join_into_one_case_with_percentiles_over_all_their_requests() -> None:
    fast = [0.010 + 0.001 * i for i in range(40)]
    slow = [0.050 + 0.001 * i for i in range(20)]
    cases = [
        _probe("base", 4.0, fast, 10.0, 0),
        _probe("other", 4.0, fast, 10.0, 0),
        _probe("other", 4.0, fast, 10.0, 1),
        _probe("base", 4.0, slow, 5.0, 1),
    ]
    merged = merge_rounds(cases)

    assert [(c["config"], c.get("rounds", 1)) for c in merged] == [("base", 2), ("other", 2)]
    base = merged[0]
    everything = np.sort(np.asarray(fast + slow))
    assert base["load"]["latency_s"]["p50"] == pytest.approx(everything[29])
    assert base["load"]["latency_s"]["p99"] == pytest.approx(everything[59])
    assert base["load"]["ok"] == 60
    # Rates are totals over the probes' 15 s, not over the joined span with its gap.
    assert base["load"]["sent_rps"] == pytest.approx(60 / 15.0)
    assert base["load"]["goodput_rps"] == pytest.approx(60 / base["load"]["elapsed_s"])
    assert 15.0 <= base["load"]["elapsed_s"] < 16.0
    # The second round's send times come after the first's, so blocks of time stay apart.
    sent = base["load"]["records"]["scheduled_s"]
    assert sent == sorted(sent) and sent[40] >= 10.0 + 5.0
    assert base["steal"] == pytest.approx(0.15) and base["busy_host"] is True
    assert base["snapshots"] == []  # calibration reads each round's own window


def test_a_timed_out_request_counts_as_infinitely_slow_once_joined() -> None:
    cases = [
        _probe("base", 4.0, [0.01] * 50, 10.0, 0),
        _probe("base", 4.0, [0.02] * 49 + [math.nan], 10.0, 1),
    ]
    (merged,) = merge_rounds(cases)
    assert merged["load"]["ok"] == 99
    assert merged["load"]["latency_s"]["p99"] == pytest.approx(0.02)
    assert merged["load"]["latency_s"]["p99.9"] is None  # beyond the timeout


def test_one_round_passes_through_and_has_no_round_changes() -> None:
    cases = [_probe("base", 4.0, [0.01] * 10, 5.0, 0), _probe("base", 10.0, [0.01] * 10, 5.0, 0)]
    assert merge_rounds(cases) == cases
    assert round_changes(cases) == {}


def test_round_changes_compare_a_cases_last_round_with_its_first() -> None:
    cases = [
        _probe("base", 4.0, [0.010] * 100, 10.0, 0),
        _probe("base", 4.0, [0.012] * 100, 10.0, 1),
    ]
    changes = round_changes(cases)
    assert changes["base at 4 req/s"]["p50"] == pytest.approx(0.2)
    assert changes["base at 4 req/s"]["p99"] == pytest.approx(0.2)


def test_rounds_without_the_full_records_are_refused_with_what_is_missing() -> None:
    cases = [_probe("base", 4.0, [0.01] * 10, 5.0, k) for k in (0, 1)]
    del cases[1]["load"]["records"]["status"]
    with pytest.raises(ValueError, match="lack status"):
        merge_rounds(cases)


def test_probes_on_a_busy_host_are_left_out_where_a_quiet_one_measured_the_same_case() -> None:
    quiet, busy = (_probe("base", 4.0, [0.01] * 10, 5.0, k) for k in (0, 1))
    only_busy = _probe("other", 4.0, [0.01] * 10, 5.0, 1)
    kept, noisy = quiet_probes([quiet, busy, only_busy])
    assert kept == [quiet, only_busy]
    assert noisy == ["other at 4 req/s"]
