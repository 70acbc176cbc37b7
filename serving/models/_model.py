"""The CTR ranking model: embedding tables (sparse part) and an interaction/MLP tower (dense part).

The two parts are separate modules on purpose: in serving, the tables live in a parameter store and
the feature stage sends pooled per-field vectors to ranker replicas, which run only `DenseRanker`.
"""

# NOTE: no `from __future__ import annotations` in this module: TorchScript must evaluate the
# class-level buffer annotations of DenseRanker, and cannot resolve them from strings.
import copy
import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

__all__ = [
    "DenseRanker",
    "FeatureSchema",
    "ModelConfig",
    "RankerModel",
    "SparseTables",
    "export_dense_torchscript",
    "load_dense_torchscript",
]

# Standard deviation of freshly initialised embedding rows: small, so that a key the model never
# learned about sits near the zero vector that the serving cut-off substitutes for it.
_EMBEDDING_INIT_STD = 0.01


@dataclass(frozen=True)
class FeatureSchema:
    """What a row holds: one categorical id per sparse field and `num_dense` floats.

    Fields share one global key space (what a parameter store holds): field f's local id i is
    global key `offsets[f] + i`.
    """

    field_vocab_sizes: tuple[int, ...]
    num_dense: int

    def __post_init__(self) -> None:
        if not self.field_vocab_sizes or min(self.field_vocab_sizes) < 1:
            raise ValueError(
                f"every sparse field needs a vocabulary >= 1: {self.field_vocab_sizes}"
            )
        if self.num_dense < 0:
            raise ValueError(f"num_dense must be >= 0 (got {self.num_dense})")
        if self.vocab_size >= 2**31:
            raise ValueError(f"total vocabulary {self.vocab_size} must be < 2**31")

    @classmethod
    def split(cls, vocab_size: int, num_fields: int, num_dense: int) -> "FeatureSchema":
        """`vocab_size` keys spread over `num_fields` fields as evenly as possible."""
        if num_fields < 1 or vocab_size < num_fields:
            raise ValueError(f"need 1 <= num_fields <= vocab_size (got {num_fields}, {vocab_size})")
        base, extra = divmod(vocab_size, num_fields)
        sizes = tuple(base + (1 if f < extra else 0) for f in range(num_fields))
        return cls(sizes, num_dense)

    @property
    def num_fields(self) -> int:
        return len(self.field_vocab_sizes)

    @property
    def vocab_size(self) -> int:
        return sum(self.field_vocab_sizes)

    @property
    def offsets(self) -> NDArray[np.int64]:
        sizes = np.asarray(self.field_vocab_sizes, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def sparse_columns(self) -> tuple[str, ...]:
        return tuple(f"sparse_{f}" for f in range(self.num_fields))

    @property
    def dense_columns(self) -> tuple[str, ...]:
        return tuple(f"dense_{j}" for j in range(self.num_dense))


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model; `FeatureSchema` fixes the inputs, the rest is the tower's shape."""

    schema: FeatureSchema
    embedding_dim: int = 16
    bottom_hidden: tuple[int, ...] = (32,)
    top_hidden: tuple[int, ...] = (128, 64)

    @property
    def freeze_blocks(self) -> int:
        """How many blocks sit below the head: embeddings, then one per top hidden layer."""
        return 1 + len(self.top_hidden)


def _mlp(sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        with warnings.catch_warnings():
            # No dense features: Linear(0, n) is valid (its output is its bias) but torch warns.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            linear = nn.Linear(fan_in, fan_out)
        _init_linear(linear, generator)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers)


def _init_linear(linear: nn.Linear, generator: torch.Generator) -> None:
    """torch's default Linear init, drawn on the CPU from `generator` (whatever the layer's
    device: a CPU generator cannot fill a CUDA tensor), then copied in."""
    weight = torch.empty(linear.weight.shape)
    if weight.numel():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
    bias = torch.empty(linear.bias.shape)
    nn.init.uniform_(bias, -bound, bound, generator=generator)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


class SparseTables(nn.Module):
    """All fields' embedding tables as one [vocab, dim] table (rows at per-field offsets).

    `forward(ids)` takes global key ids [B, F] (one key per field) or [B, F, H] (H keys per field,
    -1 = padding) and sum-pools each field into [B, F, dim]. `keep`, a bool mask shaped like `ids`,
    drops keys (zero vector), which is how the serving cut-off is evaluated offline.
    """

    def __init__(self, schema: FeatureSchema, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.table = nn.Embedding(schema.vocab_size, dim, sparse=True)
        with torch.no_grad():
            nn.init.normal_(self.table.weight, 0.0, _EMBEDDING_INIT_STD, generator=generator)

    def forward(self, ids: Tensor, keep: Tensor | None = None) -> Tensor:
        if ids.dim() == 2 and keep is None:
            return self.table(ids)
        if ids.dim() == 2:
            ids = ids.unsqueeze(-1)
            keep = None if keep is None else keep.unsqueeze(-1)
        mask = ids >= 0
        if keep is not None:
            mask = mask & keep
        vectors = self.table(ids.clamp_min(0)) * mask.unsqueeze(-1).to(self.table.weight.dtype)
        return vectors.sum(dim=2)


class DenseRanker(nn.Module):
    """Pooled field vectors [B, F, D] + dense features [B, Dd] → click logits [B].

    Dense features are standardised with stored statistics, go through a bottom MLP into a D-vector,
    and pairwise dot products between it and the field vectors (DLRM-style) join the flat vectors
    in a top MLP.
    """

    dense_mean: torch.Tensor
    dense_std: torch.Tensor
    pair_rows: torch.Tensor
    pair_cols: torch.Tensor

    def __init__(self, config: ModelConfig, generator: torch.Generator) -> None:
        super().__init__()
        schema, dim = config.schema, config.embedding_dim
        self.register_buffer("dense_mean", torch.zeros(schema.num_dense))
        self.register_buffer("dense_std", torch.ones(schema.num_dense))
        self.bottom = _mlp([schema.num_dense, *config.bottom_hidden, dim], generator)
        vectors = schema.num_fields + 1
        rows, cols = torch.triu_indices(vectors, vectors, offset=1)
        self.register_buffer("pair_rows", rows)
        self.register_buffer("pair_cols", cols)
        width = dim + schema.num_fields * dim + rows.numel()
        self.top = nn.ModuleList()
        for hidden in config.top_hidden:
            self.top.append(_mlp([width, hidden], generator))
            width = hidden
        self.head = nn.Linear(width, 1)
        _init_linear(self.head, generator)

    def forward(self, pooled: Tensor, dense: Tensor) -> Tensor:
        bottom = self.bottom((dense - self.dense_mean) / self.dense_std)
        vectors = torch.cat([bottom.unsqueeze(1), pooled], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.pair_rows, self.pair_cols]
        hidden = torch.cat([bottom, pooled.flatten(1), dots], dim=1)
        for block in self.top:
            hidden = block(hidden)
        return self.head(hidden).squeeze(-1)

    def reset_head(self, generator: torch.Generator, base_rate: float) -> None:
        """New head weights; the bias starts at the log-odds of the click rate `base_rate`."""
        _init_linear(self.head, generator)
        rate = min(max(base_rate, 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.head.bias.fill_(math.log(rate / (1 - rate)))

    def set_dense_statistics(self, dense: NDArray[np.float32]) -> None:
        """Standardise with the mean and std of these rows (std floored to avoid division by 0)."""
        if dense.shape[1] == 0:
            return
        mean = torch.as_tensor(dense.mean(axis=0), dtype=torch.float32)
        std = torch.as_tensor(dense.std(axis=0), dtype=torch.float32).clamp_min(1e-6)
        self.dense_mean.copy_(mean)
        self.dense_std.copy_(std)


class RankerModel(nn.Module):
    """The whole model for training and offline evaluation: `dense(sparse(ids, keep), dense)`."""

    def __init__(self, config: ModelConfig, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.config = config
        self.sparse = SparseTables(config.schema, config.embedding_dim, generator)
        self.dense = DenseRanker(config, generator)

    def forward(self, ids: Tensor, dense: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.dense(self.sparse(ids, keep), dense)

    def blocks(self) -> list[nn.Module]:
        """Freezable blocks, bottom-up: the tables (with the bottom MLP), then each top layer."""
        first = nn.ModuleList([self.sparse, self.dense.bottom])
        return [first, *self.dense.top]

    def freeze(self, depth: int) -> None:
        """Freeze the lowest `depth` blocks; everything above them (and the head) trains."""
        blocks = self.blocks()
        if not 0 <= depth <= len(blocks):
            raise ValueError(f"freeze depth must be in [0, {len(blocks)}] (got {depth})")
        for param in self.parameters():
            param.requires_grad_(True)
        for block in blocks[:depth]:
            for param in block.parameters():
                param.requires_grad_(False)

    @torch.inference_mode()
    def predict(
        self,
        ids: NDArray[np.int64],
        dense: NDArray[np.float32],
        keep: NDArray[np.bool_] | None = None,
        batch_rows: int = 8192,
    ) -> NDArray[np.float64]:
        """Click probabilities for every row, computed in batches of `batch_rows`."""
        return 1.0 / (1.0 + np.exp(-self.logits(ids, dense, keep, batch_rows)))

    @torch.inference_mode()
    def logits(
        self,
        ids: NDArray[np.int64],
        dense: NDArray[np.float32],
        keep: NDArray[np.bool_] | None = None,
        batch_rows: int = 8192,
    ) -> NDArray[np.float64]:
        was_training = self.training
        self.eval()
        device = self.sparse.table.weight.device
        out = np.empty(len(ids), dtype=np.float64)
        for start in range(0, len(ids), batch_rows):
            part = slice(start, start + batch_rows)
            keep_t = None if keep is None else torch.as_tensor(keep[part], device=device)
            scores = self(
                torch.as_tensor(ids[part], device=device),
                torch.as_tensor(dense[part], device=device),
                keep_t,
            )
            out[part] = scores.double().cpu().numpy()
        self.train(was_training)
        return out


class _ClickProbability(nn.Module):
    """What ranker replicas run: the dense part with a sigmoid on top."""

    def __init__(self, dense: DenseRanker) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, pooled: Tensor, dense: Tensor) -> Tensor:
        return torch.sigmoid(self.dense(pooled, dense))


def export_dense_torchscript(dense: DenseRanker, path: Path) -> None:
    """Save the dense part as TorchScript: (pooled [B,F,D], dense [B,Dd]) → probabilities [B]."""
    module = _ClickProbability(copy.deepcopy(dense)).to("cpu").eval()
    module.requires_grad_(False)  # replicas only run inference: no autograd graph per call
    with warnings.catch_warnings():
        # torch marks TorchScript deprecated; it is still what replicas load without our code.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
    scripted.save(str(path))


def load_dense_torchscript(path: Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load what `export_dense_torchscript` wrote, onto `device`, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module
