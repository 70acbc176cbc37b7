"""`trials.jsonl`: the run's journal. One header line, then one line per finished trial, flushed as
it finishes, so a crash loses at most the trials in flight and `--resume` picks up from the file.

Header: `{"kind": "run", "spec": NAME, "fingerprint": HASH, "objective": ..., "dimensions": [...]}`.
Trial: `{"kind": "trial", "trial", "strategy", "point", "config", "seed", "metrics", "value",
"feasible", "error", "wall_s"}` — `config` is the full knob set, `metrics` a `TrialMetrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from autotune.objective import TrialMetrics
from autotune.space import SearchSpace
from autotune.tuner import Trial
from simulator import PipelineSpec, ServingConfig
from simulator.errors import InputError

__all__ = ["TrialLog", "fingerprint", "read_trials"]


def fingerprint(spec: PipelineSpec) -> str:
    """Hash of everything that makes trials comparable: the spec without its simulation defaults.

    Sections and knobs added later that are off (no `node` section, `in_ranker` false on a
    compute stage) are left out, so a journal of a spec that does not use them stays valid.
    """
    data = spec.model_dump(mode="json", exclude={"simulation", "description"})
    if data.get("node") is None:
        data.pop("node", None)
    for stage in data["stages"]:
        if stage.get("kind") != "features" and not stage.get("in_ranker"):
            stage["in_ranker"] = None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _header(spec: PipelineSpec, space: SearchSpace) -> dict[str, Any]:
    return {
        "kind": "run",
        "spec": spec.name,
        "fingerprint": fingerprint(spec),
        "objective": spec.tuning.objective.value,
        "dimensions": space.names,
    }


def trial_to_json(trial: Trial) -> dict[str, Any]:
    return {
        "kind": "trial",
        "trial": trial.trial,
        "strategy": trial.strategy,
        "point": list(trial.point),
        "config": trial.config.knobs(),
        "seed": trial.seed,
        "metrics": asdict(trial.metrics) if trial.metrics is not None else None,
        "value": trial.value,
        "feasible": trial.feasible,
        "error": trial.error,
        "wall_s": trial.wall_s,
    }


def trial_from_json(data: dict[str, Any]) -> Trial:
    return Trial(
        trial=int(data["trial"]),
        strategy=str(data["strategy"]),
        point=tuple(data["point"]),
        config=ServingConfig.model_validate({"stages": data["config"]}),
        seed=int(data["seed"]),
        metrics=TrialMetrics(**data["metrics"]) if data["metrics"] is not None else None,
        value=float(data["value"]),
        feasible=bool(data["feasible"]),
        error=data["error"],
        wall_s=float(data["wall_s"]),
    )


def read_trials(path: Path, spec: PipelineSpec, space: SearchSpace) -> list[Trial]:
    """The trials of an earlier run of the same spec and space; a torn last line is skipped."""
    lines = path.read_text().splitlines()
    if not lines:
        return []
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise InputError(f"{path}: not a jizhi trials file (bad header line)") from None
    expected = _header(spec, space)
    if header.get("kind") != "run":
        raise InputError(f"{path}: not a jizhi trials file (no run header)")
    if header.get("fingerprint") != expected["fingerprint"]:
        raise InputError(
            f"{path}: these trials come from another spec or search space "
            f"({header.get('spec')!r}, fingerprint {header.get('fingerprint')}); "
            f"resume needs the same spec, or a new --out"
        )
    trials = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            trials.append(trial_from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if number == len(lines):  # the line being written when the run died
                break
            raise InputError(f"{path}: line {number} is not a trial record") from None
    return trials


class TrialLog:
    """Appends trials to `trials.jsonl`, one flushed and fsynced line each."""

    def __init__(self, path: Path, spec: PipelineSpec, space: SearchSpace, resume: bool) -> None:
        self.path = path
        fresh = not (resume and path.exists() and path.stat().st_size > 0)
        self._file: IO[str] = path.open("w" if fresh else "a")
        if fresh:
            self._write(_header(spec, space))

    def append(self, trial: Trial) -> None:
        self._write(trial_to_json(trial))

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
