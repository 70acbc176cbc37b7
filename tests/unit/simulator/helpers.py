"""Small builders for simulator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator import PipelineSpec, load_pipeline
from simulator.load import validate_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str, *overrides: str) -> PipelineSpec:
    """An example spec with `--set`-style overrides applied."""
    return load_pipeline(EXAMPLES / name, overrides=list(overrides))


def one_stage(stage: dict[str, Any], workload: dict[str, Any], **sections: Any) -> PipelineSpec:
    """A one-stage pipeline named 'server' from plain dicts."""
    data = {
        "name": "test",
        "workload": workload,
        "stages": [{"name": "server", **stage}],
        "slo": {"p99_s": 1.0},
        **sections,
    }
    return validate_spec(data, source="test")


def trace_file(tmp_path: Path, times: list[float]) -> Path:
    path = tmp_path / "arrivals.txt"
    path.write_text("".join(f"{t}\n" for t in times))
    return path
