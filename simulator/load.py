"""Reading specs and configs from YAML, with one-line errors that name the field path.

>>> spec = load_spec("examples/queueing/mm1.yaml")
>>> spec.stages[0].name
'server'
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from simulator.config import ServingConfig, apply_config, with_overrides
from simulator.errors import InputError
from simulator.spec import Deterministic, Exponential, Linear, Lognormal, PipelineSpec, Profile

# The service-time models, by the tag pydantic inserts into error locations.
_UNION_MEMBERS: dict[str, Any] = {
    m.model_fields["model"].default: m
    for m in (Deterministic, Exponential, Lognormal, Linear, Profile)
}

__all__ = [
    "describe_validation_error",
    "load_config",
    "load_pipeline",
    "load_spec",
    "validate_spec",
]


def _read_yaml(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}:{where}: not valid YAML ({problem})") from None


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    """('stages', 2, 'service', 'lognormal', 'cv') → 'stages[ranker].service.cv'."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) else None
            parts[-1:] = (
                [f"{parts[-1]}[{name if isinstance(name, str) else item}]"] if parts else []
            )
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item in node:
            node = node[item]
            parts.append(item)
        elif isinstance(node, dict) and item not in node and parts and parts[-1] != item:
            # a discriminated-union tag or a model name that pydantic inserts into the path
            if item in _UNION_MEMBERS:
                continue
            parts.append(item)
        else:
            parts.append(str(item))
    return ".".join(parts)


def describe_validation_error(exc: ValidationError, prefix: str = "", data: Any = None) -> str:
    """The first error as one line: 'PATH: what is wrong (got X)'; says how many more there are."""
    errors = exc.errors(include_url=False)
    # A typo'd key shows up twice (unknown key, missing field): name the typo, it is the cause.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _location(tuple(err["loc"]), data)
    path = f"{prefix}.{path}" if prefix and path else (prefix or path or "spec")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_fields(exc, err)
        key = str(err["loc"][-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        message = "unknown field" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        if allowed:
            message += f"; allowed: {', '.join(allowed)}"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing",) and not isinstance(err.get("input"), dict | list):
            message += f" (got {err['input']!r})"
    more = f" [and {len(errors) - 1} more error(s)]" if len(errors) > 1 else ""
    return f"{path}: {message}{more}"


def _allowed_fields(exc: ValidationError, err: Any) -> list[str]:
    """Walk the model tree along the error's location to the model that rejected the key."""
    model: Any = {"PipelineSpec": PipelineSpec, "ServingConfig": ServingConfig}.get(exc.title)
    for item in err["loc"][:-1]:
        if model is None or isinstance(item, int):
            continue
        field = model.model_fields.get(item)
        # not a field: a union tag pydantic put in the path, or a key of a dict of models
        model = _UNION_MEMBERS.get(item, model) if field is None else _model_of(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def validate_spec(data: Any, source: str, base_dir: Path | None = None) -> PipelineSpec:
    if not isinstance(data, dict):
        raise InputError(f"{source}: a spec is a YAML mapping with workload, stages and slo")
    try:
        return PipelineSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise InputError(f"{source}: {describe_validation_error(exc, data=data)}") from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Load and validate a pipeline spec; relative file paths inside resolve against its folder."""
    data = _read_yaml(path, "spec")
    return validate_spec(data, source=str(path), base_dir=Path(path).resolve().parent)


def load_config(path: str | Path) -> ServingConfig:
    """Load a serving config (`{stages: {name: {knob: value}}}`), e.g. a tuner's best.yaml."""
    data = _read_yaml(path, "config")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config is a YAML mapping 'stages: {{STAGE: {{KNOB: VALUE}}}}'")
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {describe_validation_error(exc, data=data)}") from None


def load_pipeline(
    spec_path: str | Path, config_path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineSpec:
    """A spec with a config file (if any), then `--set` overrides, applied: what commands run."""
    spec = load_spec(spec_path)
    if config_path is not None:
        spec = apply_config(spec, load_config(config_path))
    return with_overrides(spec, overrides or [])
