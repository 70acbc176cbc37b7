"""The JSON files other components read: the quality-vs-cut-off curve and the latency profile.

Defined once, as pydantic models, so that the writer and every reader agree on the fields.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, model_validator

from simulator.errors import InputError

__all__ = [
    "LatencyProfile",
    "QualityCurve",
    "QualityMetrics",
    "QualityPoint",
    "read_json_model",
    "write_json_atomic",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityMetrics(_Frozen):
    auc: float
    logloss: float


class QualityPoint(_Frozen):
    """Keys with 0-based popularity rank >= `cutoff_rank` replaced by zero vectors (the K most popular kept)."""

    cutoff_rank: NonNegativeInt
    auc: float
    logloss: float
    fraction_lookups_cut: float = Field(ge=0.0, le=1.0)


class QualityCurve(_Frozen):
    """`quality_vs_cutoff.json`: measured on the held-out target test set; ascending cut-offs."""

    metric_baseline: QualityMetrics
    points: list[QualityPoint]

    @model_validator(mode="after")
    def _ascending(self) -> QualityCurve:
        ranks = [p.cutoff_rank for p in self.points]
        if not ranks or ranks != sorted(set(ranks)):
            raise ValueError("points need strictly ascending cutoff_rank values")
        return self


class LatencyProfile(_Frozen):
    """`profile_<device>.json`: raw per-call seconds of the dense part per batch size (rows)."""

    device: Literal["cpu", "cuda"]
    device_name: str
    torch_threads: int
    batch_rows: list[int]
    latency_s: dict[str, list[float]]
    p50_s: dict[str, float]
    p99_s: dict[str, float]

    @model_validator(mode="after")
    def _consistent(self) -> LatencyProfile:
        keys = {str(b) for b in self.batch_rows}
        for name in ("latency_s", "p50_s", "p99_s"):
            if set(getattr(self, name)) != keys:
                raise ValueError(f"{name} must have one entry per batch_rows value")
        if any(len(v) == 0 for v in self.latency_s.values()):
            raise ValueError("every batch size needs at least one latency sample")
        return self


_Model = TypeVar("_Model", bound=BaseModel)


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_model(path: Path, model: type[_Model]) -> _Model:
    """Parse `path` into `model`; any problem is an InputError naming the file."""
    try:
        return model.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"{path}: {where}: {first['msg']}") from None
