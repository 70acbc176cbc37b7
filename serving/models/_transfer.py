"""Transfer from the source domain to the target: strategies, freeze-depth probe, comparison.

A strategy turns the pre-trained model and the target's labelled rows (split into train and
validation) into a target model. The comparison runs every strategy on the same subsamples and
batch orders (paired), for each label fraction and repetition, and scores them on the held-out
target test set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np
import torch

from serving.models._data import ClickLogs, DomainData
from serving.models._model import ModelConfig, RankerModel
from serving.models._train import FitResult, TrainSettings, evaluate, fit

__all__ = [
    "ProbeRecord",
    "RunRecord",
    "Strategy",
    "TransferSettings",
    "labelled_split",
    "probe_freeze_depth",
    "run_comparison",
    "run_seed",
    "split_sizes",
    "train_strategy",
]


class Strategy(str, Enum):
    SCRATCH = "scratch"
    FEATURE_EXTRACTION = "feature_extraction"
    FINE_TUNE = "fine_tune"
    FREEZE = "freeze"  # fine-tune with the lowest `depth` blocks frozen (FINE_TUNE is depth 0)
    L2_SP = "l2_sp"
    AUTO_FREEZE = "auto_freeze"


@dataclass(frozen=True)
class TransferSettings:
    """The comparison's protocol (see docs/models.md)."""

    train: TrainSettings = field(default_factory=TrainSettings)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    repeats: int = 3
    seed: int = 0
    val_fraction: float = 0.2
    probe_budget: float = 0.25
    l2sp_dense: float = 1e-2
    l2sp_sparse: float = 1e-2

    def __post_init__(self) -> None:
        if not self.fractions or not all(0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"label fractions must be in (0, 1] (got {self.fractions})")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1 (got {self.repeats})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) (got {self.val_fraction})")


@dataclass(frozen=True)
class RunRecord:
    """One trained target model scored on the target test set."""

    fraction: float
    repeat: int
    seed: int
    strategy: Strategy
    freeze_depth: int | None
    auc: float
    logloss: float
    steps: int
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "strategy": self.strategy.value}


@dataclass(frozen=True)
class ProbeRecord:
    """What the freeze-depth probe saw (validation log-loss per depth) and what it picked."""

    fraction: float
    repeat: int
    val_logloss_by_depth: dict[int, float]
    picked_depth: int
    best_depth: int  # lowest test log-loss among the full runs at every depth

    @property
    def matched(self) -> bool:
        return self.picked_depth == self.best_depth

    def to_json(self) -> dict[str, object]:
        return {
            "fraction": self.fraction,
            "repeat": self.repeat,
            "val_logloss_by_depth": {str(d): v for d, v in self.val_logloss_by_depth.items()},
            "picked_depth": self.picked_depth,
            "best_depth": self.best_depth,
            "matched": self.matched,
        }


def run_seed(base_seed: int, repeat: int) -> int:
    """The seed of repetition `repeat` (subsample, new weights, batch order)."""
    return int(np.random.SeedSequence([base_seed, repeat]).generate_state(1)[0])


def labelled_split(
    pool: ClickLogs, fraction: float, seed: int, val_fraction: float
) -> tuple[ClickLogs, ClickLogs]:
    """The first `fraction` of the pool in a seeded order (nested across fractions): train, val."""
    order = np.random.default_rng(seed).permutation(len(pool))
    labelled, val = split_sizes(len(pool), fraction, val_fraction)
    return pool.take(order[val:labelled]), pool.take(order[:val])


def split_sizes(pool_rows: int, fraction: float, val_fraction: float) -> tuple[int, int]:
    """(labelled rows, of which validation rows) for a label fraction of the pool."""
    labelled = min(pool_rows, max(4, round(fraction * pool_rows)))
    return labelled, max(2, round(val_fraction * labelled))


def _prepare(
    pretrained: RankerModel | None,
    config: ModelConfig,
    train: ClickLogs,
    seed: int,
) -> RankerModel:
    device = next(iter(pretrained.parameters())).device if pretrained is not None else None
    model = RankerModel(config, seed) if pretrained is None else copy.deepcopy(pretrained)
    if device is not None:
        model.to(device)
    with torch.no_grad():
        model.dense.set_dense_statistics(train.dense)
    return model


def train_strategy(
    strategy: Strategy,
    pretrained: RankerModel,
    train: ClickLogs,
    val: ClickLogs,
    settings: TransferSettings,
    *,
    seed: int,
    depth: int = 0,
    steps: int | None = None,
    progress: bool = False,
) -> tuple[RankerModel, FitResult]:
    """A target model from `strategy` (for AUTO_FREEZE: FREEZE at `probe_freeze_depth`'s pick)."""
    config = pretrained.config
    base_rate = float(train.labels.mean())
    if strategy is Strategy.SCRATCH:
        model = _prepare(None, config, train, seed).to(pretrained.sparse.table.weight.device)
        model.dense.reset_head(torch.Generator().manual_seed(seed), base_rate)
        model.freeze(0)
    else:
        model = _prepare(pretrained, config, train, seed)
        if strategy is Strategy.FEATURE_EXTRACTION:
            depth = config.freeze_blocks
            model.dense.reset_head(torch.Generator().manual_seed(seed), base_rate)
        elif strategy in (Strategy.FINE_TUNE, Strategy.L2_SP):
            depth = 0
        model.freeze(depth)
    anchor = None
    if strategy is Strategy.L2_SP:
        anchor = (pretrained, settings.l2sp_dense, settings.l2sp_sparse)
    result = fit(
        model,
        train,
        val,
        settings.train,
        seed=seed,
        steps=steps,
        anchor=anchor,
        progress=progress,
        description=strategy.value,
    )
    return model, result


def probe_freeze_depth(
    pretrained: RankerModel,
    train: ClickLogs,
    val: ClickLogs,
    settings: TransferSettings,
    *,
    seed: int,
) -> tuple[int, dict[int, float]]:
    """Fine-tune briefly at every freeze depth; pick the one with the lowest validation log-loss.

    Each probe gets `probe_budget` of a full run's steps (no early stopping), so with the default
    0.25 and four depths the probe costs about one full run. Ties go to the deeper freeze.
    """
    steps = max(1, round(settings.probe_budget * settings.train.steps_for(len(train))))
    scores: dict[int, float] = {}
    for depth in range(pretrained.config.freeze_blocks + 1):
        _, result = train_strategy(
            Strategy.FREEZE, pretrained, train, val, settings, seed=seed, depth=depth, steps=steps
        )
        scores[depth] = result.val.logloss
    picked = min(scores, key=lambda d: (scores[d], -d))
    return picked, scores


def run_comparison(
    pretrained: RankerModel,
    data: DomainData,
    settings: TransferSettings,
    *,
    on_run: Callable[[RunRecord], None] | None = None,
    keep: tuple[float, int] | None = None,
) -> tuple[list[RunRecord], list[ProbeRecord], RankerModel | None]:
    """Every strategy × label fraction × repetition, scored on `data.target_test`.

    AUTO_FREEZE reuses the full run at the depth its probe picked (the same computation, same
    seed). `keep=(fraction, repeat)` returns that cell's AUTO_FREEZE model as well.
    """
    runs: list[RunRecord] = []
    probes: list[ProbeRecord] = []
    kept: RankerModel | None = None
    depths = range(pretrained.config.freeze_blocks + 1)
    for fraction in settings.fractions:
        for repeat in range(settings.repeats):
            seed = run_seed(settings.seed, repeat)
            train, val = labelled_split(data.target_pool, fraction, seed, settings.val_fraction)
            picked, probe_scores = probe_freeze_depth(pretrained, train, val, settings, seed=seed)
            plan: list[tuple[Strategy, int | None]] = [
                (Strategy.SCRATCH, None),
                (Strategy.FEATURE_EXTRACTION, pretrained.config.freeze_blocks),
                (Strategy.L2_SP, 0),
                *[(Strategy.FINE_TUNE if d == 0 else Strategy.FREEZE, d) for d in depths],
            ]
            by_depth: dict[int, RunRecord] = {}
            for strategy, depth in plan:
                model, result = train_strategy(
                    strategy, pretrained, train, val, settings, seed=seed, depth=depth or 0
                )
                metrics = evaluate(model, data.target_test)
                record = RunRecord(
                    fraction,
                    repeat,
                    seed,
                    strategy,
                    depth,
                    metrics.auc,
                    metrics.logloss,
                    result.steps,
                    result.seconds,
                )
                runs.append(record)
                if on_run is not None:
                    on_run(record)
                if strategy in (Strategy.FINE_TUNE, Strategy.FREEZE) and depth is not None:
                    by_depth[depth] = record
                    if keep == (fraction, repeat) and depth == picked:
                        kept = model
            auto = by_depth[picked]
            runs.append(
                RunRecord(
                    fraction,
                    repeat,
                    seed,
                    Strategy.AUTO_FREEZE,
                    picked,
                    auto.auc,
                    auto.logloss,
                    auto.steps,
                    auto.seconds,
                )
            )
            best = min(by_depth, key=lambda d: by_depth[d].logloss)
            probes.append(ProbeRecord(fraction, repeat, probe_scores, picked, best))
    return runs, probes, kept
