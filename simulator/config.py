"""Serving configs (the knob values) and how they apply to a spec.

A `ServingConfig` maps stage names to knob values; only the knobs a config sets are applied, so a
config file may name one knob of one stage. `--set` overrides take `stage.knob=value` (a config
change) or `section.field=value` for the spec's own sections (`workload.rate_rps=2000` answers
"what if traffic doubles").
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from simulator.errors import InputError
from simulator.spec import (
    FEATURE_KNOBS,
    KNOB_NAMES,
    PipelineSpec,
    StageKind,
    StageKnobs,
    StageSpec,
    merge_problem,
)

__all__ = [
    "ServingConfig",
    "apply_config",
    "apply_overrides",
    "config_warnings",
    "stage_knobs",
    "with_overrides",
]

_COMPUTE_KNOBS = tuple(k for k in KNOB_NAMES if k not in FEATURE_KNOBS)


class ServingConfig(BaseModel):
    """Knob values per stage name. Dumped to YAML it is `best.yaml`, the file `--config` loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: dict[str, StageKnobs] = {}

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> ServingConfig:
        """The spec's baseline: every knob of every stage, as written in the spec."""
        return cls(stages={s.name: StageKnobs(**stage_knobs(s)) for s in spec.stages})

    def knobs(self) -> dict[str, dict[str, Any]]:
        """Only the knobs this config sets, as plain values (enums as strings)."""
        return {
            name: knobs.model_dump(mode="json", include=knobs.model_fields_set)
            for name, knobs in self.stages.items()
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump({"stages": self.knobs()}, sort_keys=False)


def stage_knobs(stage: StageSpec) -> dict[str, Any]:
    """Every knob value of a stage (a compute stage has no cache or cut-off knobs)."""
    names = KNOB_NAMES if stage.kind is StageKind.FEATURES else _COMPUTE_KNOBS
    return {k: getattr(stage, k) for k in names}


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def apply_config(spec: PipelineSpec, config: ServingConfig) -> PipelineSpec:
    """The spec with the config's knob values in place of each stage's baseline; validated again."""
    names = [s.name for s in spec.stages]
    for name in config.stages:
        if name not in names:
            raise InputError(
                f"config.stages.{name}: no such stage{_closest(name, names)}; "
                f"stages are {', '.join(names)}"
            )
    stages: list[StageSpec] = []
    for stage in spec.stages:
        patch = config.knobs().get(stage.name)
        if not patch:
            stages.append(stage)
            continue
        try:
            stages.append(StageSpec.model_validate({**stage.model_dump(), **patch}))
        except ValidationError as exc:
            from simulator.load import describe_validation_error

            raise InputError(describe_validation_error(exc, f"stages.{stage.name}")) from None
    problem = merge_problem(stages)
    if problem:
        raise InputError(problem)
    return spec.model_copy(update={"stages": stages})


def _optional_section(name: str) -> type[BaseModel] | None:
    """The model of a spec section that may be left out (`node: NodeSpec | None`), else None."""
    field = PipelineSpec.model_fields.get(name)
    if field is None or field.default is not None:
        return None
    models = [a for a in get_args(field.annotation) if isinstance(a, type)]
    return next((m for m in models if issubclass(m, BaseModel)), None)


def _parse_assignment(item: str) -> tuple[list[str], Any]:
    path, sep, raw = item.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise InputError(f"--set {item!r}: expected PATH=VALUE, e.g. ranker.max_batch_size=32")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path.split("."), value


def apply_overrides(
    spec: PipelineSpec, config: ServingConfig, assignments: list[str]
) -> tuple[PipelineSpec, ServingConfig]:
    """Apply `--set` assignments: `stage.knob=v` to the config, `section.field=v` to the spec."""
    from simulator.load import validate_spec

    stage_names = [s.name for s in spec.stages]
    sections = [f for f in PipelineSpec.model_fields if f != "stages"]
    knob_patch: dict[str, dict[str, Any]] = config.knobs()
    spec_data: dict[str, Any] | None = None
    for item in assignments:
        parts, value = _parse_assignment(item)
        head = parts[0]
        if head in stage_names:
            if len(parts) != 2 or parts[1] not in KNOB_NAMES:
                knob = ".".join(parts[1:])
                raise InputError(
                    f"--set {item}: '{knob}' is not a knob of stage '{head}'"
                    f"{_closest(knob, list(KNOB_NAMES))}; knobs are {', '.join(KNOB_NAMES)}"
                )
            knob_patch.setdefault(head, {})[parts[1]] = value
        elif head in sections:
            spec_data = spec_data if spec_data is not None else spec.model_dump()
            node = spec_data
            for part in parts[:-1]:
                child = node.get(part) if isinstance(node, dict) else None
                if child is None and part == head and _optional_section(head) is not None:
                    child = node[part] = {}  # an optional section left out (`node`): start it
                if not isinstance(child, dict):
                    raise InputError(f"--set {item}: '{part}' is not a section of the spec")
                node = child
            section = _optional_section(head) if len(parts) == 2 else None
            fields = [str(k) for k in (section.model_fields if section else node)]
            if parts[-1] not in fields:
                raise InputError(
                    f"--set {item}: unknown field '{'.'.join(parts)}'"
                    f"{_closest(parts[-1], fields)}; fields are {', '.join(fields)}"
                )
            node[parts[-1]] = value
        else:
            raise InputError(
                f"--set {item}: '{head}' is neither a stage ({', '.join(stage_names)}) "
                f"nor a spec section ({', '.join(sections)}){_closest(head, stage_names + sections)}"
            )
    if spec_data is not None:
        spec = validate_spec(spec_data, source="--set")
    try:
        config = ServingConfig.model_validate({"stages": knob_patch})
    except ValidationError as exc:
        from simulator.load import describe_validation_error

        where = describe_validation_error(exc).removeprefix("stages.")
        raise InputError(f"--set {where}") from None
    return spec, config


def with_overrides(spec: PipelineSpec, assignments: list[str]) -> PipelineSpec:
    """The spec with every `--set` assignment applied, knobs and spec fields alike."""
    spec, config = apply_overrides(spec, ServingConfig(), assignments)
    return apply_config(spec, config)


def config_warnings(spec: PipelineSpec) -> list[str]:
    """Configs Ray Serve accepts with only a warning; the simulator reproduces what Ray then does."""
    warnings = []
    for s in spec.stages:
        wanted = s.max_batch_size * s.max_concurrent_batches
        if wanted > s.max_ongoing_requests:
            warnings.append(
                f"stages.{s.name}: max_batch_size × max_concurrent_batches = {wanted} exceeds "
                f"max_ongoing_requests = {s.max_ongoing_requests}; as in Ray Serve, a replica "
                f"holds at most {s.max_ongoing_requests} requests, so its batches wait out "
                "batch_wait_timeout_s short of full"
            )
    return warnings
