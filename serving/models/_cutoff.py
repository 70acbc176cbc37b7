"""Quality vs the sparse-feature cut-off: what skipping unpopular keys costs the model.

The serving feature stage may keep only the K most popular keys (0-based popularity rank < K) and
use a zero vector for the rest; this measures AUC and log-loss on the target test set for a grid of K so that the tuner
can bound the cut-off knob by a quality budget.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from serving.models._data import ClickLogs
from serving.models._formats import QualityCurve, QualityMetrics, QualityPoint
from serving.models._model import RankerModel
from serving.models._train import evaluate

__all__ = ["cutoff_grid", "quality_vs_cutoff"]


def cutoff_grid(vocab_size: int) -> list[int]:
    """0, then 1-2-5 steps (1, 2, 5, 10, 20, ...) below `vocab_size`, then `vocab_size`.

    >>> cutoff_grid(1000)
    [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    """
    grid = [0]
    decade = 1
    while decade < vocab_size:
        grid += [k for k in (decade, 2 * decade, 5 * decade) if k < vocab_size]
        decade *= 10
    return [*grid, vocab_size]


def quality_vs_cutoff(
    model: RankerModel,
    test: ClickLogs,
    popularity_rank: NDArray[np.int64],
    grid: list[int] | None = None,
) -> QualityCurve:
    """AUC/log-loss with keys of popularity rank >= K zeroed (the K most popular kept), per K."""
    vocab = len(popularity_rank)
    cutoffs = cutoff_grid(vocab) if grid is None else sorted(set(grid))
    ranks = popularity_rank[test.ids]
    baseline = evaluate(model, test)
    points = []
    for cutoff in cutoffs:
        keep = ranks < cutoff
        metrics = baseline if keep.all() else evaluate(model, test, keep)
        points.append(
            QualityPoint(
                cutoff_rank=cutoff,
                auc=metrics.auc,
                logloss=metrics.logloss,
                fraction_lookups_cut=float(1.0 - keep.mean()),
            )
        )
    return QualityCurve(
        metric_baseline=QualityMetrics(auc=baseline.auc, logloss=baseline.logloss),
        points=points,
    )
