"""Latency of the dense part per batch size, on this device and thread count.

Each sample is one call as a ranker replica makes it: inputs start as float32 tensors in host
memory, the scores end in host memory (on a GPU the copies both ways are inside the sample). The
simulator's ranker service-time model samples from these raw values.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from serving.models._formats import LatencyProfile

__all__ = ["DEFAULT_BATCH_ROWS", "device_name", "profile_dense"]

DEFAULT_BATCH_ROWS = tuple(2**i for i in range(11))  # 1, 2, 4, ..., 1024


def device_name(device: str) -> str:
    """A human-readable name: the GPU's, or the CPU model from /proc/cpuinfo."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_dense(
    module: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_fields: int,
    embedding_dim: int,
    num_dense: int,
    *,
    device: str,
    batch_rows: Sequence[int] = DEFAULT_BATCH_ROWS,
    min_samples: int = 50,
    max_samples: int = 1000,
    time_budget_s: float = 60.0,
    warmup: int = 10,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyProfile:
    """Time `module(pooled, dense)` (already on `device`) for every batch size.

    Every size gets `warmup` untimed calls, then at least `min_samples` timed ones, and more (up
    to `max_samples`) while its share of `time_budget_s` lasts.
    """
    if min_samples < 1 or max_samples < min_samples:
        raise ValueError("need 1 <= min_samples <= max_samples")
    sizes = sorted(set(batch_rows))
    if not sizes or sizes[0] < 1:
        raise ValueError("batch sizes must be >= 1")
    cuda = device == "cuda"
    share = time_budget_s / len(sizes)
    generator = torch.Generator().manual_seed(seed)
    latency: dict[str, list[float]] = {}
    with torch.inference_mode():
        for rows in sizes:
            pooled = torch.randn(rows, num_fields, embedding_dim, generator=generator)
            dense = torch.randn(rows, num_dense, generator=generator)
            if cuda:
                pooled, dense = pooled.pin_memory(), dense.pin_memory()

            def call(pooled: torch.Tensor = pooled, dense: torch.Tensor = dense) -> None:
                scores = module(
                    pooled.to(device, non_blocking=True), dense.to(device, non_blocking=True)
                )
                scores.to("cpu")  # synchronises with the device

            for _ in range(warmup):
                call()
            samples: list[float] = []
            started = clock()
            while len(samples) < min_samples or (
                len(samples) < max_samples and clock() - started < share
            ):
                begin = clock()
                call()
                samples.append(clock() - begin)
            latency[str(rows)] = [round(s, 9) for s in samples]
    return LatencyProfile(
        device="cuda" if cuda else "cpu",
        device_name=device_name(device),
        torch_threads=torch.get_num_threads(),
        batch_rows=sizes,
        latency_s=latency,
        p50_s={k: float(np.percentile(v, 50)) for k, v in latency.items()},
        p99_s={k: float(np.percentile(v, 99)) for k, v in latency.items()},
    )
