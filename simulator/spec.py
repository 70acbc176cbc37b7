"""The pipeline spec: what is fixed about a serving pipeline (workload, stages, costs, SLO).

A spec is YAML validated into frozen pydantic models; unknown keys are rejected and every error
names its field path. The knob values the tuner may change (replicas, batching, cache, cut-off) are
written in the spec as each stage's baseline and live in `ServingConfig` (see `config.py`): the
tuner only ever changes the config.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from simulator.cache import CachePolicy

__all__ = [
    "ArrivalProcess",
    "CostSpec",
    "Deterministic",
    "Device",
    "DeviceVariant",
    "Exponential",
    "KnobRange",
    "Linear",
    "Lognormal",
    "NodeSpec",
    "Objective",
    "OverheadSpec",
    "PipelineSpec",
    "Profile",
    "QualitySpec",
    "RateSegment",
    "Resources",
    "ServiceTime",
    "SimulationSpec",
    "SloSpec",
    "StageKind",
    "StageKnobs",
    "StageSpec",
    "StoreSpec",
    "TuningSpec",
    "WorkloadSpec",
]


class ArrivalProcess(str, Enum):
    POISSON = "poisson"
    SCHEDULE = "schedule"
    TRACE = "trace"


class StageKind(str, Enum):
    COMPUTE = "compute"
    FEATURES = "features"


class Device(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _resolve_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a path relative to the spec file's folder (validation context `base_dir`)."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


# --- service-time models: seconds per batch, as a function of the rows in the batch -----------


class Deterministic(_Strict):
    """Always `seconds` (M/D/1 when the stage has one replica and batch size 1)."""

    model: Literal["deterministic"] = "deterministic"
    seconds: NonNegativeFloat


class Exponential(_Strict):
    """Exponential with mean `mean_s` (M/M/c)."""

    model: Literal["exponential"] = "exponential"
    mean_s: PositiveFloat


class Lognormal(_Strict):
    """Lognormal with mean `mean_s` and coefficient of variation `cv` (std / mean)."""

    model: Literal["lognormal"] = "lognormal"
    mean_s: PositiveFloat
    cv: PositiveFloat


class Linear(_Strict):
    """`base_s + per_row_s × rows`, times lognormal noise of mean 1 and coefficient `cv`."""

    model: Literal["linear"] = "linear"
    base_s: NonNegativeFloat
    per_row_s: NonNegativeFloat
    cv: NonNegativeFloat = 0.0


class Profile(_Strict):
    """Measured latency samples per batch size in rows (`jizhi profile` writes `file`).

    Between profiled sizes the same quantile of the two neighbours is interpolated linearly; beyond
    the largest size the largest size's samples are scaled by rows / largest.
    """

    model: Literal["profile"] = "profile"
    table: dict[PositiveInt, list[PositiveFloat]] | None = None
    file: Path | None = None
    scale: PositiveFloat = 1.0

    _check_file = field_validator("file")(_resolve_file)

    @model_validator(mode="after")
    def _one_source(self) -> Profile:
        if (self.table is None) == (self.file is None):
            raise ValueError("a profile takes exactly one of 'table' or 'file'")
        if self.table is not None and any(len(v) == 0 for v in self.table.values()):
            raise ValueError("every profiled batch size needs at least one latency sample")
        return self


ServiceTime = Annotated[
    Deterministic | Exponential | Lognormal | Linear | Profile, Field(discriminator="model")
]


# --- workload ----------------------------------------------------------------------------------


class RateSegment(_Strict):
    """One piece of a piecewise-constant rate schedule: `rate_factor × rate_rps` for `duration_s`."""

    duration_s: PositiveFloat
    rate_factor: NonNegativeFloat


class WorkloadSpec(_Strict):
    """Arrivals and the shape of a request (rows to score, sparse keys per row, key popularity)."""

    arrival: ArrivalProcess = ArrivalProcess.POISSON
    rate_rps: PositiveFloat | None = None
    schedule: list[RateSegment] = Field(default_factory=list)
    trace_file: Path | None = None
    rows_per_request: PositiveInt = 1
    sparse_features_per_row: NonNegativeInt = 0
    dense_features_per_row: NonNegativeInt = 0
    vocab_size: PositiveInt = 1_000_000
    zipf_alpha: PositiveFloat = 1.0

    _check_trace = field_validator("trace_file")(_resolve_file)

    @model_validator(mode="after")
    def _arrival_fields(self) -> WorkloadSpec:
        if self.arrival in (ArrivalProcess.POISSON, ArrivalProcess.SCHEDULE) and not self.rate_rps:
            raise ValueError(f"arrival '{self.arrival.value}' needs rate_rps > 0")
        if self.arrival is ArrivalProcess.SCHEDULE:
            if not self.schedule:
                raise ValueError("arrival 'schedule' needs a non-empty schedule of segments")
            if all(s.rate_factor == 0 for s in self.schedule):
                raise ValueError("a schedule needs at least one segment with rate_factor > 0")
        if self.arrival is ArrivalProcess.TRACE and self.trace_file is None:
            raise ValueError("arrival 'trace' needs trace_file")
        return self

    @property
    def keys_per_request(self) -> int:
        return self.rows_per_request * self.sparse_features_per_row


# --- stages ------------------------------------------------------------------------------------


class Resources(_Strict):
    cpu: NonNegativeFloat = 1.0
    gpu: NonNegativeFloat = 0.0


class DeviceVariant(_Strict):
    """How a stage runs on a GPU replica: its own service time, resources and price."""

    service: ServiceTime
    resources: Resources = Resources(cpu=1.0, gpu=1.0)
    cost_per_replica_hour: NonNegativeFloat | None = None


class StoreSpec(_Strict):
    """Parameter-store latency of one multi-get of `misses` keys: base_s + per_key_s × misses."""

    base_s: NonNegativeFloat
    per_key_s: NonNegativeFloat
    cv: NonNegativeFloat = 0.0


class StageKnobs(_Strict):
    """The knobs of one stage, with Ray Serve's defaults. A spec's values are the baseline config."""

    replicas: PositiveInt = 1
    max_ongoing_requests: PositiveInt = 5
    max_queued_requests: Annotated[int, Field(ge=-1)] = -1
    max_batch_size: PositiveInt = 1
    batch_wait_timeout_s: NonNegativeFloat = 0.01
    max_concurrent_batches: PositiveInt = 1
    device: Device = Device.CPU
    cache_policy: CachePolicy | None = None
    cache_capacity: NonNegativeInt | None = None
    cutoff_rank: PositiveInt | None = None
    in_ranker: bool | None = None


KNOB_NAMES: tuple[str, ...] = tuple(StageKnobs.model_fields)
FEATURE_KNOBS: tuple[str, ...] = ("cache_policy", "cache_capacity", "cutoff_rank")


class StageSpec(StageKnobs):
    """One stage (a Ray Serve deployment): its fixed description plus its baseline knobs."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    kind: StageKind = StageKind.COMPUTE
    service: ServiceTime
    resources: Resources = Resources()
    cost_per_replica_hour: NonNegativeFloat | None = None
    gpu: DeviceVariant | None = None
    store: StoreSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _feature_defaults(cls, data: Any) -> Any:
        """A stage runs in its own deployment unless `in_ranker`; a features stage without cache
        knobs has an empty LRU cache and no cut-off."""
        if not isinstance(data, dict):
            return data
        data = {"in_ranker": False, **data}
        if data.get("kind") in (StageKind.FEATURES, "features"):
            data = {"cache_policy": CachePolicy.LRU, "cache_capacity": 0, **data}
        return data

    @model_validator(mode="after")
    def _kind_fields(self) -> StageSpec:
        if self.kind is StageKind.FEATURES:
            if self.store is None:
                raise ValueError("a features stage needs 'store' (parameter-store latency)")
        else:
            if self.store is not None:
                raise ValueError("only a features stage has a parameter 'store'")
            for knob in FEATURE_KNOBS:
                if getattr(self, knob) is not None:
                    raise ValueError(f"'{knob}' applies only to a features stage")
        if self.device is Device.GPU and self.gpu is None:
            raise ValueError("device 'gpu' needs a 'gpu' variant (service time on the GPU)")
        return self


def merge_problem(stages: list[StageSpec]) -> str | None:
    """Why the stages' `in_ranker` settings cannot run, or None when they can."""
    for stage, after in zip(stages, [*stages[1:], None], strict=True):
        if not stage.in_ranker:
            continue
        if after is None:
            return (
                f"stages.{stage.name}: in_ranker runs the stage inside the next stage's "
                "replicas, and no stage follows it"
            )
        if stage.kind is StageKind.FEATURES and after.kind is StageKind.FEATURES:
            return (
                f"stages.{stage.name}: in_ranker runs the lookup inside the next stage's "
                "batches, so a compute stage must follow it"
            )
    return None


# --- SLO, cost, run length ---------------------------------------------------------------------


class OverheadSpec(_Strict):
    """Time Ray adds outside the replicas: the HTTP proxy on the way in and out, and each handle hop."""

    proxy: ServiceTime = Deterministic(seconds=0.0)
    hop: ServiceTime = Deterministic(seconds=0.0)
    response: ServiceTime = Deterministic(seconds=0.0)


class RouterSpec(_Strict):
    """How a stage's router places a request that found every replica full (Ray 2.60's
    `request_router.py` with its `RAY_SERVE_ROUTER_RETRY_*` defaults): up to `max_tasks` routing
    tasks (and no more than 2 per replica, or than requests waiting) retry after
    `initial_backoff_s × backoff_multiplier^k`, at most `max_backoff_s`; a slot that frees between
    two retries stays empty until the next one. `initial_backoff_s: 0` places a waiting request
    the moment a slot frees (the queueing-theory idealisation)."""

    initial_backoff_s: NonNegativeFloat = 0.025
    backoff_multiplier: Annotated[float, Field(ge=1.0)] = 2.0
    max_backoff_s: NonNegativeFloat = 0.5
    max_tasks: PositiveInt = 50


class NodeSpec(_Strict):
    """The machine the pipeline's processes share: CPU work queues for its cores (`simulator.node`).

    Without it (the default) every replica has a CPU of its own and the proxy and hops are delays.
    """

    cores: PositiveInt
    speed: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # share of a core other processes leave
    proxy_concurrency: PositiveInt = 1  # requests Ray's HTTP proxy handles at once


class SloSpec(_Strict):
    p99_s: PositiveFloat
    max_shed_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class CostSpec(_Strict):
    """Prices that turn a replica's resources into a cost per hour (a stage may set its own)."""

    cpu_hour: NonNegativeFloat = 0.0
    gpu_hour: NonNegativeFloat = 0.0


class SimulationSpec(_Strict):
    requests: PositiveInt = 20_000
    warmup_requests: NonNegativeInt = 2_000
    seed: int = 0


class Objective(str, Enum):
    """What the tuner optimises; SLO, shed limit and quality budget always constrain it."""

    MIN_COST = "min_cost"  # cheapest config that holds the SLO
    MAX_RATE = "max_rate"  # highest sustainable request rate at the SLO within max_cost_per_hour
    MIN_P99 = "min_p99"  # lowest p99 within max_cost_per_hour


class KnobRange(_Strict):
    """The values one knob may take: `{low, high, log}` for numbers, `{choices: [...]}` otherwise."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[bool | str | int | float] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> KnobRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a knob takes either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a knob range needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"empty or inverted range: low {self.low} >= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        return self


class QualitySpec(_Strict):
    """Model-quality budget for the cut-off knob.

    With `curve` (the `quality_vs_cutoff.json` that `jizhi train` writes), the loss of a cut-off
    rank K is the AUC drop measured at K (interpolated); without it, the fraction of key lookups
    the cut-off skips.
    """

    max_loss: NonNegativeFloat = 0.001
    curve: Path | None = None

    _check_curve = field_validator("curve")(_resolve_file)


class TuningSpec(_Strict):
    """What `jizhi tune` searches: knob ranges by `stage.knob`, the objective, the trial length."""

    objective: Objective = Objective.MIN_COST
    max_cost_per_hour: PositiveFloat | None = None
    quality: QualitySpec = QualitySpec()
    trial_requests: PositiveInt = 6_000
    trial_warmup_requests: NonNegativeInt = 600
    knobs: dict[str, KnobRange] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _budget(self) -> TuningSpec:
        if self.objective is not Objective.MIN_COST and self.max_cost_per_hour is None:
            raise ValueError(f"objective '{self.objective.value}' needs max_cost_per_hour")
        return self


_RESERVED_STAGE_NAMES = frozenset(
    {
        "name",
        "description",
        "workload",
        "stages",
        "overhead",
        "router",
        "node",
        "slo",
        "cost",
        "simulation",
        "tuning",
    }
)


class PipelineSpec(_Strict):
    """A whole pipeline: workload → stages in order → response, with its SLO and prices."""

    name: str
    description: str = ""
    workload: WorkloadSpec
    stages: Annotated[list[StageSpec], Field(min_length=1)]
    overhead: OverheadSpec = OverheadSpec()
    router: RouterSpec = RouterSpec()
    node: NodeSpec | None = None
    slo: SloSpec
    cost: CostSpec = CostSpec()
    simulation: SimulationSpec = SimulationSpec()
    tuning: TuningSpec = TuningSpec()

    @model_validator(mode="after")
    def _stage_names(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique (repeated: {', '.join(duplicates)})")
        reserved = sorted(set(names) & _RESERVED_STAGE_NAMES)
        if reserved:
            raise ValueError(f"stage name(s) {', '.join(reserved)} are reserved for spec sections")
        if (
            any(s.kind is StageKind.FEATURES for s in self.stages)
            and self.workload.sparse_features_per_row == 0
        ):
            raise ValueError("a features stage needs workload.sparse_features_per_row > 0")
        problem = merge_problem(self.stages)
        if problem:
            raise ValueError(problem)
        for path, knob_range in self.tuning.knobs.items():
            self._check_tunable(path, knob_range)
        return self

    def _check_tunable(self, path: str, knob_range: KnobRange) -> None:
        stage_name, _, knob = path.partition(".")
        names = [s.name for s in self.stages]
        if stage_name not in names or knob not in KNOB_NAMES:
            raise ValueError(
                f"tuning.knobs: '{path}' is not STAGE.KNOB with a stage in {', '.join(names)} "
                f"and a knob in {', '.join(KNOB_NAMES)}"
            )
        stage = self.stage(stage_name)
        if knob in FEATURE_KNOBS and stage.kind is not StageKind.FEATURES:
            raise ValueError(f"tuning.knobs: '{path}': '{knob}' applies only to a features stage")
        categorical = knob in ("device", "cache_policy", "in_ranker")
        if categorical != (knob_range.choices is not None):
            kind = "choices: [...]" if categorical else "low/high"
            raise ValueError(f"tuning.knobs: '{path}' takes {kind}")
        if knob == "device" and "gpu" in (knob_range.choices or []) and stage.gpu is None:
            raise ValueError(f"tuning.knobs: '{path}' offers gpu but stage has no 'gpu' variant")
        allowed: dict[str, list[Any]] = {
            "device": [d.value for d in Device],
            "cache_policy": [p.value for p in CachePolicy],
            "in_ranker": [False, True],
        }
        for choice in knob_range.choices or []:
            if choice not in allowed.get(knob, []):
                raise ValueError(
                    f"tuning.knobs: '{path}': {choice!r} is not one of {', '.join(allowed[knob])}"
                )

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def replica_cost_per_hour(self, stage: StageSpec, device: Device) -> float:
        """Price of one replica of `stage` on `device`: the stage's own price or resources × prices."""
        if device is Device.GPU and stage.gpu is not None:
            variant_price = stage.gpu.cost_per_replica_hour
            resources = stage.gpu.resources
            if variant_price is not None:
                return variant_price
        else:
            if stage.cost_per_replica_hour is not None:
                return stage.cost_per_replica_hour
            resources = stage.resources
        return resources.cpu * self.cost.cpu_hour + resources.gpu * self.cost.gpu_hour

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)
