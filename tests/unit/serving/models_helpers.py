"""Tiny sizes for the serving.models tests (picked to run in seconds on 2 cores)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from serving.models import (
    FeatureSchema,
    GeneratorConfig,
    TrainJob,
    TrainSettings,
    TransferSettings,
)

TINY_SCHEMA = FeatureSchema.split(vocab_size=600, num_fields=3, num_dense=2)


def tiny_config(seed: int = 3, schema: FeatureSchema = TINY_SCHEMA) -> GeneratorConfig:
    return GeneratorConfig(schema, source_rows=3000, target_rows=1500, test_rows=800, seed=seed)


def tiny_job(fractions: tuple[float, ...] = (0.1, 1.0)) -> TrainJob:
    steps = TrainSettings(epochs=1.0, min_steps=10, max_steps=40, evals=3)
    return TrainJob(
        embedding_dim=4,
        bottom_hidden=(8,),
        top_hidden=(16, 8),
        pretrain=TrainSettings(lr_sparse=1e-2, epochs=1.0, min_steps=20, max_steps=60, evals=3),
        transfer=TransferSettings(train=steps, fractions=fractions, repeats=1, seed=5),
    )


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread: these tiny models gain nothing from more, and lose a lot when the
    machine's cores are shared (threads spin-waiting on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
