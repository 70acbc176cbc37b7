"""Training and evaluation: one loop for pre-training, fine-tuning, probing and training from scratch.

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
    """Optimisation settings; steps = clip(epochs × rows / batch, min_steps, max_steps)."""

    batch_rows: int = 512
    lr_dense: float = 1e-3
    lr_sparse: float = 1e-2
    epochs: float = 4.0
    min_steps: int = 150
    max_steps: int = 20_000
    evals: int = 8
    patience: int = 3

    def steps_for(self, rows: int) -> int:
        steps = math.ceil(self.epochs * rows / min(self.batch_rows, rows))
        return max(self.min_steps, min(self.max_steps, steps))


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


def _metrics(labels: NDArray[np.float32], logits: NDArray[np.float64]) -> Metrics:
    # log(1 + exp(-|x|)) + max(x, 0) - x*y is the numerically stable binary cross-entropy.
    loss = np.logaddexp(0.0, -np.abs(logits)) + np.maximum(logits, 0.0) - logits * labels
    both = 0 < labels.sum() < len(labels)
    auc = float(roc_auc_score(labels, logits)) if both else float("nan")
    return Metrics(auc=auc, logloss=float(loss.mean()))


def evaluate(model: RankerModel, logs: ClickLogs, keep: NDArray[np.bool_] | None = None) -> Metrics:
    """AUC and mean log-loss of `model` on `logs` (`keep` drops keys, as the serving cut-off does)."""
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
    """Train the parameters of `model` that require grad; leave the best-on-validation weights in it.

    `anchor=(pretrained, dense_strength, sparse_strength)` adds the L2-SP penalty. The batch order
    comes from `seed` alone, so runs that share a seed see the same batches.
    """
    started = time.perf_counter()
    device = model.sparse.table.weight.device
    total_steps = settings.steps_for(len(train)) if steps is None else steps
    batch = min(settings.batch_rows, len(train))
    eval_every = max(1, math.ceil(total_steps / max(settings.evals, 1)))
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
    best_loss, best_step, best_val = math.inf, 0, Metrics(float("nan"), math.inf)
    best_state: dict[str, Tensor] = {}
    stale = 0
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
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            if optimizers:
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
            bar.update(1)
            if step % eval_every and step != total_steps:
                continue
            val_metrics = evaluate(model, val)
            bar.set_postfix(val_logloss=f"{val_metrics.logloss:.4f}", refresh=False)
            if val_metrics.logloss < best_loss:
                best_loss, best_step, best_val, stale = val_metrics.logloss, step, val_metrics, 0
                best_state = {
                    name: p.detach().clone()
                    for name, p in model.named_parameters()
                    if p.requires_grad
                }
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in best_state:
                param.copy_(best_state[name])
    return FitResult(step, best_step, best_val, time.perf_counter() - started)
