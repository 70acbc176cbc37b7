"""Session fixtures for the serving.models tests: tiny data, one trained pipeline, its artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.models import (
    DomainData,
    ModelArtifact,
    TrainOutcome,
    generate_domains,
    train_pipeline,
    write_artifact,
)

from .models_helpers import one_torch_thread, tiny_config, tiny_job


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_data() -> DomainData:
    return generate_domains(tiny_config())


@pytest.fixture(scope="session")
def tiny_outcome(tiny_data: DomainData) -> TrainOutcome:
    with one_torch_thread():
        return train_pipeline(tiny_data, tiny_job())


@pytest.fixture(scope="session")
def tiny_artifact(
    tiny_data: DomainData, tiny_outcome: TrainOutcome, tmp_path_factory: pytest.TempPathFactory
) -> ModelArtifact:
    out: Path = tmp_path_factory.mktemp("artifact") / "model"
    return write_artifact(
        out,
        tiny_outcome.model,
        tiny_data.popularity_rank,
        quality=tiny_outcome.quality,
        report=tiny_outcome.report,
        training=tiny_outcome.training,
    )
