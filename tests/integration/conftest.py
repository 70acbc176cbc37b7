"""One Ray head and one deployment of the example for the whole integration session: starting
them costs about a minute on 2 cores. Tests that change the deployment leave it serving `SMALL`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jizhi.cli import main
from serving import cluster

from .services import EXAMPLE_SPEC, SMALL


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained by `jizhi train` (seconds on 2 cores)."""
    out = tmp_path_factory.mktemp("model") / "ctr"
    args = [
        "train", "--out", str(out), "--vocab-size", "20000", "--source-rows", "20000",
        "--target-rows", "5000", "--test-rows", "5000", "--no-compare", "--quiet", "--threads", "1",
    ]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def served(model_dir: Path) -> Iterator[Path]:
    """The example served by `jizhi serve` on a loopback Ray head that this session starts."""
    assert not cluster.head_running(), "a Ray head is already running on 127.0.0.1:8265"
    try:
        assert main(["serve", EXAMPLE_SPEC, "--model", str(model_dir), *SMALL]) == 0
        yield model_dir
    finally:
        main(["serve", "--stop"])
