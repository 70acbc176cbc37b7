"""Users' click logs: the documented schema round-trips; malformed files are one-line InputErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.models import (
    DomainData,
    FeatureSchema,
    load_domains,
    read_click_logs,
    write_click_logs,
)
from simulator.errors import InputError

from .models_helpers import TINY_SCHEMA

SCHEMA = FeatureSchema((200, 300), num_dense=2)
HEADER = "label,sparse_0,sparse_1,dense_0,dense_1,extra\n"


def _csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "logs.csv"
    path.write_text(header + body)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path: Path, tiny_data: DomainData, suffix: str) -> None:
    path = tmp_path / f"logs{suffix}"
    logs = tiny_data.target_test
    write_click_logs(logs, path, TINY_SCHEMA)
    back = read_click_logs(path, TINY_SCHEMA)
    assert np.array_equal(back.ids, logs.ids)
    assert np.array_equal(back.labels, logs.labels)
    assert np.allclose(back.dense, logs.dense)


def test_valid_csv_maps_local_ids_to_global_keys(tmp_path: Path) -> None:
    logs = read_click_logs(_csv(tmp_path, "1,0,299,0.5,1,\n0,199,0,-2,3e2,x\n"), SCHEMA)
    assert logs.ids.tolist() == [[0, 499], [199, 200]]
    assert logs.labels.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        ("label,sparse_0,dense_0,dense_1\n", "1,0,0,0\n", "missing column 'sparse_1'"),
        (HEADER, "1,0,300,0,0,\n", r"'sparse_1' needs integer ids in \[0, 300\) \(data row 1"),
        (HEADER, "1,0,1,0,0,\n0,-1,1,0,0,\n", r"'sparse_0' .*data row 2 has -1"),
        (HEADER, "1,0.5,1,0,0,\n", "'sparse_0' needs integer ids"),
        (
            HEADER,
            "1,0,1,0,0,\n1,0,1,0,NaN,\n",
            "'dense_1' has a missing value, NaN or infinity .*row 2",
        ),
        (HEADER, "1,0,1,,0,\n", "'dense_0' has a missing"),
        (HEADER, "2,0,1,0,0,\n", "'label' must be 0 or 1"),
        (HEADER, "1,zero,1,0,0,\n", "'sparse_0' is not numeric .*'zero'"),
        (HEADER.replace("extra", "sparse_2"), "1,0,1,0,0,4\n", "'sparse_2' is not in the model"),
        (HEADER, "", "no rows"),
    ],
)
def test_malformed_logs_are_input_errors(
    tmp_path: Path, header: str, body: str, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        read_click_logs(_csv(tmp_path, body, header), SCHEMA)


def test_wrong_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"must be \.csv, \.parquet or \.pq"):
        read_click_logs(tmp_path / "logs.json", SCHEMA)
    with pytest.raises(InputError, match="not found"):
        read_click_logs(tmp_path / "absent.csv", SCHEMA)
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read as parquet"):
        read_click_logs(tmp_path / "broken.parquet", SCHEMA)


def test_load_domains_splits_target_and_ranks_by_counts(tmp_path: Path) -> None:
    source = _csv(tmp_path, "1,5,7,0,0,\n0,5,7,1,1,\n")
    target_path = tmp_path / "target.csv"
    rows = "".join(f"{i % 2},{3 if i < 15 else i},{i},0.{i},1,\n" for i in range(20))
    target_path.write_text(HEADER + rows)
    data = load_domains(source, target_path, SCHEMA, seed=0)
    assert len(data.target_pool) == 16 and len(data.target_test) == 4
    rank = data.popularity_rank
    assert rank[3] == 0  # sparse_0 id 3 is the most looked-up key in the target logs
    assert rank[5] > rank[3]
    assert np.array_equal(np.sort(rank), np.arange(SCHEMA.vocab_size))
