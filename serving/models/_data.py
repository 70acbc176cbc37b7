"""Synthetic click logs: a large source domain and a small target domain with shared structure.

Every key has a latent vector that both domains share (what the key means). A domain is a user mix
(which keys are popular: Zipf over each field's keys through a domain-specific permutation, and a
shift of the dense features) and a click function (a logistic model over first-order key effects,
pairwise key interactions and the dense features). The target's click function is correlated with
the source's but not equal to it, and its user-side fields re-rank a fraction of their keys, so a
model pre-trained on the source knows most of what the target needs and has to adapt the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from serving.models._model import FeatureSchema
from simulator.zipf import ZipfSampler, zipf_probabilities

__all__ = [
    "ClickLogs",
    "DomainData",
    "GeneratorConfig",
    "generate_domains",
    "popularity_from_counts",
]

_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class ClickLogs:
    """Rows of a click log: global key ids [N, F] int64, dense features [N, Dd], labels [N] 0/1."""

    ids: NDArray[np.int64]
    dense: NDArray[np.float32]
    labels: NDArray[np.float32]

    def __post_init__(self) -> None:
        rows = len(self.labels)
        if (
            self.ids.ndim != 2
            or self.dense.ndim != 2
            or not len(self.ids) == rows == len(self.dense)
        ):
            raise ValueError("ids [N, F], dense [N, Dd] and labels [N] must agree on N")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: NDArray[np.int64] | slice) -> ClickLogs:
        return ClickLogs(self.ids[index], self.dense[index], self.labels[index])


@dataclass(frozen=True)
class DomainData:
    """Everything training needs, however it was obtained (generated or read from user logs).

    `popularity_rank[k]` is global key k's popularity rank in the target domain (0 = most looked
    up), the order the serving cut-off uses.
    """

    schema: FeatureSchema
    source: ClickLogs
    target_pool: ClickLogs
    target_test: ClickLogs
    popularity_rank: NDArray[np.int64]
    provenance: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and shape of the synthetic domains; `seed` fixes every random draw."""

    schema: FeatureSchema
    zipf_alpha: float = 1.0
    source_rows: int = 1_000_000
    target_rows: int = 100_000
    test_rows: int = 50_000
    seed: int = 0
    latent_dim: int = 8
    user_fields: int | None = None
    popularity_shift: float = 0.3
    click_shift: float = 0.5
    source_ctr: float = 0.2
    target_ctr: float = 0.1
    dense_shift: float = 0.5

    def __post_init__(self) -> None:
        if self.zipf_alpha <= 0:
            raise ValueError(f"zipf_alpha must be > 0 (got {self.zipf_alpha})")
        if min(self.source_rows, self.target_rows, self.test_rows) < 1:
            raise ValueError("source_rows, target_rows and test_rows must be >= 1")
        for name in ("popularity_shift", "click_shift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("source_ctr", "target_ctr"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1)")

    @property
    def num_user_fields(self) -> int:
        """Fields whose popularity differs between domains (the first ones; default: half)."""
        return self.schema.num_fields // 2 if self.user_fields is None else self.user_fields


@dataclass(frozen=True)
class _Domain:
    """A user mix and a click function."""

    rank_to_local: list[NDArray[np.int64]]  # per field: popularity rank -> local id
    dense_mean: NDArray[np.float64]  # [Dd]
    bias: float
    first: NDArray[np.float64]  # [F, L] first-order directions
    pair: NDArray[np.float64]  # [F, F] strictly upper-triangular interaction weights
    dense_weight: NDArray[np.float64]  # [Dd]


def _mix(old: NDArray[np.float64], new: NDArray[np.float64], shift: float) -> NDArray[np.float64]:
    """Same scale as `old`, correlation sqrt(1 - shift²) with it."""
    return np.sqrt(1.0 - shift**2) * old + shift * new


def _click_parameters(
    rng: np.random.Generator, num_fields: int, latent: int, num_dense: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    first = rng.normal(0.0, 1.0 / np.sqrt(latent), size=(num_fields, latent))
    pair = np.triu(rng.normal(0.0, 1.0, size=(num_fields, num_fields)), k=1)
    dense_weight = rng.normal(0.0, 1.0 / np.sqrt(max(num_dense, 1)), size=num_dense)
    return first, pair, dense_weight


def _reshuffle(
    order: NDArray[np.int64], fraction: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """`order` with a random `fraction` of its positions permuted among themselves."""
    out = order.copy()
    chosen = np.flatnonzero(rng.random(len(order)) < fraction)
    out[chosen] = order[rng.permutation(chosen)]
    return out


def _domains(config: GeneratorConfig, rng: np.random.Generator) -> tuple[_Domain, _Domain]:
    schema, latent = config.schema, config.latent_dim
    source_order = [rng.permutation(n).astype(np.int64) for n in schema.field_vocab_sizes]
    target_order = [
        _reshuffle(order, config.popularity_shift, rng) if f < config.num_user_fields else order
        for f, order in enumerate(source_order)
    ]
    first, pair, dense_weight = _click_parameters(rng, schema.num_fields, latent, schema.num_dense)
    new_first, new_pair, new_dense = _click_parameters(
        rng, schema.num_fields, latent, schema.num_dense
    )
    shift_direction = rng.normal(0.0, 1.0, size=schema.num_dense)
    shift_direction /= max(float(np.linalg.norm(shift_direction)), 1e-12)
    tau = config.click_shift
    source = _Domain(
        source_order,
        np.zeros(schema.num_dense),
        float(np.log(config.source_ctr / (1 - config.source_ctr))),
        first,
        pair,
        dense_weight,
    )
    target = _Domain(
        target_order,
        config.dense_shift * shift_direction,
        float(np.log(config.target_ctr / (1 - config.target_ctr))),
        _mix(first, new_first, tau),
        _mix(pair, new_pair, tau),
        _mix(dense_weight, new_dense, tau),
    )
    return source, target


def _sample(
    config: GeneratorConfig,
    domain: _Domain,
    latent: NDArray[np.float32],
    rows: int,
    rng: np.random.Generator,
) -> ClickLogs:
    schema = config.schema
    offsets = schema.offsets
    ids = np.empty((rows, schema.num_fields), dtype=np.int64)
    for f, n in enumerate(schema.field_vocab_sizes):
        ranks = ZipfSampler(n, config.zipf_alpha, rng).sample(rows)
        ids[:, f] = domain.rank_to_local[f][ranks] + offsets[f]
    dense = (domain.dense_mean + rng.normal(0.0, 1.0, size=(rows, schema.num_dense))).astype(
        np.float32
    )
    logit = np.empty(rows, dtype=np.float64)
    pairs = max(int(np.count_nonzero(domain.pair)), 1)
    scale_first = 1.0 / np.sqrt(schema.num_fields)
    scale_pair = 1.0 / np.sqrt(config.latent_dim * pairs)
    for start in range(0, rows, _CHUNK_ROWS):
        part = slice(start, start + _CHUNK_ROWS)
        z = latent[ids[part]].astype(np.float64)  # [n, F, L]
        first = np.einsum("nfl,fl->n", z, domain.first) * scale_first
        gram = np.einsum("nfl,ngl->nfg", z, z)
        pair = np.einsum("nfg,fg->n", gram, domain.pair) * scale_pair
        logit[part] = domain.bias + first + pair + 0.5 * dense[part] @ domain.dense_weight
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return ClickLogs(ids, dense, labels)


def _target_popularity(config: GeneratorConfig, target: _Domain) -> NDArray[np.int64]:
    """Rank every global key by its probability of being looked up in a target row."""
    schema = config.schema
    prob = np.empty(schema.vocab_size, dtype=np.float64)
    for f, n in enumerate(schema.field_vocab_sizes):
        start = int(schema.offsets[f])
        field_prob = np.empty(n, dtype=np.float64)
        field_prob[target.rank_to_local[f]] = zipf_probabilities(n, config.zipf_alpha)
        prob[start : start + n] = field_prob
    order = np.lexsort((np.arange(schema.vocab_size), -prob))
    rank = np.empty(schema.vocab_size, dtype=np.int64)
    rank[order] = np.arange(schema.vocab_size)
    return rank


def generate_domains(config: GeneratorConfig) -> DomainData:
    """Source logs, target labelled pool and target test set; identical for identical configs.

    >>> from serving.models import FeatureSchema, GeneratorConfig, generate_domains
    >>> data = generate_domains(GeneratorConfig(FeatureSchema.split(1000, 4, 2), source_rows=500,
    ...                                         target_rows=100, test_rows=100, seed=1))
    >>> data.source.ids.shape, data.target_test.dense.shape, int(data.popularity_rank.max())
    ((500, 4), (100, 2), 999)
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)]
    source, target = _domains(config, streams[0])
    latent = (
        streams[1].normal(size=(config.schema.vocab_size, config.latent_dim)).astype(np.float32)
    )
    return DomainData(
        schema=config.schema,
        source=_sample(config, source, latent, config.source_rows, streams[2]),
        target_pool=_sample(config, target, latent, config.target_rows, streams[3]),
        target_test=_sample(config, target, latent, config.test_rows, streams[4]),
        popularity_rank=_target_popularity(config, target),
        provenance={
            "kind": "synthetic",
            "seed": config.seed,
            "zipf_alpha": config.zipf_alpha,
            "source_rows": config.source_rows,
            "target_rows": config.target_rows,
            "test_rows": config.test_rows,
            "latent_dim": config.latent_dim,
            "user_fields": config.num_user_fields,
            "popularity_shift": config.popularity_shift,
            "click_shift": config.click_shift,
            "source_ctr": config.source_ctr,
            "target_ctr": config.target_ctr,
            "dense_shift": config.dense_shift,
        },
    )


def popularity_from_counts(
    schema: FeatureSchema, target_ids: NDArray[np.int64], source_ids: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Popularity ranks from observed logs: target lookups first, source lookups break ties."""
    vocab = schema.vocab_size
    target_counts = np.bincount(target_ids.ravel(), minlength=vocab)
    source_counts = np.bincount(source_ids.ravel(), minlength=vocab)
    order = np.lexsort((np.arange(vocab), -source_counts, -target_counts))
    rank = np.empty(vocab, dtype=np.int64)
    rank[order] = np.arange(vocab)
    return rank
