"""Warm starts: configs chosen before a run are evaluated first, as they are, and told to the engine."""

from __future__ import annotations

import json
from pathlib import Path

from autotune.evaluate import EvalTask, evaluate_task
from autotune.run import make_engine, tune
from autotune.space import SearchSpace
from autotune.tuner import Tuner
from simulator import ServingConfig, apply_config
from tests.unit.autotune.helpers import tiny


def config(**model: object) -> ServingConfig:
    spec = tiny()
    patch = ServingConfig.model_validate({"stages": {"model": model}})
    return ServingConfig.from_spec(apply_config(spec, patch))


def test_propose_keeps_the_config_and_places_it_in_the_space() -> None:
    spec = tiny()
    space = SearchSpace(spec)
    tuner = Tuner(spec, make_engine(space, 0, 10), space)
    wide = config(replicas=9)  # beyond the knob's range (1..4)
    inside, outside = tuner.propose([config(replicas=3), wide])
    assert (inside.trial, outside.trial) == (0, 1)
    assert inside.config == config(replicas=3) and space.decode(inside.point) == inside.config
    assert outside.config is wide and outside.point[space.names.index("model.replicas")] == 4
    tuner.tell(outside, evaluate_task(spec, EvalTask(outside.trial, outside.config, 0)))
    assert tuner.trials[0].config is wide
    assert tuner.ask(1)[0].trial == 2  # numbered after the proposals


def test_seed_configs_run_first_once_each_and_add_to_the_budget(tmp_path: Path) -> None:
    spec = tiny()
    a, b = config(replicas=2, max_batch_size=4), config(replicas=3, max_batch_size=8)
    result = tune(spec, trials=4, out_dir=tmp_path, seed=7, seed_configs=[a, b, a])
    assert len(result.trials) == 6  # 2 distinct seeds + 4 proposed
    assert [t.config for t in result.trials[:2]] == [a, b]
    assert all(t.seed == 7 for t in result.trials)  # the run's seed: comparable with the rest
    journal = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [r["config"] for r in journal[1:3]] == [a.knobs(), b.knobs()]
    again = tune(spec, trials=4, out_dir=tmp_path / "again", seed=7, seed_configs=[a, b])
    assert [t.point for t in again.trials] == [t.point for t in result.trials]  # seeded


def test_a_warm_start_never_ends_worse_than_its_seed(tmp_path: Path) -> None:
    spec = tiny()
    plain = tune(spec, trials=3, out_dir=tmp_path / "plain", seed=1)
    assert plain.winner is not None
    warm = tune(
        spec, trials=3, out_dir=tmp_path / "warm", seed=2, seed_configs=[plain.winner.config]
    )
    assert warm.winner is not None
    # the earlier winner is evaluated first, as it was: the run ends on it or on a cheaper one
    assert warm.trials[0].config == plain.winner.config
    assert warm.trials[0].feasible and warm.trials[0].value == plain.winner.value
    assert warm.winner.value <= plain.winner.value
