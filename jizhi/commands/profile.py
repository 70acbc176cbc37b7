"""`jizhi profile MODEL`: latency of the model's dense part per batch size, on this device.

Writes MODEL/profile_<device>.json (raw per-call seconds per batch size, p50, p99), which the
simulator's ranker service-time model samples from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simulator.errors import InputError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="time the model's dense part for batch sizes 1..1024 on this device",
        description=(
            "Time MODEL's dense part (TorchScript) on batches of 1, 2, 4, ... rows after warm-up; "
            "write the raw samples and percentiles to MODEL/profile_<device>.json."
        ),
    )
    parser.add_argument("model", type=Path, help="model directory written by `jizhi train`")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-batch", type=int, default=1024, help="largest batch (a power of 2)")
    parser.add_argument(
        "--min-samples", type=int, default=50, help="timed calls per size, at least"
    )
    parser.add_argument(
        "--max-samples", type=int, default=1000, help="timed calls per size, at most"
    )
    parser.add_argument("--budget-s", type=float, default=60.0, help="seconds for all sizes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--out", type=Path, help="output file (default MODEL/profile_<device>.json)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    max_batch = args.max_batch
    if max_batch < 1 or max_batch & (max_batch - 1):
        raise InputError(f"--max-batch must be a power of 2 >= 1 (got {max_batch})")
    if args.min_samples < 1 or args.max_samples < args.min_samples:
        raise InputError("--min-samples must be >= 1 and --max-samples >= --min-samples")
    if args.budget_s <= 0:
        raise InputError(f"--budget-s must be > 0 (got {args.budget_s})")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1 (got {args.threads})")

    import torch

    from serving.models import profile_dense, read_artifact, write_json_atomic

    artifact = read_artifact(args.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch here; use cpu or auto")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    schema = artifact.config.schema
    sizes = [2**i for i in range(max_batch.bit_length())]
    profile = profile_dense(
        artifact.dense_torchscript(device),
        schema.num_fields,
        artifact.config.embedding_dim,
        schema.num_dense,
        device=device,
        batch_rows=sizes,
        min_samples=args.min_samples,
        max_samples=args.max_samples,
        time_budget_s=args.budget_s,
        seed=args.seed,
    )
    out = args.out if args.out is not None else artifact.path / f"profile_{device}.json"
    write_json_atomic(out, profile.model_dump(mode="json"))
    print(f"{profile.device_name} ({profile.device}, {profile.torch_threads} torch threads)")
    print(f"{'rows':>6}  {'p50 ms':>9}  {'p99 ms':>9}  {'samples':>7}")
    for rows in profile.batch_rows:
        key = str(rows)
        print(
            f"{rows:>6}  {profile.p50_s[key] * 1e3:>9.3f}  {profile.p99_s[key] * 1e3:>9.3f}  "
            f"{len(profile.latency_s[key]):>7}"
        )
    print(f"wrote {out}")
    return 0
