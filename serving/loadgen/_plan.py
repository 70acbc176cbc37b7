"""The load plan: Poisson send times and Zipf-keyed payloads, all fixed by a seed before the clock starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from simulator.errors import InputError
from simulator.spec import WorkloadSpec
from simulator.zipf import ZipfSampler

__all__ = ["MAX_DURATION_S", "LoadPlan", "RequestShape", "model_request_shape", "plan_requests"]

MAX_DURATION_S = 600.0
_KEY_CHUNK = 1 << 20  # keys drawn per sampler call while planning (bounds the temporary buffer)


@dataclass(frozen=True)
class RequestShape:
    """What one request holds: rows × one key id per sparse field, dense floats, key popularity."""

    rows: int
    sparse_fields: int
    dense_features: int
    vocab_size: int = 1_000_000
    zipf_alpha: float = 1.0

    @classmethod
    def from_workload(cls, workload: WorkloadSpec) -> RequestShape:
        return cls(
            workload.rows_per_request,
            workload.sparse_features_per_row,
            workload.dense_features_per_row,
            workload.vocab_size,
            workload.zipf_alpha,
        )


def model_request_shape(
    shape: RequestShape, model_dir: Path
) -> tuple[RequestShape, NDArray[np.int64], list[str]]:
    """The served model's field counts and vocabulary replace the spec's; key id of each rank.

    Returns the shape, `key_of_rank` (the inverse of the model's popularity rank per key id) and
    one note per value that differs from the spec.
    """
    from serving.models import read_artifact  # imports torch: only when a model is named

    art = read_artifact(model_dir)
    meta = art.metadata
    model = (len(meta.sparse_fields), len(meta.dense_features), meta.vocab_size)
    notes = [
        f"the model has {theirs} {what} (spec: {ours}); using the model's"
        for what, theirs, ours in zip(
            ("sparse fields", "dense features", "keys in its vocabulary"),
            model,
            (shape.sparse_fields, shape.dense_features, shape.vocab_size),
            strict=True,
        )
        if theirs != ours
    ]
    new = RequestShape(shape.rows, *model, zipf_alpha=shape.zipf_alpha)
    key_of_rank = np.argsort(art.popularity_rank(), kind="stable").astype(np.int64)
    return new, key_of_rank, notes


@dataclass(frozen=True)
class LoadPlan:
    """Send times (seconds after the start, sorted) and every request's payload."""

    shape: RequestShape
    rate_rps: float
    duration_s: float
    seed: int
    send_s: NDArray[np.float64]  # [n]
    sparse_ids: NDArray[np.int32]  # [n, rows, fields] global key ids; int32 halves the memory
    dense: NDArray[np.float32]  # [n, rows, dense]

    def __len__(self) -> int:
        return len(self.send_s)


def plan_requests(
    shape: RequestShape,
    rate_rps: float,
    duration_s: float,
    seed: int,
    *,
    key_of_rank: NDArray[np.int64] | None = None,
    max_requests: int = 200_000,
) -> LoadPlan:
    """A Poisson process of `rate_rps` over `duration_s`, with Zipf keys; same seed, same plan.

    Keys are popularity ranks drawn from `ZipfSampler(vocab, alpha)`, mapped to key ids through
    `key_of_rank` when given (a served model's popularity order), else key id = rank.
    """
    if not rate_rps > 0 or not math.isfinite(rate_rps):
        raise InputError(f"--rate must be a positive number of requests/s (got {rate_rps})")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise InputError(f"--duration must be in (0, {MAX_DURATION_S:g}] s (got {duration_s})")
    if shape.sparse_fields < 1 or shape.rows < 1:
        raise InputError("a request needs at least one row and one sparse field")
    if shape.vocab_size > 2**31:
        raise InputError(f"a vocabulary of {shape.vocab_size} keys is more than 2**31")
    if key_of_rank is not None and len(key_of_rank) != shape.vocab_size:
        raise InputError(
            f"key_of_rank has {len(key_of_rank)} keys, the vocabulary {shape.vocab_size}"
        )
    expected = rate_rps * duration_s
    if expected > max_requests:
        raise InputError(
            f"{rate_rps:g} req/s for {duration_s:g} s is about {expected:.0f} requests, more than "
            f"--max-requests {max_requests}; lower the rate or the duration, or raise the limit"
        )
    times_rng, key_rng, dense_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    # A Poisson process on [0, T]: a Poisson count of points, each uniform on [0, T].
    n = int(times_rng.poisson(expected))
    if n > max_requests:
        raise InputError(f"the plan drew {n} requests, more than --max-requests {max_requests}")
    if n == 0:
        raise InputError(f"{rate_rps:g} req/s for {duration_s:g} s planned no request at all")
    send_s = np.sort(times_rng.uniform(0.0, duration_s, n))
    sampler = ZipfSampler(shape.vocab_size, shape.zipf_alpha, key_rng)
    ids = np.empty(n * shape.rows * shape.sparse_fields, dtype=np.int32)
    buffer = np.empty(min(len(ids), _KEY_CHUNK), dtype=np.int64)
    for start in range(0, len(ids), _KEY_CHUNK):
        part = buffer[: min(_KEY_CHUNK, len(ids) - start)]
        sampler.fill(part)
        ids[start : start + len(part)] = part if key_of_rank is None else key_of_rank[part]
    dense = dense_rng.standard_normal((n, shape.rows, shape.dense_features), dtype=np.float32)
    return LoadPlan(
        shape,
        rate_rps,
        duration_s,
        seed,
        send_s,
        ids.reshape(n, shape.rows, shape.sparse_fields),
        dense,
    )
