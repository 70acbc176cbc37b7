"""`jizhi whatif`: the --sweep syntax, and a tiny capacity curve end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jizhi.cli import main
from jizhi.commands.whatif import parse_sweep
from simulator import InputError
from tests.unit.autotune.helpers import tiny_file


def test_linear_sweep() -> None:
    sweep = parse_sweep("workload.rate_rps=500:4000:8")
    assert sweep.path == "workload.rate_rps"
    assert sweep.values == (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000)
    assert sweep.assignment(sweep.values[0]) == "workload.rate_rps=500"


def test_log_sweep_and_fractional_values() -> None:
    assert parse_sweep("workload.rate_rps=log:100:10000:3").values == (100, 1000, 10000)
    assert parse_sweep("slo.p99_s=0.02:0.05:4").values == pytest.approx((0.02, 0.03, 0.04, 0.05))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workload.rate_rps", "expected PATH=LO:HI:N"),
        ("workload.rate_rps=500:4000", "expected PATH=LO:HI:N"),
        ("workload.rate_rps=a:b:3", "expected PATH=LO:HI:N"),
        ("=1:2:3", "expected PATH=LO:HI:N"),
        ("workload..rate=1:2:3", "expected PATH=LO:HI:N"),
        ("workload.rate_rps=4000:500:8", "needs LO < HI"),
        ("workload.rate_rps=500:4000:1", "N must be between 2 and 100"),
        ("workload.rate_rps=log:0:4000:4", "log spacing needs LO > 0"),
        ("workload.rate_rps=nan:4000:4", "finite"),
    ],
)
def test_bad_sweeps_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        parse_sweep(text)
    assert "\n" not in str(info.value)


def test_cli_bad_sweep_and_unknown_field_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(tiny_file(tmp_path))
    assert main(["whatif", spec, "--sweep", "workload.rate_rps=9:1:3"]) == 2
    assert main(["whatif", spec, "--sweep", "workload.rate=100:200:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown field 'workload.rate'" in err[1]


def test_cli_whatif_tunes_each_load_and_plots_the_capacity_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(tiny_file(tmp_path))
    out = tmp_path / "whatif"
    code = main(["whatif", spec, "--sweep", "workload.rate_rps=200:800:2", "--trials", "4",
                 "--workers", "1", "--out", str(out), "--set", "tuning.trial_requests=200"])  # fmt: skip
    printed = capsys.readouterr().out
    data = json.loads((out / "whatif.json").read_text())
    assert [p["value"] for p in data["points"]] == [200, 800]
    assert (out / "capacity.png").stat().st_size > 10_000
    assert (out / "00-200" / "trials.jsonl").exists() and (out / "01-800" / "trials.jsonl").exists()
    assert "rate_rps" in printed and code in (0, 1)
    for point in data["points"]:
        if point["feasible"]:
            assert set(point["replicas"]) == {"front", "model"} and point["cost_per_hour"] > 0
