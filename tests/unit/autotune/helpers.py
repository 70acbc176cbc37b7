"""A tiny two-stage pipeline that simulates in milliseconds, for tuner tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from simulator import PipelineSpec
from simulator.load import validate_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

TINY: dict[str, Any] = {
    "name": "tiny",
    "workload": {"arrival": "poisson", "rate_rps": 400, "rows_per_request": 4},
    "stages": [
        {
            "name": "front",
            "service": {"model": "lognormal", "mean_s": 0.001, "cv": 0.3},
            "resources": {"cpu": 0.5},
            "replicas": 1,
        },
        {
            "name": "model",
            "service": {"model": "linear", "base_s": 0.002, "per_row_s": 0.0002, "cv": 0.1},
            "resources": {"cpu": 2.0},
            "replicas": 2,
            "max_ongoing_requests": 8,
            "max_batch_size": 4,
            "batch_wait_timeout_s": 0.002,
        },
    ],
    "slo": {"p99_s": 0.03},
    "cost": {"cpu_hour": 0.05},
    "simulation": {"requests": 400, "warmup_requests": 50, "seed": 0},
    "tuning": {
        "trial_requests": 300,
        "trial_warmup_requests": 50,
        "knobs": {
            "front.replicas": {"low": 1, "high": 3},
            "model.replicas": {"low": 1, "high": 4},
            "model.max_batch_size": {"low": 1, "high": 16, "log": True},
            "model.max_ongoing_requests": {"low": 1, "high": 64, "log": True},
            "model.batch_wait_timeout_s": {"low": 0.0005, "high": 0.01, "log": True},
        },
    },
}


def tiny(**tuning: Any) -> PipelineSpec:
    """The tiny spec, with `tuning` fields replaced (e.g. knobs=..., objective=...)."""
    data = copy.deepcopy(TINY)
    data["tuning"].update(tuning)
    return validate_spec(data, source="tiny")


def tiny_file(tmp_path: Path, **tuning: Any) -> Path:
    data = copy.deepcopy(TINY)
    data["tuning"].update(tuning)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
