"""The shared-node CPU model (`spec.node`, simulator/node.py): left out, nothing changes; set, the
proxy, hops and batches share the cores — checked on exact traces, against queueing theory
(M/M/1, M/D/1), at saturation (cores × speed / CPU per request) and against the model without it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from jizhi.cli import main
from simulator import InputError, PipelineSpec, SimulationReport, simulate
from simulator.load import validate_spec

from .helpers import EXAMPLES, example, trace_file


def _det(seconds: float) -> dict[str, Any]:
    return {"model": "deterministic", "seconds": seconds}


def _spec(
    stages: list[dict[str, Any]],
    workload: dict[str, Any],
    node: dict[str, Any] | None,
    overhead: dict[str, Any] | None = None,
    **sections: Any,
) -> PipelineSpec:
    data: dict[str, Any] = {
        "name": "t",
        "workload": workload,
        "stages": stages,
        "overhead": overhead or {},
        "slo": {"p99_s": 1.0},
        "router": {"initial_backoff_s": 0},  # the textbook router: no retry back-off
        **sections,
    }
    if node is not None:
        data["node"] = node
    return validate_spec(data, source="test")


# --- (a) left out: today's model, bit for bit ------------------------------------------------

# Regression anchor: examples/ctr.yaml, requests=4000, warm-up 400, seed 7, simulated with the
# engine as it was just before the node model was added (computed then, hard-coded here). The hash
# covers every field of `to_dict()` but `wall_s` and the new `node`; the numbers below are the same
# run, readable. If this fails, specs without `node` no longer simulate as they did: update it only
# for a deliberate change of the model (or a numpy upgrade that changes its generators).
_ANCHOR_SHA256 = "ee8f9651de5b73862e101b5fa1f45087b37495d730c46f5ededb5dad518179be"
_ANCHOR = {
    "latency.mean_s": 0.012010332446499305,
    "latency.p99_s": 0.015953041208928712,
    "throughput_rps": 1465.551813014529,
    "window_s": 2.7252533581768392,
    "arrived_total": 4410,
    "completed_total": 4401,
}
_ANCHOR_STAGES = {  # latency mean, utilisation, batches
    "ingress": (0.0003822921911986235, 0.2648935208179654, 3999),
    "features": (0.001355512447083854, 0.4433188454422897, 3998),
    "ranker": (0.007964451003718894, 0.5555312762970006, 1424),
}
_ANCHOR_FEATURE_HITS = 437959


def test_without_node_the_report_is_bit_identical_to_the_anchor() -> None:
    report = simulate(example("ctr.yaml"), requests=4000, warmup_requests=400, seed=7)
    assert report.node is None
    data = report.to_dict()
    assert data.pop("node") is None
    data.pop("wall_s")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    got = {
        "latency.mean_s": report.latency.mean_s,
        "latency.p99_s": report.latency.p99_s,
        "throughput_rps": report.throughput_rps,
        "window_s": report.window_s,
        "arrived_total": report.arrived_total,
        "completed_total": report.completed_total,
    }
    assert got == _ANCHOR
    stages = {s.name: (s.latency.mean_s, s.utilisation, s.batches) for s in report.stages}
    assert stages == _ANCHOR_STAGES
    cache = report.stage("features").cache
    assert cache is not None and cache.hits == _ANCHOR_FEATURE_HITS
    assert digest == _ANCHOR_SHA256


# --- exact traces ------------------------------------------------------------------------------


def _trace(tmp_path: Path, times: list[float], spec_args: dict[str, Any]) -> list[tuple[Any, ...]]:
    workload = {"arrival": "trace", "trace_file": str(trace_file(tmp_path, times))}
    sim = {"requests": len(times), "warmup_requests": 0, "seed": 0}
    spec = _spec(workload=workload, simulation=sim, **spec_args)
    trace: list[tuple[Any, ...]] = []
    simulate(spec, trace=trace)
    return [tuple(round(x, 6) if isinstance(x, float) else x for x in e) for e in trace]


def test_proxy_and_batches_wait_for_the_one_core(tmp_path: Path) -> None:
    """Two replicas but one core: the second batch runs after the first; the proxy's work and the
    responses take the same core (proxy 1 ms, batch 4 ms, response 0.5 ms)."""
    trace = _trace(
        tmp_path,
        [0.0, 0.0],
        {
            "stages": [{"name": "s", "service": _det(0.004), "replicas": 2}],
            "node": {"cores": 1},
            "overhead": {"proxy": _det(0.001), "response": _det(0.0005)},
        },
    )
    events = [(e[0], e[1], e[-1]) for e in trace if e[1] in ("start", "done", "complete")]
    assert events == [
        (0.001, "start", (0,)),  # the proxy handled request 0 on the core from 0 to 1 ms
        (0.002, "start", (1,)),  # request 1's proxy work held the core until 2 ms
        (0.006, "done", (0,)),  # batch 0 got the core at 2 ms
        (0.01, "done", (1,)),  # batch 1 waited for it until 6 ms
        (0.0105, "complete", 0),  # response 0 waited for batch 1's core
        (0.011, "complete", 1),
    ]


def test_a_response_goes_ahead_of_requests_the_proxy_has_not_begun(tmp_path: Path) -> None:
    """Proxy 1 ms each way, batch 2 ms, cores to spare: request 0's response (ready at 3 ms, proxy
    busy with request 1 until 3.5 ms) is handled before request 2, which came at 2.9 ms."""
    trace = _trace(
        tmp_path,
        [0.0, 0.0025, 0.0029],
        {
            "stages": [{"name": "s", "service": _det(0.002), "replicas": 3}],
            "node": {"cores": 4},
            "overhead": {"proxy": _det(0.001), "response": _det(0.001)},
        },
    )
    assert [e for e in trace if e[1] == "complete"] == [
        (0.0045, "complete", 0),  # FIFO would put request 2's 1 ms first: 5.5 ms
        (0.0065, "complete", 1),
        (0.0085, "complete", 2),
    ]


def test_a_replica_runs_its_work_and_its_calls_one_piece_at_a_time(tmp_path: Path) -> None:
    """Cores to spare, but one front replica: its own work (1 ms) and the handle calls it makes
    (2 ms each, the caller's CPU) run on its one thread, one piece at a time, FIFO."""
    trace = _trace(
        tmp_path,
        [0.0, 0.0],
        {
            "stages": [
                {"name": "front", "service": _det(0.001), "replicas": 1},
                {"name": "back", "service": _det(0.004), "replicas": 2},
            ],
            "node": {"cores": 4},
            "overhead": {"hop": _det(0.002)},
        },
    )
    front_done = [(e[0], e[-1]) for e in trace if e[1] == "done" and e[2] == "front"]
    assert front_done == [(0.001, (0,)), (0.002, (1,))]
    # request 0's call waits for request 1's own work (1 to 2 ms) and runs 2 to 4 ms; request 1's
    # call runs 4 to 6 ms. With a core per call instead, the back stage would start at 3 and 4 ms.
    back_start = [(e[0], e[-1]) for e in trace if e[1] == "start" and e[2] == "back"]
    assert back_start == [(0.004, (0,)), (0.006, (1,))]
    assert [(e[0], e[2]) for e in trace if e[1] == "complete"] == [(0.008, 0), (0.01, 1)]


# --- (b) one core, exponential service: the same queue as M/M/1 --------------------------------


@pytest.mark.parametrize("replicas", [1, 4])
def test_one_core_is_an_mm1_queue_whatever_the_replicas(replicas: int) -> None:
    """Four replicas on one core are one M/M/1 server (work-conserving, order-blind exponential
    service); without the node they would be M/M/4, whose mean wait is 0.03 ms, not 4 ms."""
    rho, mu = 0.8, 1000.0  # examples/queueing/mm1.yaml: exponential service, mean 1 ms
    spec = example(
        "queueing/mm1.yaml",
        f"workload.rate_rps={rho * mu}",
        f"server.replicas={replicas}",
        "node.cores=1",
    )
    report = simulate(spec, requests=200_000, warmup_requests=20_000, seed=21)
    theory = rho / (mu - rho * mu)  # 4 ms
    wait = report.latency.mean_s - 1 / mu  # end to end minus the mean service: router + core
    assert wait == pytest.approx(theory, rel=0.05)
    assert report.node is not None and report.node.cpu_utilisation == pytest.approx(rho, rel=0.02)


# --- (c) saturation: cores × speed / CPU per request -------------------------------------------


def _known_cpu_pipeline(rate: float, **node: Any) -> PipelineSpec:
    # CPU per request: proxy 1 + stage a 2 + hop 1 + stage b 3.5 + response 0.5 = 8 ms
    return _spec(
        stages=[
            {"name": "a", "service": _det(0.002), "replicas": 2},
            {"name": "b", "service": _det(0.0035), "replicas": 2},
        ],
        workload={"rate_rps": rate},
        node={"cores": 2, "speed": 0.5, **node},
        overhead={"proxy": _det(0.001), "hop": _det(0.001), "response": _det(0.0005)},
    )


def test_overloaded_node_completes_cores_times_speed_over_cpu_per_request() -> None:
    cpu_per_request = 0.008
    capacity = 2 * 0.5 / cpu_per_request  # 125 req/s; without the node, 2 replicas of 3.5 ms: 571
    report = simulate(
        _known_cpu_pipeline(3 * capacity), requests=6000, warmup_requests=2000, seed=3
    )
    assert report.throughput_rps == pytest.approx(capacity, rel=0.03)
    assert report.node is not None
    assert report.node.cpu_utilisation == pytest.approx(1.0, abs=0.01)
    assert report.node.cpu_seconds_per_request == pytest.approx(cpu_per_request, rel=0.03)


def test_below_saturation_the_node_keeps_up() -> None:
    report = simulate(_known_cpu_pipeline(60.0), requests=6000, warmup_requests=500, seed=3)
    assert report.throughput_rps == pytest.approx(60.0, rel=0.05)
    assert report.node is not None
    assert report.node.cpu_utilisation == pytest.approx(60 * 0.008 / 0.5 / 2, rel=0.05)  # 0.48


# --- (d) the proxy is an M/D/1 server ----------------------------------------------------------


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_proxy_is_an_md1_server(rho: float) -> None:
    p = 0.001
    spec = _spec(
        stages=[{"name": "s", "service": {"model": "exponential", "mean_s": 0.002}, "replicas": 8}],
        workload={"rate_rps": rho / p},
        node={"cores": 64},
        overhead={"proxy": _det(p)},
    )
    report = simulate(spec, requests=200_000, warmup_requests=10_000, seed=5)
    assert report.node is not None
    assert report.node.proxy_utilisation == pytest.approx(rho, rel=0.02)
    theory = rho * p / (2 * (1 - rho))  # Pollaczek–Khinchine: 0.5 ms at 0.5, 2 ms at 0.8
    assert report.node.proxy_mean_queue_wait_s == pytest.approx(theory, rel=0.05)


# --- (e) many cores: the model without the node ------------------------------------------------


def test_many_cores_and_a_wide_proxy_match_the_model_without_node() -> None:
    """Hops cost no CPU here: with a node, a hop is CPU on the calling replica's one thread (the
    example's 0.4 ms hops would load its two Ingress replicas to ~90 % at 1500 req/s)."""

    def free_hops(spec: PipelineSpec) -> PipelineSpec:
        data = spec.model_dump(mode="json", exclude_none=True)
        data["overhead"]["hop"] = _det(0.0)
        return validate_spec(data, source="test")

    plain = simulate(free_hops(example("ctr.yaml")), requests=10_000, seed=8)
    wide = simulate(
        free_hops(example("ctr.yaml", "node.cores=64", "node.proxy_concurrency=64")),
        requests=10_000,
        seed=8,
    )
    assert wide.latency.p50_s == pytest.approx(plain.latency.p50_s, rel=0.05)
    assert wide.latency.p99_s == pytest.approx(plain.latency.p99_s, rel=0.05)
    narrow = simulate(example("ctr.yaml", "node.cores=2"), requests=2000, seed=8)
    assert narrow.latency.p50_s > 10 * plain.latency.p50_s  # 2 cores cannot carry 1500 req/s


# --- (f) speed stretches CPU work, not I/O -----------------------------------------------------


def _service_part(speed: float, **stage: Any) -> float:
    spec = _spec(
        stages=[{"name": "s", "replicas": 2, **stage}],
        workload={"rate_rps": 20, "sparse_features_per_row": 4, "vocab_size": 1000},
        node={"cores": 8, "speed": speed},
    )
    s = simulate(spec, requests=5000, warmup_requests=500, seed=6).stages[0]
    return s.latency.mean_s - s.queue_wait.mean_s


def test_half_speed_doubles_the_service_part_at_low_load() -> None:
    lognormal = {"service": {"model": "lognormal", "mean_s": 0.004, "cv": 0.5}}
    assert _service_part(0.5, **lognormal) == pytest.approx(2 * _service_part(1.0, **lognormal))


def test_the_parameter_store_is_io_that_speed_does_not_stretch() -> None:
    features = {
        "kind": "features",
        "service": _det(0.001),
        "store": {"base_s": 0.003, "per_key_s": 0.0},
        "cache_capacity": 0,
    }
    assert _service_part(1.0, **features) == pytest.approx(0.004)
    assert _service_part(0.5, **features) == pytest.approx(2 * 0.001 + 0.003)


# --- the rest: conservation, determinism, spec and --set --------------------------------------


def test_conservation_and_determinism_with_a_node_and_shedding() -> None:
    spec = example(
        "ctr.yaml",
        "node.cores=2",
        "node.speed=0.8",
        "node.proxy_concurrency=8",  # admits more than 2 cores finish: the ingress sheds
        "workload.rate_rps=400",
        "ingress.max_queued_requests=5",
    )
    report = simulate(spec, requests=4000, warmup_requests=400, seed=9)
    assert report.shed > 0
    assert report.arrived_total == (
        report.completed_total + report.shed_total + report.in_flight_at_end
    )
    assert report.completed + report.shed == report.requests
    again = simulate(spec, requests=4000, warmup_requests=400, seed=9)
    assert _without_wall(report) == _without_wall(again)
    other = simulate(spec, requests=4000, warmup_requests=400, seed=10)
    assert other.latency.p50_s != report.latency.p50_s


def _without_wall(report: SimulationReport) -> dict[str, Any]:
    data = report.to_dict()
    data.pop("wall_s")
    return data


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("node.corse=2", r"unknown field 'node.corse' \(did you mean 'cores'\?\)"),
        ("node.speed=0.5", r"node\.cores: Field required"),
        ("node.cores=0", r"node\.cores: Input should be greater than 0"),
        ("node.extra.x=1", r"'extra' is not a section of the spec"),
    ],
)
def test_bad_node_override_is_one_line(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InputError, match=message):
        example("ctr.yaml", assignment)
    assert main(["simulate", str(EXAMPLES / "ctr.yaml"), "--set", assignment]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"cores": 2, "speed": 0.0}, r"node\.speed: Input should be greater than 0"),
        ({"cores": 2, "speed": 1.5}, r"node\.speed: Input should be less than or equal to 1"),
        ({"cores": 2, "proxy_concurrency": 0}, r"node\.proxy_concurrency: Input should be greater"),
        ({"cores": 2, "threads": 4}, r"node\.threads: unknown field"),
    ],
)
def test_bad_node_section_is_rejected(node: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _spec([{"name": "s", "service": _det(0.001)}], {"rate_rps": 10}, node)


def test_set_adds_the_node_section_and_can_remove_it() -> None:
    spec = example("ctr.yaml", "node.cores=2", "node.speed=0.75")
    assert spec.node is not None
    assert (spec.node.cores, spec.node.speed, spec.node.proxy_concurrency) == (2, 0.75, 1)
    assert example("ctr.yaml", "node.cores=2", "node=null").node is None


def test_node_fields_are_documented_and_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", str(EXAMPLES / "ctr.yaml"), "--requests", "500", "--set", "node.cores=4"]
    assert main([*args, "--json"]) == 0
    node = json.loads(capsys.readouterr().out)["node"]
    documented = (Path(__file__).resolve().parents[3] / "docs" / "simulate.md").read_text()
    for key in node:
        assert f"`{key}`" in documented, f"node.{key} is not documented in docs/simulate.md"
    assert (
        node["cores"] == 4
        and 0 < node["cpu_utilisation"] <= 1
        and not math.isnan(node["proxy_mean_queue_wait_s"])
    )
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "node: 4 cores at speed 1.00" in table and "proxy: 1 at once" in table
