"""Ray Serve's rules, checked on micro-scenarios with exact event traces (SimPy style) and on
seeded runs: the router, the batcher, the max_ongoing_requests cap, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulator import simulate
from simulator.errors import InputError
from simulator.load import validate_spec

from .helpers import example, one_stage, trace_file

NO_BACKOFF = {"initial_backoff_s": 0}  # the textbook router


def _trace_run(
    tmp_path: Path,
    times: list[float],
    stage: dict[str, Any],
    seed: int = 0,
    router: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    spec = one_stage(
        stage,
        {"arrival": "trace", "trace_file": str(trace_file(tmp_path, times))},
        simulation={"requests": len(times), "warmup_requests": 0, "seed": seed},
        router=router or {},
    )
    trace: list[tuple[Any, ...]] = []
    simulate(spec, trace=trace)
    return [tuple(round(x, 6) if isinstance(x, float) else x for x in e) for e in trace]


def test_batch_closes_full_or_at_timeout_after_its_first_request(tmp_path: Path) -> None:
    stage = {
        "service": {"model": "deterministic", "seconds": 0.005},
        "max_batch_size": 3,
        "max_ongoing_requests": 3,
        "batch_wait_timeout_s": 0.010,
    }
    trace = _trace_run(tmp_path, [0.0, 0.002, 0.004, 0.020], stage)
    assert [e for e in trace if e[1] in ("start", "done", "complete")] == [
        (0.004, "start", "server", 0, (0, 1, 2)),  # full at the third request
        (0.009, "done", "server", 0, (0, 1, 2)),
        (0.009, "complete", 0),
        (0.009, "complete", 1),
        (0.009, "complete", 2),
        (0.030, "start", "server", 0, (3,)),  # alone: waits the 10 ms timeout
        (0.035, "done", "server", 0, (3,)),
        (0.035, "complete", 3),
    ]


def test_next_batch_forms_while_one_runs_and_waits_for_the_semaphore(tmp_path: Path) -> None:
    stage = {
        "service": {"model": "deterministic", "seconds": 0.010},
        "max_batch_size": 2,
        "max_ongoing_requests": 8,
        "batch_wait_timeout_s": 0.001,
        "max_concurrent_batches": 1,
    }
    trace = _trace_run(tmp_path, [0.0, 0.0005, 0.002, 0.0025], stage)
    starts = [e for e in trace if e[1] == "start"]
    # batch (2, 3) closes full at 2.5 ms but runs only when (0, 1) frees the semaphore at 10.5 ms
    assert starts == [
        (0.0005, "start", "server", 0, (0, 1)),
        (0.0105, "start", "server", 0, (2, 3)),
    ]


def test_max_ongoing_caps_the_batch_like_ray(tmp_path: Path) -> None:
    stage = {
        "service": {"model": "deterministic", "seconds": 0.010},
        "max_batch_size": 10,
        "max_ongoing_requests": 3,
        "batch_wait_timeout_s": 0.005,
    }
    trace = _trace_run(tmp_path, [0.0, 0.0001, 0.0002, 0.0003, 0.0004], stage)
    starts = [e for e in trace if e[1] == "start"]
    # the replica holds 3, so the batch never reaches 10: it waits out the 5 ms from request 0
    # (ray/serve/batching.py `wait_for_batch` breaks on the timeout or on max_batch_size only)
    assert starts[0] == (0.005, "start", "server", 0, (0, 1, 2))
    assert [e for e in trace if e[1] == "queue"] == [
        (0.0003, "queue", "server", 3),
        (0.0004, "queue", "server", 4),
    ]


def test_router_uses_free_replicas_queues_fifo_and_sheds_past_max_queued(tmp_path: Path) -> None:
    stage = {
        "service": {"model": "deterministic", "seconds": 0.010},
        "replicas": 2,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
    }
    # the textbook router: a freed slot goes to the oldest waiting request at once
    trace = _trace_run(tmp_path, [0.0, 0.001, 0.002, 0.003], stage, router=NO_BACKOFF)
    first = trace[1][4]  # the replica the router chose for request 0 (seeded coin)
    other = 1 - first
    assert trace == [
        (0.0, "arrive", 0),
        (0.0, "assign", "server", 0, first),
        (0.0, "start", "server", first, (0,)),
        (0.001, "arrive", 1),
        (0.001, "assign", "server", 1, other),  # the only replica with room
        (0.001, "start", "server", other, (1,)),
        (0.002, "arrive", 2),
        (0.002, "queue", "server", 2),
        (0.003, "arrive", 3),
        (0.003, "shed", "server", 3),  # max_queued_requests = 1 already waiting: HTTP 503
        (0.01, "done", "server", first, (0,)),
        (0.01, "assign", "server", 2, first),
        (0.01, "start", "server", first, (2,)),
        (0.01, "complete", 0),
        (0.011, "done", "server", other, (1,)),
        (0.011, "complete", 1),
        (0.02, "done", "server", first, (2,)),
        (0.02, "complete", 2),
    ]


def test_a_freed_slot_waits_for_the_routers_next_retry(tmp_path: Path) -> None:
    """Ray's routing task tries, tries again, then sleeps 25 ms, 50 ms, 100 ms … (at most 0.5 s)
    and nothing wakes it when a replica frees a slot; after placing a request it starts over."""
    stage = {"service": {"model": "deterministic", "seconds": 0.010}, "max_ongoing_requests": 1}
    trace = _trace_run(tmp_path, [0.0, 0.001, 0.002], stage)
    starts = [(e[0], e[4]) for e in trace if e[1] == "start"]
    # request 1 waits from 1 ms and its task retries at 26 ms: the slot freed at 10 ms sat empty.
    # Request 2's own task (one per waiting request, at most 2 per replica) retries at 27, 77,
    # 177 ms; the slot freed at 36 ms waits for the retry at 77 ms.
    assert starts == [(0.0, (0,)), (0.026, (1,)), (0.077, (2,))]


def test_power_of_two_choices_prefers_the_less_loaded_replica(tmp_path: Path) -> None:
    # Replica loads differ only through the router; with 2 replicas p2c always sees both.
    stage = {
        "service": {"model": "deterministic", "seconds": 0.050},
        "replicas": 2,
        "max_ongoing_requests": 4,
        "max_concurrent_batches": 4,
    }
    trace = _trace_run(tmp_path, [0.0, 0.001, 0.002, 0.003], stage, seed=5)
    replicas = [e[4] for e in trace if e[1] == "assign"]
    assert replicas[1] != replicas[0]  # 0 vs 1 ongoing
    assert sorted(replicas[2:]) == [0, 1]  # balanced again


def test_under_saturation_batches_fill_up_to_max_batch_size() -> None:
    # capacity ≈ 16 / (1 ms + 16 × 0.5 ms) = 1778 req/s per replica, offered 3000 on one replica
    spec = one_stage(
        {
            "service": {"model": "linear", "base_s": 0.001, "per_row_s": 0.0005},
            "max_batch_size": 16,
            "max_ongoing_requests": 16,
            "max_queued_requests": 100,
        },
        {"arrival": "poisson", "rate_rps": 3000},
        router=NO_BACKOFF,  # with Ray's back-off the replica idles between retries
    )
    server = simulate(spec, requests=20_000, seed=3).stages[0]
    assert server.utilisation > 0.99
    assert server.mean_batch_size > 15.9  # → 16


def test_max_ongoing_caps_batches_under_saturation() -> None:
    spec = example(
        "ctr.yaml",
        "workload.rate_rps=3000",
        "ranker.replicas=2",
        "ranker.max_batch_size=32",
        "ranker.max_ongoing_requests=8",
        "ranker.max_queued_requests=200",
    )
    report = simulate(spec, requests=20_000, seed=3)
    assert report.stage("ranker").mean_batch_size == pytest.approx(8.0, abs=0.2)
    assert any("max_ongoing_requests" in w for w in report.warnings)


def test_under_light_load_a_lone_request_waits_the_batch_timeout() -> None:
    spec = example(
        "ctr.yaml",
        "workload.rate_rps=2",
        "ranker.replicas=1",
        "ranker.max_batch_size=8",
        "ranker.batch_wait_timeout_s=0.02",
    )
    ranker = simulate(spec, requests=2000, warmup_requests=10, seed=4).stage("ranker")
    # another arrival within the 20 ms window has probability 1 - exp(-2 × 0.02) ≈ 0.04
    assert ranker.mean_batch_size == pytest.approx(1.04, abs=0.02)
    assert ranker.queue_wait.p50_s == pytest.approx(0.02, abs=1e-9)


def test_same_seed_same_report_other_seed_other_report() -> None:
    spec = example("ctr.yaml")

    def run(seed: int) -> dict[str, Any]:
        result = simulate(spec, requests=3000, warmup_requests=300, seed=seed).to_dict()
        result.pop("wall_s")
        return result

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_warmup_is_excluded_from_statistics() -> None:
    spec = example("queueing/mm1.yaml")
    report = simulate(spec, requests=1000, warmup_requests=500, seed=1)
    assert report.latency.count == 1000
    assert report.arrived_total >= 1500


def test_gpu_device_uses_the_gpu_variant_and_its_price() -> None:
    cpu = simulate(example("ctr.yaml"), requests=3000, seed=2)
    gpu = simulate(
        example("ctr.yaml", "ranker.device=gpu", "ranker.replicas=1"), requests=3000, seed=2
    )
    assert gpu.stage("ranker").cost_per_hour == pytest.approx(0.048 + 2.48)
    assert cpu.stage("ranker").cost_per_hour == pytest.approx(4 * 2.0 * 0.048)
    assert gpu.stage("ranker").latency.mean_s < cpu.stage("ranker").latency.mean_s


def test_cutoff_skips_keys_by_popularity_rank() -> None:
    spec = example("ctr.yaml", "features.cutoff_rank=1000")
    cache = simulate(spec, requests=3000, seed=2).stage("features").cache
    assert cache is not None
    # P(rank >= 1000) under Zipf(1.0) over 10^6 keys = 1 - H(1000)/H(10^6) ≈ 0.48
    assert cache.cut_fraction == pytest.approx(0.48, abs=0.01)
    assert cache.lookups <= cache.keys_requested - cache.keys_cut


def test_features_in_ranker_removes_a_deployment_and_a_hop() -> None:
    separate = simulate(example("ctr.yaml"), requests=4000, seed=6)
    fused = simulate(example("ctr.yaml", "features.in_ranker=true"), requests=4000, seed=6)
    assert [s.name for s in fused.stages] == ["ingress", "ranker"]
    assert fused.cost_per_hour == pytest.approx(separate.cost_per_hour - 4 * 1.0 * 0.048)
    cache = fused.stage("ranker").cache
    assert cache is not None and cache.lookups > 0  # the ranker's replicas hold the caches


def test_ingress_in_ranker_runs_each_requests_handler_on_the_ranker_replicas() -> None:
    """An ingress with in_ranker has no deployment or hop: its handler (1 ms) runs on the ranker's
    replica for every request, next to the ranker's own 2 ms."""

    def spec(fused: bool) -> Any:
        return validate_spec(
            {
                "name": "t",
                "workload": {"rate_rps": 100},
                "overhead": {"hop": {"model": "deterministic", "seconds": 0.005}},
                "stages": [
                    {"name": "ingress", "service": {"model": "deterministic", "seconds": 0.001},
                     "in_ranker": fused, "cost_per_replica_hour": 1.0},
                    {"name": "ranker", "service": {"model": "deterministic", "seconds": 0.002},
                     "cost_per_replica_hour": 2.0},
                ],
                "slo": {"p99_s": 1.0},
            },
            source="test",
        )  # fmt: skip

    apart = simulate(spec(False), requests=3000, seed=4)
    fused = simulate(spec(True), requests=3000, seed=4)
    assert [s.name for s in fused.stages] == ["ranker"] and fused.cost_per_hour == 2.0
    assert fused.stage("ranker").latency.p50_s == pytest.approx(0.003)  # 1 ms + 2 ms, no queue
    ranker = fused.stage("ranker")
    assert ranker.utilisation == pytest.approx(0.003 * ranker.arrival_rate_rps, rel=0.02)
    assert apart.latency.p50_s - fused.latency.p50_s == pytest.approx(0.005, abs=1e-4)  # the hop


def test_in_ranker_on_the_last_stage_is_rejected() -> None:
    with pytest.raises(InputError, match="no stage follows it"):
        example("ctr.yaml", "ranker.in_ranker=true")
