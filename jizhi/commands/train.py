"""`jizhi train [--spec SPEC] [--out DIR] ...`: the transfer-learned ranker and its model directory.

Pre-trains on a source domain, compares transfer strategies on the target at several label
fractions, trains the served model (automatic freeze depth, all target labels) and writes the
model directory with its training report and quality-vs-cut-off curve (docs/models.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.errors import InputError

if TYPE_CHECKING:
    from serving.models import DomainData, FeatureSchema

__all__ = ["register"]

# Defaults: a CTR example with 1,000,000 keys over 8 sparse fields, Zipf 1.0, 4 dense features.
DEFAULT_VOCAB = 1_000_000
DEFAULT_FIELDS = 8
DEFAULT_DENSE = 4
DEFAULT_ALPHA = 1.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the transfer-learned ranker and write a model directory",
        description=(
            "Pre-train on a source domain, compare transfer strategies on the target, and write "
            "the served model (dense part, embedding table, metadata, report, curves) to --out. "
            "Without logs, both domains are generated from --seed."
        ),
    )
    parser.add_argument("--spec", type=Path, help="pipeline spec: vocabulary, Zipf, field counts")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/model"), help="model directory (default runs/model)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model directory")
    data = parser.add_argument_group("data (flags override the spec's workload)")
    data.add_argument("--source-logs", type=Path, help="source-domain click logs (.csv/.parquet)")
    data.add_argument("--target-logs", type=Path, help="target-domain click logs (.csv/.parquet)")
    data.add_argument("--vocab-size", type=int, help=f"total keys (default {DEFAULT_VOCAB:,})")
    data.add_argument("--zipf-alpha", type=float, help=f"key popularity (default {DEFAULT_ALPHA})")
    data.add_argument("--sparse-fields", type=int, help=f"default {DEFAULT_FIELDS}")
    data.add_argument("--dense-features", type=int, help=f"default {DEFAULT_DENSE}")
    data.add_argument(
        "--field-vocab",
        help="per-field vocabulary sizes, comma-separated (default: --vocab-size split evenly)",
    )
    data.add_argument(
        "--source-rows",
        type=int,
        default=2_000_000,
        help="generated source rows (default 2,000,000)",
    )
    data.add_argument(
        "--target-rows",
        type=int,
        default=100_000,
        help="generated labelled target rows (default 100,000)",
    )
    data.add_argument(
        "--test-rows", type=int, default=50_000, help="generated target test rows (default 50,000)"
    )
    training = parser.add_argument_group("training")
    training.add_argument("--embedding-dim", type=int, default=16, help="default 16")
    training.add_argument(
        "--fractions", default="0.01,0.1,1", help="target label fractions (default 0.01,0.1,1)"
    )
    training.add_argument(
        "--repeats", type=int, default=3, help="repetitions (seeds) per fraction (default 3)"
    )
    training.add_argument("--no-compare", action="store_true", help="skip the strategy comparison")
    training.add_argument("--seed", type=int, default=0, help="seed of data, weights and splits")
    training.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    training.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model is small, and extra threads lose a lot "
        "when cores are shared)",
    )
    training.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"--{name} must be >= 1 (got {value})")


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--fractions: expected comma-separated numbers (got {text!r})") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise InputError(f"--fractions: every fraction must be in (0, 1] (got {text!r})")
    return tuple(sorted(set(values)))


def _schema(args: argparse.Namespace) -> tuple[FeatureSchema, float]:
    """Vocabulary, Zipf exponent and field counts: flags, else the spec's workload, else defaults."""
    from serving.models import FeatureSchema

    vocab, alpha, fields, dense = DEFAULT_VOCAB, DEFAULT_ALPHA, DEFAULT_FIELDS, DEFAULT_DENSE
    if args.spec is not None:
        from simulator import load_spec

        workload = load_spec(args.spec).workload
        if workload.sparse_features_per_row < 1:
            raise InputError(
                f"{args.spec}: workload.sparse_features_per_row is 0; the ranker needs >= 1 field"
            )
        vocab, alpha = workload.vocab_size, workload.zipf_alpha
        fields, dense = workload.sparse_features_per_row, workload.dense_features_per_row
    vocab = args.vocab_size if args.vocab_size is not None else vocab
    alpha = args.zipf_alpha if args.zipf_alpha is not None else alpha
    fields = args.sparse_fields if args.sparse_fields is not None else fields
    dense = args.dense_features if args.dense_features is not None else dense
    _positive("vocab-size", vocab)
    _positive("sparse-fields", fields)
    if dense < 0:
        raise InputError(f"--dense-features must be >= 0 (got {dense})")
    if alpha <= 0:
        raise InputError(f"--zipf-alpha must be > 0 (got {alpha})")
    if args.field_vocab is not None:
        return FeatureSchema(_field_vocab(args.field_vocab), dense), alpha
    if vocab < fields:
        raise InputError(f"--vocab-size ({vocab}) must be at least the number of fields ({fields})")
    return FeatureSchema.split(vocab, fields, dense), alpha


def _field_vocab(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"--field-vocab: expected comma-separated whole numbers ({text!r})"
        ) from None
    if not sizes or min(sizes) < 1 or sum(sizes) >= 2**31:
        raise InputError(f"--field-vocab: sizes must be >= 1 and sum to < 2**31 ({text!r})")
    return sizes


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch here; use cpu or auto")
    return choice


def _data(args: argparse.Namespace, schema: FeatureSchema, alpha: float) -> DomainData:
    from serving.models import GeneratorConfig, generate_domains, load_domains

    if (args.source_logs is None) != (args.target_logs is None):
        raise InputError("--source-logs and --target-logs go together: give both or neither")
    if args.source_logs is not None:
        return load_domains(args.source_logs, args.target_logs, schema, args.seed)
    return generate_domains(
        GeneratorConfig(
            schema,
            zipf_alpha=alpha,
            source_rows=args.source_rows,
            target_rows=args.target_rows,
            test_rows=args.test_rows,
            seed=args.seed,
        )
    )


def run(args: argparse.Namespace) -> int:
    for name in ("source_rows", "target_rows", "test_rows", "embedding_dim", "repeats", "threads"):
        _positive(name.replace("_", "-"), getattr(args, name))
    fractions = _fractions(args.fractions)
    schema, alpha = _schema(args)

    import torch

    from serving.models import (
        TrainJob,
        TrainSettings,
        TransferSettings,
        check_output_dir,
        format_summary,
        train_pipeline,
        write_artifact,
    )

    check_output_dir(args.out, args.force)
    device = _device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = _data(args, schema, alpha)
    job = TrainJob(
        embedding_dim=args.embedding_dim,
        transfer=TransferSettings(
            train=TrainSettings(), fractions=fractions, repeats=args.repeats, seed=args.seed
        ),
        compare=not args.no_compare,
        device=device,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    outcome = train_pipeline(data, job)
    artifact = write_artifact(
        args.out,
        outcome.model,
        data.popularity_rank,
        quality=outcome.quality,
        report=outcome.report,
        training=outcome.training,
        overwrite=args.force,
    )
    report = outcome.report
    pre = report["pretrain"]
    final = report["final_model"]
    print(
        f"pre-trained on {len(data.source):,} source rows: val AUC {pre['source_val_auc']:.4f}, "
        f"target test AUC before adaptation {pre['target_test_auc_without_adaptation']:.4f}"
    )
    print(format_summary(report))
    print(
        f"served model: auto_freeze depth {final['freeze_depth']}, test AUC {final['test_auc']:.4f}"
        f", log-loss {final['test_logloss']:.4f}"
    )
    print(f"wrote {artifact.path} in {time.perf_counter() - started:.0f} s on {device}")
    return 0
