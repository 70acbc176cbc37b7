"""The search space: constraints by construction, log dimensions, encode/decode, bad tuning specs."""

from __future__ import annotations

import copy
import math
import random
import statistics
from typing import Any

import pytest

from autotune.space import DimensionKind, SearchSpace
from simulator import InputError, ServingConfig, load_spec
from simulator.load import validate_spec
from tests.unit.autotune.helpers import EXAMPLES, TINY, tiny


def test_max_ongoing_covers_every_batch_in_random_points() -> None:
    space = SearchSpace(load_spec(EXAMPLES / "ctr.yaml"))
    rng = random.Random(7)
    for _ in range(500):
        config = space.decode(space.sample_point(rng))
        for stage in config.stages.values():
            assert stage.max_ongoing_requests >= stage.max_batch_size * stage.max_concurrent_batches


def test_a_batch_shape_the_spec_fixes_is_left_as_written() -> None:
    """Only the replicas are tuned: the model stage's 4-batch with 2 in flight stays (Ray warns,
    the batches wait out the timeout, and the simulator models that); a tuned batch size gets
    room for itself."""
    data = copy.deepcopy(TINY)
    data["stages"][1]["max_ongoing_requests"] = 2
    data["tuning"]["knobs"] = {"model.replicas": {"low": 1, "high": 4}}
    space = SearchSpace(validate_spec(data, source="tiny"))
    for point in ([1], [3]):
        model = space.decode(point).stages["model"]
        assert (model.replicas, model.max_batch_size, model.max_ongoing_requests) == (
            point[0],
            4,
            2,
        )
    data["tuning"]["knobs"]["model.max_batch_size"] = {"low": 1, "high": 8}
    space = SearchSpace(validate_spec(data, source="tiny"))
    model = space.decode([2, 8]).stages["model"]
    assert (model.max_batch_size, model.max_ongoing_requests) == (8, 8)


def test_log_dimensions_sample_log_uniformly() -> None:
    space = SearchSpace(tiny())
    wait = space.names.index("model.batch_wait_timeout_s")
    assert space.dimensions[wait].log
    rng = random.Random(0)
    values = [space.sample_point(rng)[wait] for _ in range(4000)]
    # Log-uniform on [0.0005, 0.01]: the median is the geometric mean 0.00224 (uniform: 0.00525).
    assert statistics.median(values) == pytest.approx(math.sqrt(0.0005 * 0.01), rel=0.08)
    assert min(values) >= 0.0005 and max(values) <= 0.01


def test_max_ongoing_is_a_headroom_dimension() -> None:
    space = SearchSpace(tiny())
    dim = space.dimensions[space.names.index("model.max_ongoing_requests")]
    assert dim.headroom is not None and (dim.low, dim.high) == (0.0, 1.0)
    assert dim.kind is DimensionKind.REAL


@pytest.mark.parametrize("seed", range(5))
def test_encode_decode_round_trip_on_tuned_knobs(seed: int) -> None:
    space = SearchSpace(tiny())
    config = space.decode(space.sample_point(random.Random(seed)))
    again = space.decode(space.encode(config))
    for path in space.names:
        stage, knob = path.split(".")
        a, b = getattr(config.stages[stage], knob), getattr(again.stages[stage], knob)
        assert a == pytest.approx(b), path


def test_encode_of_the_baseline_maps_no_cutoff_to_the_largest_rank() -> None:
    spec = load_spec(EXAMPLES / "ctr.yaml")
    space = SearchSpace(spec)
    point = space.encode(ServingConfig.from_spec(spec))
    assert point[space.names.index("features.cutoff_rank")] == 1_000_000
    assert point[space.names.index("ranker.replicas")] == 4
    assert all(isinstance(point[i], int) for i, d in enumerate(space.dimensions)
               if d.kind is DimensionKind.INTEGER)  # fmt: skip


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"knobs": {"model.batchsize": {"low": 1, "high": 8}}}, "is not STAGE.KNOB"),
        ({"knobs": {"nope.replicas": {"low": 1, "high": 8}}}, "is not STAGE.KNOB"),
        ({"knobs": {"model.replicas": {"low": 8, "high": 2}}}, "inverted range"),
        ({"knobs": {"model.replicas": {"low": 2, "high": 2}}}, "empty or inverted range"),
        ({"knobs": {"model.replicas": {"choices": [1, 2]}}}, "takes low/high"),
        ({"knobs": {"model.device": {"low": 0, "high": 1}}}, r"takes choices"),
        ({"objective": "max_rate"}, "needs max_cost_per_hour"),
        ({"objective": "min_p99"}, "needs max_cost_per_hour"),
        ({"knobs": {"front.cache_capacity": {"low": 1, "high": 9}}}, "only to a features stage"),
    ],
)
def test_bad_tuning_specs_are_one_line_input_errors(tuning: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        tiny(**tuning)
    assert "\n" not in str(info.value)
