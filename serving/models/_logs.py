"""Users' own click logs: Parquet or CSV in one documented schema (docs/models.md), validated.

Columns: `label` (0 or 1), `sparse_0` .. `sparse_{F-1}` (integer id within that field's
vocabulary, 0-based), `dense_0` .. `dense_{Dd-1}` (finite numbers). Other columns are ignored.
Anything else is an InputError naming the file, the column and the first bad row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet
from numpy.typing import NDArray

from serving.models._data import ClickLogs, DomainData, popularity_from_counts
from serving.models._model import FeatureSchema
from simulator.errors import InputError

__all__ = ["load_domains", "read_click_logs", "write_click_logs"]

_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: Path) -> str:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: click logs must be .csv, .parquet or .pq files")
    return kind


def _first_bad(mask: NDArray[np.bool_]) -> int:
    """1-based data row (header not counted) of the first True."""
    return int(np.argmax(mask)) + 1


def _column(table: pa.Table, path: Path, name: str) -> NDArray[np.float64]:
    column = table.column(name)
    kind = column.type
    if pa.types.is_null(kind):  # every value empty
        raise InputError(f"{path}: column '{name}' has a missing value (first at data row 1)")
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        texts = column.to_pylist()
        row = next((i for i, v in enumerate(texts) if not _is_number(v)), 0) + 1
        raise InputError(
            f"{path}: column '{name}' is not numeric (data row {row} has {texts[row - 1]!r})"
        )
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values) | column.is_null().to_numpy(zero_copy_only=False)
    if bad.any():
        raise InputError(
            f"{path}: column '{name}' has a missing value, NaN or infinity "
            f"(first at data row {_first_bad(bad)}); every value must be a finite number"
        )
    return values


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def read_click_logs(path: Path, schema: FeatureSchema) -> ClickLogs:
    """Read and validate one log file into global-key-id form for `schema`."""
    kind = _format(path)
    if not path.is_file():
        raise InputError(f"{path}: click-log file not found")
    try:
        table = pa_csv.read_csv(str(path)) if kind == "csv" else pa_parquet.read_table(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from None
    need = ("label", *schema.sparse_columns, *schema.dense_columns)
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: missing column '{missing[0]}'; the schema needs label, "
            f"sparse_0..sparse_{schema.num_fields - 1}"
            + (f", dense_0..dense_{schema.num_dense - 1}" if schema.num_dense else "")
        )
    extra = sorted(
        c for c in table.column_names if c.startswith(("sparse_", "dense_")) and c not in need
    )
    if extra:
        raise InputError(
            f"{path}: column '{extra[0]}' is not in the model's schema "
            f"({schema.num_fields} sparse fields, {schema.num_dense} dense features)"
        )
    if table.num_rows == 0:
        raise InputError(f"{path}: no rows")

    labels = _column(table, path, "label")
    bad = (labels != 0.0) & (labels != 1.0)
    if bad.any():
        raise InputError(
            f"{path}: column 'label' must be 0 or 1 "
            f"(data row {_first_bad(bad)} has {labels[bad][0]:g})"
        )
    ids = np.empty((table.num_rows, schema.num_fields), dtype=np.int64)
    for f, (name, vocab) in enumerate(
        zip(schema.sparse_columns, schema.field_vocab_sizes, strict=True)
    ):
        values = _column(table, path, name)
        bad = (values != np.floor(values)) | (values < 0) | (values >= vocab)
        if bad.any():
            raise InputError(
                f"{path}: column '{name}' needs integer ids in [0, {vocab}) "
                f"(data row {_first_bad(bad)} has {values[bad][0]:g})"
            )
        ids[:, f] = values.astype(np.int64) + schema.offsets[f]
    dense = np.empty((table.num_rows, schema.num_dense), dtype=np.float32)
    for j, name in enumerate(schema.dense_columns):
        dense[:, j] = _column(table, path, name)
    return ClickLogs(ids, dense, labels.astype(np.float32))


def write_click_logs(logs: ClickLogs, path: Path, schema: FeatureSchema) -> None:
    """Write `logs` in the schema `read_click_logs` reads (format from the file suffix)."""
    kind = _format(path)
    columns: dict[str, NDArray[np.generic]] = {"label": logs.labels.astype(np.int8)}
    local = logs.ids - schema.offsets
    for f, name in enumerate(schema.sparse_columns):
        columns[name] = local[:, f]
    for j, name in enumerate(schema.dense_columns):
        columns[name] = logs.dense[:, j]
    table = pa.Table.from_pydict(columns)
    if kind == "csv":
        pa_csv.write_csv(table, str(path))
    else:
        pa_parquet.write_table(table, str(path))


def load_domains(
    source: Path, target: Path, schema: FeatureSchema, seed: int, test_fraction: float = 0.2
) -> DomainData:
    """User logs as training data: `target` is split (seeded) into a labelled pool and a test set.

    Popularity ranks come from lookup counts in the target logs (source counts break ties).
    """
    source_logs = read_click_logs(source, schema)
    target_logs = read_click_logs(target, schema)
    if len(target_logs) < 10:
        raise InputError(f"{target}: needs at least 10 rows to hold out a test set")
    order = np.random.default_rng(seed).permutation(len(target_logs))
    test = max(2, round(test_fraction * len(target_logs)))
    return DomainData(
        schema=schema,
        source=source_logs,
        target_pool=target_logs.take(order[test:]),
        target_test=target_logs.take(order[:test]),
        popularity_rank=popularity_from_counts(schema, target_logs.ids, source_logs.ids),
        provenance={
            "kind": "logs",
            "source_logs": str(source),
            "target_logs": str(target),
            "seed": seed,
            "test_fraction": test_fraction,
            "source_rows": len(source_logs),
            "target_rows": len(target_logs),
        },
    )
