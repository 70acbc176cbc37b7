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

from simulator.config import ServingConfig
from simulator.errors import InputError
from simulator.spec import PipelineSpec

__all__ = ["describe_validation_error", "load_config", "load_spec", "validate_spec"]


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
            if item in ("deterministic", "exponential", "lognormal", "linear", "profile"):
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
    from simulator import spec as spec_module

    title = exc.title
    # Walk the model tree along the error location to find the model that rejected the key.
    model: Any = getattr(spec_module, title, None)
    for item in err["loc"][:-1]:
        if model is None or isinstance(item, int):
            continue
        field = model.model_fields.get(item) if hasattr(model, "model_fields") else None
        if field is None:
            model = _union_member(model, item)
            continue
        model = _model_of(field.annotation)
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _union_member(model: Any, tag: Any) -> Any:
    from simulator import spec as spec_module

    return getattr(spec_module, str(tag).capitalize(), model)


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
