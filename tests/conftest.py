"""Shared fixtures: the repository root, and a guard that unit tests never start Ray."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _no_ray_in_unit_tests(request: pytest.FixtureRequest) -> None:
    """Unit tests run without Ray; only tests marked `integration` may start it."""
    if request.node.get_closest_marker("integration") is None and "ray" in sys.modules:
        ray = sys.modules["ray"]
        if getattr(ray, "is_initialized", lambda: False)():
            pytest.fail("a unit test found Ray running; mark it @pytest.mark.integration")


@pytest.fixture(autouse=True, scope="session")
def controller_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Commands record deploys and tuning runs in jizhi's controller state file: in tests, one
    temporary file for the session rather than the working directory's `.jizhi/controller.json`."""
    from serving.monitoring import exporter

    path = tmp_path_factory.mktemp("controller") / "controller.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exporter, "STATE_FILE", path)
        yield path
