"""The synthetic click-log generator: seeded, in range, Zipf-popular, two related domains."""

from __future__ import annotations

import numpy as np

from serving.models import DomainData, generate_domains

from .models_helpers import TINY_SCHEMA, tiny_config


def _arrays(data: DomainData) -> list[np.ndarray]:
    out: list[np.ndarray] = [data.popularity_rank]
    for logs in (data.source, data.target_pool, data.target_test):
        out += [logs.ids, logs.dense, logs.labels]
    return out


def test_same_seed_identical_data_other_seed_different(tiny_data: DomainData) -> None:
    again = generate_domains(tiny_config(seed=3))
    for a, b in zip(_arrays(tiny_data), _arrays(again), strict=True):
        assert np.array_equal(a, b)
    other = generate_domains(tiny_config(seed=4))
    for a, b in zip(_arrays(tiny_data), _arrays(other), strict=True):
        assert not np.array_equal(a, b)


def test_ids_stay_in_their_fields(tiny_data: DomainData) -> None:
    offsets = TINY_SCHEMA.offsets
    for logs in (tiny_data.source, tiny_data.target_pool, tiny_data.target_test):
        local = logs.ids - offsets
        assert (local >= 0).all()
        assert (local < np.asarray(TINY_SCHEMA.field_vocab_sizes)).all()
        assert set(np.unique(logs.labels).tolist()) == {0.0, 1.0}


def test_popularity_rank_orders_target_lookups(tiny_data: DomainData) -> None:
    rank = tiny_data.popularity_rank
    assert np.array_equal(np.sort(rank), np.arange(TINY_SCHEMA.vocab_size))
    ids = np.concatenate([tiny_data.target_pool.ids, tiny_data.target_test.ids]).ravel()
    counts_by_rank = np.bincount(rank[ids], minlength=TINY_SCHEMA.vocab_size)
    fields = TINY_SCHEMA.num_fields
    # Zipf(1.0) over 200 keys per field: each field's top key is ~17% of that field's lookups.
    head, next_ = counts_by_rank[:fields].mean(), counts_by_rank[fields : 10 * fields].mean()
    assert head > 2 * next_ > 2 * counts_by_rank[10 * fields :].mean()


def test_domains_differ_but_share_keys(tiny_data: DomainData) -> None:
    source_keys = set(np.unique(tiny_data.source.ids).tolist())
    target_keys = np.unique(tiny_data.target_pool.ids)
    shared = np.mean([k in source_keys for k in target_keys.tolist()])
    assert shared > 0.7  # the item-side half of the fields has the same popularity in both
    # Different click functions and user mix: the click rates differ (0.27 vs 0.17 at full size).
    assert tiny_data.source.labels.mean() > tiny_data.target_pool.labels.mean()
