"""Specs, configs and `jizhi simulate`: loading, overrides, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jizhi.cli import main
from simulator import InputError, ServingConfig, apply_config, load_config, load_spec

from .helpers import EXAMPLES


def _bad_spec(tmp_path: Path, old: str, new: str) -> Path:
    text = (EXAMPLES / "ctr.yaml").read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "name", ["ctr.yaml", "queueing/mm1.yaml", "queueing/mmc.yaml", "queueing/md1.yaml"]
)
def test_bundled_examples_load(name: str) -> None:
    assert load_spec(EXAMPLES / name).stages


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "max_batch_size: 8",
            "max_batch_sise: 8",
            r"stages\[ranker\]\.max_batch_sise: unknown field \(did you mean 'max_batch_size'\?\)",
        ),
        ("rate_rps: 1500", "rate_rps: -3", r"workload\.rate_rps: Input should be greater than 0"),
        (
            "cache_policy: lru",
            "cache_policy: fifo",
            r"stages\[features\]\.cache_policy: Input should be 'lru', 'lfu' or 'none' \(got 'fifo'\)",
        ),
        (
            "arrival: poisson",
            "arrival: trace\n  trace_file: missing.txt",
            r"workload\.trace_file: file not found: .*missing\.txt",
        ),
        ("model: lognormal, mean_s: 0.0012, cv: 0.3", "model: gamma", r"overhead\.proxy"),
        ("name: ingress ", "name: ranker ", r"stage names must be unique \(repeated: ranker\)"),
        ("cache_capacity: 20000", "cache_capacity: -1", r"cache_capacity: Input should be greater"),
    ],
)
def test_bad_spec_is_one_line_naming_the_field(
    tmp_path: Path, old: str, new: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_spec(tmp_path, old, new)
    with pytest.raises(InputError, match=message):
        load_spec(path)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jizhi simulate: error: ")
    assert "Traceback" not in err


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nworkload: {rate_rps: 1\n")
    with pytest.raises(InputError, match=r"broken\.yaml: line 3: not valid YAML"):
        load_spec(path)


def test_missing_spec_file() -> None:
    with pytest.raises(InputError, match="spec file not found"):
        load_spec("no/such/spec.yaml")


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("ranker.max_batch=4", r"'max_batch' is not a knob of stage 'ranker' \(did you mean"),
        ("rankr.replicas=2", r"'rankr' is neither a stage .* \(did you mean 'ranker'\?\)"),
        ("workload.rate=2", r"unknown field 'workload.rate' \(did you mean 'rate_rps'\?\)"),
        ("features.cache_policy=arc", r"features\.cache_policy: Input should be 'lru', 'lfu'"),
        ("ingress.cutoff_rank=10", r"stages\.ingress: 'cutoff_rank' applies only to a features"),
        ("ranker.device=tpu", r"ranker\.device: Input should be 'cpu' or 'gpu'"),
        ("ingress.device=gpu", r"device 'gpu' needs a 'gpu' variant"),
        ("ranker", r"expected PATH=VALUE"),
    ],
)
def test_bad_override_is_one_line_exit_2(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(EXAMPLES / "ctr.yaml"), "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1


def test_batch_above_max_ongoing_is_a_warning_like_ray(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", str(EXAMPLES / "ctr.yaml"), "--requests", "500", "--warmup", "50"]
    assert main([*args, "--set", "ranker.max_batch_size=32", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: stages.ranker: max_batch_size × max_concurrent_batches = 32" in captured.err
    report = json.loads(captured.out)
    assert report["warnings"] and report["stages"][2]["mean_batch_size"] <= 16


def test_config_file_and_overrides_apply_to_the_named_knobs(tmp_path: Path) -> None:
    config_path = tmp_path / "best.yaml"
    config_path.write_text("stages:\n  ranker: {replicas: 2, max_batch_size: 16}\n")
    config = load_config(config_path)
    spec = apply_config(load_spec(EXAMPLES / "ctr.yaml"), config)
    ranker = spec.stage("ranker")
    assert (ranker.replicas, ranker.max_batch_size, ranker.max_ongoing_requests) == (2, 16, 16)
    # a full config round-trips through YAML
    full = ServingConfig.from_spec(spec)
    (tmp_path / "full.yaml").write_text(full.to_yaml())
    assert load_config(tmp_path / "full.yaml") == full


def test_config_naming_an_unknown_stage(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text("stages:\n  rankr: {replicas: 2}\n")
    spec = load_spec(EXAMPLES / "ctr.yaml")
    with pytest.raises(
        InputError, match=r"stages\.rankr: no such stage \(did you mean 'ranker'\?\)"
    ):
        apply_config(spec, load_config(path))


def test_simulate_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", str(EXAMPLES / "ctr.yaml"), "--requests", "1000", "--seed", "3", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    documented = (Path(__file__).resolve().parents[3] / "docs" / "simulate.md").read_text()
    for key in report:
        assert f"`{key}`" in documented, f"{key} is not documented in docs/simulate.md"
    for key in report["stages"][1]:
        assert f"`{key}`" in documented, f"stages[].{key} is not documented"
    for key in report["stages"][1]["cache"]:
        assert f"`{key}`" in documented, f"stages[].cache.{key} is not documented"
    assert report["seed"] == 3 and report["requests"] == 1000


def test_table_output_and_installed_console_script() -> None:
    jizhi = shutil.which("jizhi", path=str(Path(sys.executable).parent))
    assert jizhi is not None, "the jizhi console script is not installed in this environment"
    result = subprocess.run(
        [jizhi, "simulate", str(EXAMPLES / "ctr.yaml"), "--requests", "2000"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "end-to-end" in result.stdout and "SLO holds" in result.stdout
