"""Training and evaluation: one loop for pre-training, fine-tuning, probing and scratch training.

Embedding rows get sparse gradients and `SparseAdam` (only the rows a batch touched move), the
tower gets `Adam`. Validation log-loss is checked a few times per run and the best weights are
kept (early stopping), so every strategy is compared under the same protocol.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.nn import functional
from tqdm import tqdm

from serving.models._data import ClickLogs
from serving.models._model import RankerModel

__all__ = ["FitResult", "Metrics", "TrainSettings", "evaluate", "fit"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings.

    A batch is `batch_rows`, or an eighth of the training rows when that is smaller (at least
    `min_batch_rows`); a run is clip(epochs × rows / batch, min_steps, max_steps) steps. Validation
    runs `evals` times per run but at least every half epoch, and `patience` checks without
    improvement stop the run.
    """

    batch_rows: int = 512
    min_batch_rows: int = 32
    lr_dense: float = 1e-3
    lr_sparse: float = 1e-3
    epochs: float = 4.0
    min_steps: int = 150
    max_steps: int = 20_000
    evals: int = 8
    patience: int = 3

    def batch_for(self, rows: int) -> int:
        return max(1, min(rows, self.batch_rows, max(self.min_batch_rows, rows // 8)))

    def steps_for(self, rows: int) -> int:
        steps = math.ceil(self.epochs * rows / self.batch_for(rows))
        return max(self.min_steps, min(self.max_steps, steps))

    def eval_every(self, rows: int, steps: int) -> int:
        half_epoch = max(1, rows // (2 * self.batch_for(rows)))
        return max(1, min(half_epoch, math.ceil(steps / max(self.evals, 1))))


@dataclass(frozen=True)
class Metrics:
    auc: float
    logloss: float


@dataclass(frozen=True)
class FitResult:
    steps: int
    best_step: int
    val: Metrics
    seconds: float


@dataclass(frozen=True)
class _Anchor:
    """L2-SP: pull weights towards `model`'s (the pre-trained ones) with these strengths."""

    model: RankerModel
    dense_strength: float
    sparse_strength: float


class _Best:
    """The best-on-validation weights so far (only the trainable ones are copied)."""

    def __init__(self, model: RankerModel, metrics: Metrics) -> None:
        self.metrics, self.step, self.stale = metrics, 0, 0
        self.state = self._snapshot(model)

    @staticmethod
    def _snapshot(model: RankerModel) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def offer(self, model: RankerModel, metrics: Metrics, step: int) -> bool:
        if metrics.logloss < self.metrics.logloss:
            self.metrics, self.step, self.stale = metrics, step, 0
            self.state = self._snapshot(model)
            return True
        self.stale += 1
        return False

    def restore(self, model: RankerModel) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.state:
                    param.copy_(self.state[name])


def _metrics(labels: NDArray[np.float32], logits: NDArray[np.float64]) -> Metrics:
    # log(1 + exp(-|x|)) + max(x, 0) - x*y is the numerically stable binary cross-entropy.
    loss = np.logaddexp(0.0, -np.abs(logits)) + np.maximum(logits, 0.0) - logits * labels
    both = 0 < labels.sum() < len(labels)
    auc = float(roc_auc_score(labels, logits)) if both else float("nan")
    return Metrics(auc=auc, logloss=float(loss.mean()))


def evaluate(model: RankerModel, logs: ClickLogs, keep: NDArray[np.bool_] | None = None) -> Metrics:
    """AUC and mean log-loss of `model` on `logs` (`keep` drops keys like the serving cut-off)."""
    return _metrics(logs.labels, model.logits(logs.ids, logs.dense, keep))


def _penalty(model: RankerModel, anchor: _Anchor, ids: Tensor) -> Tensor:
    total = torch.zeros((), device=ids.device)
    reference = dict(anchor.model.named_parameters())
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name == "sparse.table.weight":
            # Only the rows this batch touched: keeps the gradient sparse and the step cheap.
            rows = torch.unique(ids)
            diff = model.sparse.table(rows) - reference[name].detach()[rows]
            total = total + 0.5 * anchor.sparse_strength * diff.pow(2).sum()
        else:
            diff = param - reference[name].detach()
            total = total + 0.5 * anchor.dense_strength * diff.pow(2).sum()
    return total


def fit(
    model: RankerModel,
    train: ClickLogs,
    val: ClickLogs,
    settings: TrainSettings,
    *,
    seed: int,
    steps: int | None = None,
    anchor: tuple[RankerModel, float, float] | None = None,
    progress: bool = False,
    description: str = "train",
) -> FitResult:
    """Train the parameters of `model` that require grad; leave the best validation weights in it.

    `anchor=(pretrained, dense_strength, sparse_strength)` adds the L2-SP penalty. The batch order
    comes from `seed` alone, so runs that share a seed see the same batches.
    """
    started = time.perf_counter()
    device = model.sparse.table.weight.device
    total_steps = settings.steps_for(len(train)) if steps is None else steps
    batch = settings.batch_for(len(train))
    eval_every = settings.eval_every(len(train), total_steps)
    ids = torch.as_tensor(train.ids, device=device)
    dense = torch.as_tensor(train.dense, device=device)
    labels = torch.as_tensor(train.labels, device=device)
    l2sp = None if anchor is None else _Anchor(*anchor)

    table = model.sparse.table.weight
    dense_params = [p for n, p in model.named_parameters() if p.requires_grad and p is not table]
    optimizers: list[torch.optim.Optimizer] = []
    if table.requires_grad:
        optimizers.append(torch.optim.SparseAdam([table], lr=settings.lr_sparse))
    if dense_params:
        optimizers.append(torch.optim.Adam(dense_params, lr=settings.lr_dense))

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    cursor = 0
    # The starting weights are a candidate too: adapting may not beat the pre-trained model.
    best = _Best(model, evaluate(model, val))
    model.train()
    step = 0
    with tqdm(total=total_steps, desc=description, disable=not progress, leave=False) as bar:
        for step in range(1, total_steps + 1):
            if cursor + batch > len(order):
                order, cursor = rng.permutation(len(train)), 0
            index = torch.as_tensor(order[cursor : cursor + batch], device=device)
            cursor += batch
            batch_ids = ids[index]
            loss = functional.binary_cross_entropy_with_logits(
                model(batch_ids, dense[index]), labels[index]
            )
            if l2sp is not None:
                loss = loss + _penalty(model, l2sp, batch_ids)
            if optimizers:
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
            bar.update(1)
            if step % eval_every and step != total_steps:
                continue
            val_metrics = evaluate(model, val)
            bar.set_postfix(val_logloss=f"{val_metrics.logloss:.4f}", refresh=False)
            if not best.offer(model, val_metrics, step) and best.stale >= settings.patience:
                break
    best.restore(model)
    return FitResult(step, best.step, best.metrics, time.perf_counter() - started)
