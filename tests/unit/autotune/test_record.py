"""trials.jsonl: every trial journalled as it finishes; --resume continues and warm-starts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from autotune.constrained import ConstrainedCostEngine
from autotune.evaluate import EvalTask, Outcome, SimulatorEvaluator
from autotune.record import read_trials
from autotune.run import tune
from autotune.space import SearchSpace
from autotune.tuner import Tuner
from simulator import InputError
from tests.unit.autotune.helpers import tiny


class CrashError(Exception):
    pass


class CrashingEvaluator:
    """Passes `after` outcomes through, then dies like a killed process."""

    def __init__(self, spec: object, after: int) -> None:
        self.inner = SimulatorEvaluator(tiny())
        self.after = after
        self.seen = 0

    def evaluate(self, tasks: Sequence[EvalTask]) -> Iterator[Outcome]:
        for outcome in self.inner.evaluate(tasks):
            if self.seen == self.after:
                raise CrashError
            self.seen += 1
            yield outcome

    def close(self) -> None:
        self.inner.close()


def _bo_points(path: Path) -> list[list[object]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [r["point"] for r in lines if r["strategy"] == "bo"]


def test_resume_after_a_crash_continues_where_it_stopped_and_warm_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny()
    whole = tune(spec, trials=5, out_dir=tmp_path / "whole", initial_points=3)
    crashed = tmp_path / "crashed"
    with pytest.raises(CrashError):
        tune(spec, trials=5, out_dir=crashed, initial_points=3,
             evaluator=CrashingEvaluator(spec, after=3))  # fmt: skip
    journalled = _bo_points(crashed / "trials.jsonl")
    assert journalled == [list(t.point) for t in whole.trials[:3]]  # nothing finished was lost

    told: list[int] = []
    real_tell = ConstrainedCostEngine.tell

    def spy(
        self: ConstrainedCostEngine, points: Sequence[Sequence[object]], values: Sequence[float]
    ) -> None:
        told.append(len(points))
        real_tell(self, points, values)

    monkeypatch.setattr(ConstrainedCostEngine, "tell", spy)
    resumed = tune(spec, trials=5, out_dir=crashed, initial_points=3, resume=True)
    assert [t.trial for t in resumed.trials] == [0, 1, 2, 3, 4]
    assert told[0] == 3  # the warm start: the journalled trials, told before the first ask
    points = _bo_points(crashed / "trials.jsonl")
    assert len(points) == 5 and points[:3] == journalled
    # A cold engine would have proposed its first design points again.
    cold = [
        list(p.point) for p in Tuner(spec, ConstrainedCostEngine(SearchSpace(spec), 0, 3)).ask(2)
    ]
    assert points[3:] != cold and points[3] not in journalled


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spec = tiny()
    tune(spec, trials=3, out_dir=tmp_path, initial_points=3)
    journal = tmp_path / "trials.jsonl"
    journal.write_text(journal.read_text() + '{"kind": "trial", "trial": 3, "str')
    trials = read_trials(journal, spec, SearchSpace(spec))
    assert len([t for t in trials if t.strategy == "bo"]) == 3


def test_a_journal_from_another_spec_is_refused(tmp_path: Path) -> None:
    tune(tiny(), trials=2, out_dir=tmp_path, initial_points=2)
    other = tiny(trial_requests=500)
    with pytest.raises(InputError, match="another spec or search space") as info:
        tune(other, trials=2, out_dir=tmp_path, resume=True)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trials.jsonl").write_text("hello\n")
    with pytest.raises(InputError, match="not a jizhi trials file"):
        tune(tiny(), trials=2, out_dir=tmp_path, resume=True)


def test_every_trial_line_has_the_documented_fields(tmp_path: Path) -> None:
    tune(tiny(), trials=2, out_dir=tmp_path, initial_points=2)
    lines = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "run" and lines[0]["dimensions"][0] == "front.replicas"
    fields = {"trial", "strategy", "point", "config", "seed", "metrics", "value", "feasible",
              "error", "wall_s"}  # fmt: skip
    assert all(fields <= set(r) for r in lines[1:])
    assert {r["strategy"] for r in lines[1:]} <= {"bo", "rerun"}
