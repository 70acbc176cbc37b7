"""The ask/tell tuner on a tiny spec: random and GP engines, seeding, failed trials."""

from __future__ import annotations

from typing import Any

import pytest

import autotune.evaluate
from autotune.evaluate import EvalTask, SimulatorEvaluator, evaluate_task
from autotune.run import run_strategy
from autotune.space import SearchSpace
from autotune.tuner import GaussianProcessEngine, RandomEngine, SearchEngine, Tuner
from tests.unit.autotune.helpers import tiny


def _engine(kind: str, space: SearchSpace, seed: int) -> SearchEngine:
    if kind == "gp":
        return GaussianProcessEngine(space, seed, initial_points=3)
    return RandomEngine(space, seed)


@pytest.mark.parametrize("kind", ["random", "gp"])
def test_ask_tell_loop_records_every_trial(kind: str) -> None:
    spec = tiny()
    space = SearchSpace(spec)
    tuner = Tuner(spec, _engine(kind, space, 0), space, strategy=kind)
    evaluator = SimulatorEvaluator(spec)
    trials = run_strategy(tuner, evaluator, budget=5, seed=0, batch=2)
    assert [t.trial for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.strategy == kind and t.metrics is not None and t.error is None for t in trials)
    assert all(t.seed == 0 for t in trials)  # common random numbers
    best = tuner.best()
    assert not best or best[0].value == min(t.value for t in trials if t.feasible)


@pytest.mark.parametrize("kind", ["random", "gp"])
def test_same_seed_same_proposals_other_seed_other_proposals(kind: str) -> None:
    spec = tiny()
    space = SearchSpace(spec)

    def proposals(seed: int) -> list[tuple[Any, ...]]:
        tuner = Tuner(spec, _engine(kind, space, seed), space)
        return [p.point for p in tuner.ask(3)]

    assert proposals(1) == proposals(1)
    assert proposals(1) != proposals(2)


def test_gp_engine_learns_from_what_it_is_told() -> None:
    spec = tiny()
    space = SearchSpace(spec)
    told = GaussianProcessEngine(space, 0, initial_points=3)
    fresh = GaussianProcessEngine(space, 0, initial_points=3)
    points = RandomEngine(space, 5).ask(4)
    told.tell(points, [1.0, 2.0, 3.0, 4.0])
    assert told.ask(1) != fresh.ask(1)  # past the initial design: proposals come from the GP


def test_a_trial_that_raises_is_recorded_as_failed_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = tiny()
    space = SearchSpace(spec)
    real = autotune.evaluate.simulate
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("replica exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(autotune.evaluate, "simulate", flaky)
    tuner = Tuner(spec, RandomEngine(space, 0), space, strategy="random")
    trials = run_strategy(tuner, SimulatorEvaluator(spec), budget=4, seed=0, batch=1)
    assert len(trials) == 4
    failed = [t for t in trials if t.error is not None]
    assert len(failed) == 1 and "RuntimeError: replica exploded" in (failed[0].error or "")
    assert failed[0].metrics is None and not failed[0].feasible
    assert failed[0].value > max(t.value for t in trials if t.error is None)


def test_evaluate_task_never_raises() -> None:
    spec = tiny()
    config = SearchSpace(spec).decode([1, 1, 0.5, 4, 0.002])
    outcome = evaluate_task(spec.model_copy(update={"stages": []}), EvalTask(3, config, 0))
    assert outcome.key == 3 and outcome.metrics is None and outcome.error


@pytest.mark.filterwarnings("ignore:The objective has been evaluated")
def test_min_p99_tunes_with_the_penalised_gp_within_the_budget(tmp_path: Any) -> None:
    from autotune.run import tune

    spec = tiny(objective="min_p99", max_cost_per_hour=0.3)
    result = tune(spec, trials=5, out_dir=tmp_path, initial_points=3)
    assert len(result.trials) == 5
    if result.winner is not None:
        m = result.winner.metrics
        assert m is not None and m.cost_per_hour <= 0.3 and result.winner.value == m.p99_s
