"""The search space: the spec's tunable knobs as dimensions, and points ↔ serving configs.

A point is a list of values in the optimiser's units, one per dimension. Every point decodes to a
config Ray Serve accepts without a warning: `max_ongoing_requests ≥ max_batch_size ×
max_concurrent_batches` holds by construction for every stage whose batch shape (max_batch_size or
max_concurrent_batches) is tuned. When `max_ongoing_requests` is tuned, its dimension is a
*headroom* u ∈ [0, 1] placed between that product and the knob's upper bound (log-scaled when the
knob is), so the optimiser searches a rectangle and never proposes a config it must repair; when it
is not tuned, it is raised to the product. A stage whose batching the spec fixes keeps the spec's
values, even a `max_ongoing_requests` below the product (its batches never fill and wait out the
timeout: the simulator models that, and the tuner changes only what it is asked to tune).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from simulator import PipelineSpec, ServingConfig, apply_config
from simulator.config import stage_knobs
from simulator.spec import KNOB_NAMES, KnobRange, StageKnobs

__all__ = ["Dimension", "DimensionKind", "SearchSpace"]

_INTEGER_KNOBS = frozenset(
    {
        "replicas",
        "max_ongoing_requests",
        "max_queued_requests",
        "max_batch_size",
        "max_concurrent_batches",
        "cache_capacity",
        "cutoff_rank",
    }
)


class DimensionKind(str, Enum):
    INTEGER = "integer"
    REAL = "real"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Dimension:
    """One axis of the search: a knob of a stage, in the optimiser's units."""

    stage: str
    knob: str
    kind: DimensionKind
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    headroom: KnobRange | None = None  # max_ongoing_requests: u ∈ [0, 1] over this range

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.knob}"


class SearchSpace:
    """The dimensions of `spec.tuning.knobs` in stage order, and decoding to configs.

    >>> from simulator import load_spec
    >>> space = SearchSpace(load_spec("examples/ctr.yaml"))
    >>> config = space.decode(space.sample_point(__import__("random").Random(0)))
    >>> r = config.stages["ranker"]
    >>> r.max_ongoing_requests >= r.max_batch_size * r.max_concurrent_batches
    True
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        order = {s.name: i for i, s in enumerate(spec.stages)}
        paths = sorted(
            spec.tuning.knobs,
            key=lambda p: (order[p.split(".")[0]], KNOB_NAMES.index(p.split(".")[1])),
        )
        self.dimensions: tuple[Dimension, ...] = tuple(
            _dimension(path, spec.tuning.knobs[path]) for path in paths
        )
        # stages whose max_ongoing_requests must make room for a tuned batch shape
        self._batch_shaped = sorted(
            {
                d.stage
                for d in self.dimensions
                if d.knob in ("max_batch_size", "max_concurrent_batches", "max_ongoing_requests")
            },
            key=order.__getitem__,
        )

    def __len__(self) -> int:
        return len(self.dimensions)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def decode(self, point: Sequence[Any]) -> ServingConfig:
        """The full config (every knob of every stage) a point stands for."""
        if len(point) != len(self.dimensions):
            raise ValueError(f"a point has {len(self.dimensions)} values (got {len(point)})")
        knobs = {s.name: stage_knobs(s) for s in self.spec.stages}
        headrooms: list[tuple[Dimension, float]] = []
        for dim, value in zip(self.dimensions, point, strict=True):
            if dim.headroom is not None:
                headrooms.append((dim, float(value)))
            elif dim.kind is DimensionKind.INTEGER:
                knobs[dim.stage][dim.knob] = round(value)
            elif dim.kind is DimensionKind.REAL:
                knobs[dim.stage][dim.knob] = float(value)
            else:
                knobs[dim.stage][dim.knob] = value
        for name in self._batch_shaped:
            values = knobs[name]
            need = values["max_batch_size"] * values["max_concurrent_batches"]
            values["max_ongoing_requests"] = max(values["max_ongoing_requests"], need)
        for dim, u in headrooms:
            assert dim.headroom is not None
            values = knobs[dim.stage]
            need = values["max_batch_size"] * values["max_concurrent_batches"]
            values["max_ongoing_requests"] = _place(dim.headroom, need, u)
        return ServingConfig(stages={name: StageKnobs(**k) for name, k in knobs.items()})

    def encode(self, config: ServingConfig) -> list[Any]:
        """The point of a config (inverse of `decode` on the tuned knobs), for warm starts."""
        spec = apply_config(self.spec, config)
        point: list[Any] = []
        for dim in self.dimensions:
            stage = spec.stage(dim.stage)
            value = getattr(stage, dim.knob)
            if dim.headroom is not None:
                need = stage.max_batch_size * stage.max_concurrent_batches
                point.append(_headroom_of(dim.headroom, need, value))
            elif dim.kind is DimensionKind.CATEGORICAL:
                point.append(value.value if isinstance(value, Enum) else value)
            else:
                if value is None:  # no cut-off is the largest rank; no cache the smallest
                    value = dim.high if dim.knob == "cutoff_rank" else dim.low
                value = min(max(value, dim.low), dim.high)
                point.append(round(value) if dim.kind is DimensionKind.INTEGER else value)
        return point

    def sample_point(self, rng: Any) -> list[Any]:
        """A uniform (log-uniform where the dimension is log) random point from `random.Random`."""
        point: list[Any] = []
        for dim in self.dimensions:
            if dim.kind is DimensionKind.CATEGORICAL:
                point.append(dim.choices[int(rng.random() * len(dim.choices))])
                continue
            if dim.log:
                value = math.exp(rng.uniform(math.log(dim.low), math.log(dim.high)))
            else:
                value = rng.uniform(dim.low, dim.high)
            if dim.kind is DimensionKind.INTEGER:
                value = min(max(round(value), int(dim.low)), int(dim.high))
            point.append(value)
        return point


def _dimension(path: str, knob_range: KnobRange) -> Dimension:
    stage, knob = path.split(".")
    if knob_range.choices is not None:
        return Dimension(stage, knob, DimensionKind.CATEGORICAL, choices=tuple(knob_range.choices))
    assert knob_range.low is not None and knob_range.high is not None
    if knob == "max_ongoing_requests":
        return Dimension(stage, knob, DimensionKind.REAL, 0.0, 1.0, headroom=knob_range)
    kind = DimensionKind.INTEGER if knob in _INTEGER_KNOBS else DimensionKind.REAL
    return Dimension(stage, knob, kind, knob_range.low, knob_range.high, knob_range.log)


def _bounds(knob_range: KnobRange, need: int) -> tuple[float, float]:
    assert knob_range.low is not None and knob_range.high is not None
    return max(knob_range.low, need), max(knob_range.high, need)


def _place(knob_range: KnobRange, need: int, u: float) -> int:
    lo, hi = _bounds(knob_range, need)
    u = min(max(u, 0.0), 1.0)
    value = lo * (hi / lo) ** u if knob_range.log else lo + (hi - lo) * u
    return max(round(value), need)


def _headroom_of(knob_range: KnobRange, need: int, value: int) -> float:
    lo, hi = _bounds(knob_range, need)
    if hi <= lo:
        return 0.0
    if knob_range.log:
        u = math.log(max(value, lo) / lo) / math.log(hi / lo)
    else:
        u = (max(value, lo) - lo) / (hi - lo)
    return min(max(u, 0.0), 1.0)
