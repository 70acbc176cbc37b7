"""The min_cost engine: known cost, learnt feasibility, constrained expected improvement."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from autotune.constrained import ConstrainedCostEngine
from autotune.evaluate import EvalTask, evaluate_task
from autotune.objective import MARGIN_FAILED, QualityModel, constraint_margin, objective_value
from autotune.run import make_engine
from autotune.space import SearchSpace
from autotune.tuner import GaussianProcessEngine, Tuner
from simulator import ServingConfig, load_spec
from tests.unit.autotune.helpers import EXAMPLES, tiny
from tests.unit.autotune.test_objective import OK


def test_make_engine_models_feasibility_only_for_min_cost() -> None:
    assert isinstance(make_engine(SearchSpace(tiny()), 0, 20), ConstrainedCostEngine)
    other = tiny(objective="min_p99", max_cost_per_hour=1.0)
    assert isinstance(make_engine(SearchSpace(other), 0, 20), GaussianProcessEngine)


def test_the_first_proposal_is_the_specs_own_config() -> None:
    spec = tiny()
    space = SearchSpace(spec)
    first = ConstrainedCostEngine(space, 0, initial_points=4).ask(1)[0]
    assert first == space.encode(ServingConfig.from_spec(spec))


def test_cost_is_computed_exactly_without_simulating() -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    space = SearchSpace(spec)
    engine = ConstrainedCostEngine(space, 0)
    points = engine.ask(6)
    for point, cost in zip(points, engine.cost(points), strict=True):
        config = space.decode(point)
        expected = sum(k.replicas * spec.replica_cost_per_hour(spec.stage(name), k.device)
                       for name, k in config.stages.items())  # fmt: skip
        assert cost == pytest.approx(expected)


def _margin(space: SearchSpace, point: list[Any]) -> float:
    """Synthetic: feasible iff front.replicas >= 2 and model.replicas >= 3."""
    config = space.decode(point)
    front, model = config.stages["front"].replicas, config.stages["model"].replicas
    return max(math.log(2 / front), math.log(3 / model))


def test_it_finds_the_cheapest_feasible_config_of_a_synthetic_problem() -> None:
    spec = tiny()
    space = SearchSpace(spec)
    engine = ConstrainedCostEngine(space, seed=3, initial_points=5, candidates=500)
    best = math.inf
    for _ in range(20):
        point = engine.ask(1)[0]
        margin = _margin(space, point)
        engine.tell([point], [margin])
        if margin <= 0:
            best = min(best, float(engine.cost([point])[0]))
    assert best == pytest.approx(2 * 0.025 + 3 * 0.1)  # front 2 × $0.025 + model 3 × $0.10


def test_same_seed_same_proposals() -> None:
    space = SearchSpace(tiny())

    def run(seed: int) -> list[list[Any]]:
        engine = ConstrainedCostEngine(space, seed, initial_points=3, candidates=300)
        out = []
        for _ in range(4):
            batch = engine.ask(2)
            engine.tell(batch, [_margin(space, p) for p in batch])
            out += batch
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_proposals_keep_the_quality_budget_of_a_cutoff() -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    space = SearchSpace(spec)
    engine = ConstrainedCostEngine(space, 0, initial_points=4)
    design = engine.ask(4)
    engine.tell(design, [0.5, -0.5, 1.0, -0.2])
    quality = QualityModel(spec)
    cutoff = space.names.index("features.cutoff_rank")
    for point in engine.ask(3):
        assert quality.loss(point[cutoff]) <= spec.tuning.quality.max_loss


def test_the_tuner_tells_a_margin_engine_margins() -> None:
    spec = tiny()
    space = SearchSpace(spec)
    told: list[float] = []

    class Spy(ConstrainedCostEngine):
        def tell(self, points: Any, values: Any) -> None:
            told.extend(values)

    tuner = Tuner(spec, Spy(space, 0, initial_points=2), space)
    for proposal in tuner.ask(2):
        outcome = evaluate_task(spec, EvalTask(proposal.trial, proposal.config, 0))
        tuner.tell(proposal, outcome)
    metrics = [t.metrics for t in tuner.trials]
    assert told == [constraint_margin(spec, m) for m in metrics if m is not None]


@pytest.mark.parametrize(
    "change",
    [{}, {"p99_s": 0.03}, {"p99_s": 0.0301}, {"p99_s": 4.0}, {"shed_rate": 0.0005},
     {"quality_loss": 0.001}, {"quality_loss": 0.0011}, {"completed": 0}],
)  # fmt: skip
def test_the_margin_is_at_most_zero_exactly_when_the_trial_is_feasible(
    change: dict[str, Any],
) -> None:
    spec = tiny()  # SLO p99 30 ms, no shedding allowed, quality budget 0.001
    m = replace(OK, **change)
    margin = constraint_margin(spec, m)
    _, feasible = objective_value(spec, m, 1.0)
    assert (margin <= 0) == feasible
    assert margin <= MARGIN_FAILED
