"""The baselines: Model Analyzer's sweep and hill-climb as engines, Ray Serve's defaults, and
`run_baselines` through the same evaluator and journal as BO."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from autotune.baselines import (
    HillClimbEngine,
    SweepEngine,
    batched_stages,
    ray_defaults_config,
    ray_defaults_trial,
    run_baselines,
)
from autotune.space import SearchSpace
from simulator import load_spec
from tests.unit.autotune.helpers import EXAMPLES, tiny


def _knobs(space: SearchSpace, point: list[Any], *names: str) -> tuple[Any, ...]:
    config = space.decode(point)
    return tuple(getattr(config.stages[n.split(".")[0]], n.split(".")[1]) for n in names)


def test_sweep_enumerates_replicas_outer_and_powers_of_two_batch_inner() -> None:
    space = SearchSpace(tiny())
    engine = SweepEngine(space)
    combos = [_knobs(space, p, "model.replicas", "model.max_batch_size") for p in engine.points]
    assert combos == [(r, b) for r in (1, 2, 3, 4) for b in (1, 2, 4, 8, 16)]
    assert len(engine.ask(7)) == 7 and len(engine.ask(100)) == 13 and engine.ask(1) == []


def test_sweep_holds_other_knobs_at_the_baseline_and_max_ongoing_at_the_product() -> None:
    space = SearchSpace(tiny())
    for point in SweepEngine(space).points:
        config = space.decode(point)
        model, front = config.stages["model"], config.stages["front"]
        assert model.max_ongoing_requests == model.max_batch_size * model.max_concurrent_batches
        assert model.batch_wait_timeout_s == 0.002 and front.replicas == 1  # the spec's


def test_sweep_of_the_example_covers_the_ranker_only() -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    space = SearchSpace(spec)
    assert batched_stages(spec) == ["ranker"]
    points = SweepEngine(space).points
    assert len(points) == 8 * 7  # replicas 1..8 × batch 1..64
    features = {_knobs(space, p, "features.replicas", "features.cache_capacity") for p in points}
    assert features == {(4, 20000)}


def _climb(space: SearchSpace, score: Any, budget: int = 200) -> list[tuple[Any, ...]]:
    engine = HillClimbEngine(space)
    names = ("front.replicas", "model.replicas", "model.max_batch_size")
    seen: list[tuple[Any, ...]] = []
    while len(seen) < budget:
        points = engine.ask(3)
        if not points:
            break
        values = [score(_knobs(space, p, *names)) for p in points]
        seen += [_knobs(space, p, *names) for p in points]
        engine.tell(points, values)
    return seen


def test_hill_climb_starts_minimal_and_walks_to_the_optimum_of_a_convex_score() -> None:
    space = SearchSpace(tiny())

    def score(knobs: tuple[int, int, int]) -> float:  # best at front 2, model 3, batch 8
        f, m, b = knobs
        return (f - 2) ** 2 + (m - 3) ** 2 + math.log2(b / 8) ** 2

    seen = _climb(space, score)
    assert seen[0] == (1, 1, 1)  # the minimal config first
    assert min(seen, key=score) == (2, 3, 8)
    assert len(seen) == len(set(seen)) < 5 * 3 * 4  # never re-measures, far fewer than a sweep


def test_hill_climb_stops_at_a_local_optimum() -> None:
    space = SearchSpace(tiny())
    seen = _climb(space, lambda k: 0.0 if k == (1, 1, 1) else 1.0)
    assert seen[0] == (1, 1, 1) and len(seen) == 4  # the start and its three neighbours


def test_ray_defaults_are_ray_serves_defaults() -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    config = ray_defaults_config(spec)
    for name, knobs in config.stages.items():
        assert knobs.replicas == 1 and knobs.max_ongoing_requests == 5
        assert knobs.max_queued_requests == -1 and knobs.max_concurrent_batches == 1
        assert knobs.max_batch_size == (10 if name == "ranker" else 1)
        assert knobs.batch_wait_timeout_s == 0.01 and knobs.cutoff_rank is None
    assert config.stages["features"].cache_capacity == 20000  # no cache tuning: the spec's


def test_ray_defaults_trial_is_one_judged_evaluation() -> None:
    trial = ray_defaults_trial(tiny())
    assert trial.strategy == "ray-defaults" and trial.metrics is not None
    assert trial.config.stages["model"].max_batch_size == 10


def test_run_baselines_appends_to_the_journal_and_resume_replays(tmp_path: Path) -> None:
    spec = tiny()
    results = run_baselines(spec, budget=4, out_dir=tmp_path)
    assert list(results) == ["random", "sweep", "hill-climb", "ray-defaults"]
    assert [len(results[k]) for k in ("random", "sweep", "ray-defaults")] == [4, 4, 1]
    assert 1 <= len(results["hill-climb"]) <= 4
    assert all(t.seed == 0 for ts in results.values() for t in ts)  # the same seed as BO
    journal = tmp_path / "trials.jsonl"
    lines = journal.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "run"
    assert len(lines) == 1 + sum(len(ts) for ts in results.values())
    again = run_baselines(spec, budget=4, out_dir=tmp_path, resume=True)
    assert journal.read_text().splitlines() == lines  # replayed from the journal, nothing re-run
    assert {k: [t.value for t in v] for k, v in again.items()} == {
        k: [t.value for t in v] for k, v in results.items()
    }


def test_run_baselines_with_a_larger_budget_resumes_and_extends(tmp_path: Path) -> None:
    spec = tiny()
    run_baselines(spec, budget=2, out_dir=tmp_path)
    more = run_baselines(spec, budget=3, out_dir=tmp_path, resume=True)
    assert len(more["random"]) == 3 and [t.trial for t in more["sweep"]] == [0, 1, 2]


@pytest.mark.parametrize("budget", [1, 3])
def test_every_baseline_stays_within_budget(tmp_path: Path, budget: int) -> None:
    results = run_baselines(tiny(), budget=budget, out_dir=tmp_path)
    assert all(len(v) <= budget for v in results.values())
