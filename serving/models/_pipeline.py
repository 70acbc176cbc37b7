"""`jizhi train` without the CLI: pre-train, compare transfer strategies, pick the served model.

The served model is the automatic freeze-depth strategy trained on all the target's labelled
rows (repetition 0); the comparison, when on, produces it on the way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from serving.models._cutoff import quality_vs_cutoff
from serving.models._data import ClickLogs, DomainData
from serving.models._formats import QualityCurve
from serving.models._model import ModelConfig, RankerModel
from serving.models._train import FitResult, Metrics, TrainSettings, evaluate, fit
from serving.models._transfer import (
    ProbeRecord,
    RunRecord,
    Strategy,
    TransferSettings,
    labelled_split,
    probe_freeze_depth,
    run_comparison,
    run_seed,
    split_sizes,
    train_strategy,
)

__all__ = ["TrainJob", "TrainOutcome", "format_summary", "pretrain", "train_pipeline"]

REPORT_VERSION = 1


@dataclass(frozen=True)
class TrainJob:
    """How to train: model shape, optimisation for both phases, the comparison protocol."""

    embedding_dim: int = 16
    bottom_hidden: tuple[int, ...] = (32,)
    top_hidden: tuple[int, ...] = (128, 64)
    pretrain: TrainSettings = field(
        default_factory=lambda: TrainSettings(lr_sparse=1e-2, epochs=2.0, evals=10)
    )
    transfer: TransferSettings = field(default_factory=TransferSettings)
    compare: bool = True
    device: str = "cpu"
    progress: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    model: RankerModel
    quality: QualityCurve
    report: dict[str, Any]
    training: dict[str, Any]


def _source_split(source: ClickLogs, seed: int) -> tuple[ClickLogs, ClickLogs]:
    order = np.random.default_rng(seed).permutation(len(source))
    val = max(2, min(50_000, len(source) // 20))
    return source.take(order[val:]), source.take(order[:val])


def pretrain(
    data: DomainData, config: ModelConfig, job: TrainJob, seed: int
) -> tuple[RankerModel, FitResult]:
    """Train a fresh model on the source domain (5% held out, at most 50k rows, for validation)."""
    train, val = _source_split(data.source, seed)
    model = RankerModel(config, seed).to(job.device)
    model.dense.set_dense_statistics(train.dense)
    model.dense.reset_head(torch.Generator().manual_seed(seed), float(train.labels.mean()))
    result = fit(
        model, train, val, job.pretrain, seed=seed, progress=job.progress, description="pre-train"
    )
    return model, result


def _summary(runs: list[RunRecord], pool_rows: int, val_fraction: float) -> list[dict[str, Any]]:
    groups: dict[tuple[float, str, int | None], list[RunRecord]] = defaultdict(list)
    for run in runs:
        # AUTO_FREEZE's depth is the probe's pick and may differ between repetitions.
        depth = None if run.strategy is Strategy.AUTO_FREEZE else run.freeze_depth
        groups[(run.fraction, run.strategy.value, depth)].append(run)
    rows = []
    for (fraction, strategy, depth), members in groups.items():
        auc = np.array([r.auc for r in members])
        loss = np.array([r.logloss for r in members])
        labelled, val = split_sizes(pool_rows, fraction, val_fraction)
        rows.append(
            {
                "fraction": fraction,
                "labelled_rows": labelled,
                "train_rows": labelled - val,
                "strategy": strategy,
                "freeze_depth": depth,
                "n": len(members),
                "auc_mean": float(auc.mean()),
                "auc_std": float(auc.std(ddof=1)) if len(members) > 1 else 0.0,
                "logloss_mean": float(loss.mean()),
                "logloss_std": float(loss.std(ddof=1)) if len(members) > 1 else 0.0,
                "freeze_depths": [r.freeze_depth for r in members],
            }
        )
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """The comparison as a plain-text table: AUC / log-loss (mean ± sd over repetitions)."""
    rows = report.get("summary", [])
    if not rows:
        return "(no transfer comparison in this report)"
    fractions = sorted({r["fraction"] for r in rows})
    names = list(dict.fromkeys(_row_name(r) for r in rows))
    cells = {(_row_name(r), r["fraction"]): r for r in rows}
    header = ["strategy"] + [f"{f:.0%} labels: AUC / logloss" for f in fractions]
    lines = [header]
    for name in names:
        line = [name]
        for fraction in fractions:
            r = cells.get((name, fraction))
            line.append(
                "-"
                if r is None
                else f"{r['auc_mean']:.4f}±{r['auc_std']:.4f} / "
                f"{r['logloss_mean']:.4f}±{r['logloss_std']:.4f}"
            )
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    probes = report.get("probes", [])
    for fraction in fractions:
        picks = ", ".join(
            f"{p['picked_depth']}{'=' if p['matched'] else '≠'}{p['best_depth']}"
            for p in probes
            if p["fraction"] == fraction
        )
        text.append(f"freeze-depth probe at {fraction:.0%} labels (picked vs best): {picks}")
    return "\n".join(text)


def _row_name(row: dict[str, Any]) -> str:
    if row["strategy"] == Strategy.FREEZE.value:
        return f"freeze@{row['freeze_depth']}"
    return str(row["strategy"])


def train_pipeline(data: DomainData, job: TrainJob) -> TrainOutcome:
    """Pre-train on the source, compare strategies (if `job.compare`), train the served model."""
    started = time.perf_counter()
    settings = job.transfer
    config = ModelConfig(data.schema, job.embedding_dim, job.bottom_hidden, job.top_hidden)
    pretrained, pre = pretrain(data, config, job, settings.seed)
    source_test = evaluate(pretrained, data.target_test)

    runs: list[RunRecord] = []
    probes: list[ProbeRecord] = []
    final: RankerModel | None = None
    if job.compare:
        total = len(settings.fractions) * settings.repeats * (pretrained.config.freeze_blocks + 4)
        with tqdm(total=total, desc="transfer runs", disable=not job.progress) as bar:

            def on_run(record: RunRecord) -> None:
                bar.set_postfix_str(f"{record.fraction:.0%} {record.strategy.value}", refresh=False)
                bar.update(1)

            runs, probes, final = run_comparison(
                pretrained, data, settings, on_run=on_run, keep=(1.0, 0)
            )
    seed = run_seed(settings.seed, 0)
    train, val = labelled_split(data.target_pool, 1.0, seed, settings.val_fraction)
    if final is None:
        depth, _ = probe_freeze_depth(pretrained, train, val, settings, seed=seed)
        final, _ = train_strategy(
            Strategy.FREEZE,
            pretrained,
            train,
            val,
            settings,
            seed=seed,
            depth=depth,
            progress=job.progress,
        )
    else:
        depth = next(p.picked_depth for p in probes if p.fraction == 1.0 and p.repeat == 0)
    final_metrics = evaluate(final, data.target_test)
    quality = quality_vs_cutoff(final, data.target_test, data.popularity_rank)
    training = {
        "strategy": Strategy.AUTO_FREEZE.value,
        "freeze_depth": depth,
        "label_fraction": 1.0,
        "seed": seed,
        "device": job.device,
        "data": data.provenance,
    }
    report = {
        "format_version": REPORT_VERSION,
        "data": {
            **data.provenance,
            "source_ctr_observed": float(data.source.labels.mean()),
            "target_ctr_observed": float(data.target_pool.labels.mean()),
            "target_pool_rows": len(data.target_pool),
            "target_test_rows": len(data.target_test),
        },
        "model": {
            "embedding_dim": job.embedding_dim,
            "bottom_hidden": list(job.bottom_hidden),
            "top_hidden": list(job.top_hidden),
            "freeze_blocks": config.freeze_blocks,
        },
        "protocol": {
            "pretrain": asdict(job.pretrain),
            "transfer": asdict(settings),
        },
        "pretrain": {
            "steps": pre.steps,
            "best_step": pre.best_step,
            "seconds": pre.seconds,
            "source_val_auc": pre.val.auc,
            "source_val_logloss": pre.val.logloss,
            "target_test_auc_without_adaptation": source_test.auc,
            "target_test_logloss_without_adaptation": source_test.logloss,
        },
        "summary": _summary(runs, len(data.target_pool), settings.val_fraction),
        "probes": [p.to_json() for p in probes],
        "runs": [r.to_json() for r in runs],
        "final_model": {**training, **_metrics_json(final_metrics)},
        "wall_time_s": time.perf_counter() - started,
    }
    return TrainOutcome(final.to("cpu").eval(), quality, report, training)


def _metrics_json(metrics: Metrics) -> dict[str, float]:
    return {"test_auc": metrics.auc, "test_logloss": metrics.logloss}
