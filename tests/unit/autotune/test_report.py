"""The report: files a person can open, savings in the objective's own terms, and the CLI end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from autotune.baselines import run_baselines
from autotune.objective import TrialMetrics
from autotune.report import compare, write_report
from autotune.run import tune
from jizhi.cli import main
from jizhi.commands.tune import summary
from tests.unit.autotune.helpers import tiny, tiny_file

M = TrialMetrics(
    p50_s=0.005, p99_s=0.02, mean_s=0.006, throughput_rps=400, offered_rps=400, shed_rate=0.0,
    cost_per_hour=0.2, quality_loss=0.0, completed=300, sustainable_rps=800.0,
)  # fmt: skip


def test_write_report_makes_the_markdown_and_every_figure(tmp_path: Path) -> None:
    spec = tiny()
    result = tune(spec, trials=6, out_dir=tmp_path, initial_points=3)
    result.baselines = run_baselines(spec, budget=6, out_dir=tmp_path)
    path = write_report(result, tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    for png in ("convergence", "pareto", "importance"):
        assert f"]({png}.png)" in text
        assert (tmp_path / f"{png}.png").stat().st_size > 10_000
    assert "| random |" in text and "| sweep |" in text and "Method:" in text
    if result.winner is not None:
        assert (tmp_path / "latency.png").exists() and (tmp_path / "stages.png").exists()
        assert "| model.max_batch_size |" in text
    assert "winner" in summary(result) or "no config" in summary(result)


@pytest.mark.filterwarnings("ignore:The objective has been evaluated")
def test_a_report_without_a_winner_still_shows_the_search(tmp_path: Path) -> None:
    spec = tiny(knobs={"model.replicas": {"low": 1, "high": 2}}, trial_requests=200)
    spec = spec.model_copy(update={"slo": spec.slo.model_copy(update={"p99_s": 1e-5})})
    result = tune(spec, trials=3, out_dir=tmp_path, initial_points=2)
    assert result.winner is None
    text = write_report(result, tmp_path).read_text()
    assert "No config held" in text and (tmp_path / "convergence.png").exists()


@pytest.mark.parametrize(
    ("tuning", "ours", "theirs", "expected"),
    [
        ({}, M, replace(M, cost_per_hour=0.4), "$0.200/h vs $0.400/h: 50.0% cheaper"),
        ({}, M, replace(M, cost_per_hour=0.1), "$0.200/h vs $0.100/h: 100.0% dearer"),
        ({"objective": "max_rate", "max_cost_per_hour": 1}, M,
         replace(M, sustainable_rps=400.0), "800 req/s vs 400 req/s: 100.0% more req/s"),
        ({"objective": "min_p99", "max_cost_per_hour": 1}, M,
         replace(M, p99_s=0.025), "20.00 ms vs 25.00 ms: 20.0% lower p99"),
    ],
)  # fmt: skip
def test_savings_are_in_the_objectives_terms(
    tuning: dict[str, object], ours: TrialMetrics, theirs: TrialMetrics, expected: str
) -> None:
    assert compare(tiny(**tuning), ours, theirs) == expected


def test_cli_tune_compare_prints_savings_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_file(tmp_path)
    out = tmp_path / "out"
    code = main(["tune", str(spec), "--trials", "5", "--workers", "1", "--out", str(out),
                 "--compare", "--set", "tuning.trial_requests=200"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vs Ray Serve defaults" in printed or "Ray Serve defaults miss" in printed
    assert (out / "report.md").exists() and (out / "best.yaml").exists()


def test_cli_resume_with_another_specs_journal_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_file(tmp_path)
    out = tmp_path / "out"
    args = ["tune", str(spec), "--trials", "2", "--workers", "1", "--out", str(out), "--no-report"]
    assert main(args) in (0, 1)
    assert main([*args, "--resume", "--set", "workload.rate_rps=300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jizhi tune: error:") and "another spec" in err[-1]
