"""Synthetic metrics for calibration tests: a pipeline with known costs, run through the simulator
and a replayed cache, exported as Ray would (cumulative counters, histograms whose `_sum` is built
from bucket midpoints as Ray 2.60 does, CPU gauges per process name, node CPU)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.monitoring import live
from serving.monitoring.live import Labels, Snapshot
from simulator import PipelineSpec, load_pipeline, simulate
from simulator.cache import make_cache
from simulator.load import validate_spec
from simulator.zipf import ZipfSampler

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "data" / "metrics" / "ctr_load_15rps.jsonl"
# What ran while the fixture was recorded: tests/integration's SMALL deployment of the example, a
# cut-off of 5000 and the integration model's 20000-key vocabulary (`jizhi load --model`); keys
# were drawn at the example's zipf_alpha 1.0.
FIXTURE_DEPLOYED = [
    "ingress.replicas=1", "features.replicas=1", "ranker.replicas=1", "ranker.max_batch_size=8",
    "ranker.max_ongoing_requests=16", "features.cutoff_rank=5000", "workload.vocab_size=20000",
]  # fmt: skip


def fixture_spec() -> PipelineSpec:
    return load_pipeline(ROOT / "examples" / "ctr.yaml", overrides=FIXTURE_DEPLOYED)


def recording() -> list[Snapshot]:
    """The recorded snapshots of the fixture."""
    return live.read_records(FIXTURE.read_text().splitlines(), str(FIXTURE))


STORE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
APP = "jizhi"


@dataclass(frozen=True)
class Truth:
    """The costs the synthetic service really has (CPU seconds, store seconds)."""

    proxy_s: float = 0.008
    ingress_s: float = 0.003  # the handler alone; the hops it calls come on top
    features_s: float = 0.002
    ranker_base_s: float = 0.004
    ranker_per_row_s: float = 0.0002
    store_base_s: float = 0.0008
    store_per_key_s: float = 0.00004
    store_cv: float = 0.3
    alpha: float = 0.9
    cores: int = 4
    speed: float = 0.7  # others take 30 % of the node
    hop_s: float = 0.0005  # the spec's (kept by calibration)


# The spec as an operator wrote it before calibrating: the knobs are right, the costs are guesses.
SPEC: dict[str, Any] = {
    "name": "synthetic",
    "workload": {
        "rate_rps": 100, "rows_per_request": 8, "sparse_features_per_row": 4,
        "vocab_size": 100_000, "zipf_alpha": 1.3,
    },
    "overhead": {
        "proxy": {"model": "lognormal", "mean_s": 0.001, "cv": 0.3},
        "hop": {"model": "deterministic", "seconds": 0.0005},
        "response": {"model": "deterministic", "seconds": 0.0003},
    },
    "stages": [
        {"name": "ingress", "service": {"model": "lognormal", "mean_s": 0.001, "cv": 0.2},
         "replicas": 2},
        {"name": "features", "kind": "features",
         "service": {"model": "linear", "base_s": 0.0005, "per_row_s": 0.00001},
         "store": {"base_s": 0.002, "per_key_s": 0.00001, "cv": 0.3},
         "cache_policy": "lru", "cache_capacity": 2000, "cutoff_rank": 50_000},
        {"name": "ranker", "service": {"model": "linear", "base_s": 0.001, "per_row_s": 0.0001,
                                       "cv": 0.1},
         "max_batch_size": 16, "batch_wait_timeout_s": 0.02, "max_ongoing_requests": 64},
    ],
    "slo": {"p99_s": 0.1},
    # the textbook router: at 300 req/s Ray's retry back-off would leave the default 5 slots of a
    # replica idle between retries and queue requests past the windows the tests count on
    "router": {"initial_backoff_s": 0},
}  # fmt: skip


def spec(in_ranker: bool = False) -> PipelineSpec:
    """The operator's spec, with the knobs that were deployed."""
    stages = [dict(s) for s in SPEC["stages"]]
    stages[1]["in_ranker"] = in_ranker
    return validate_spec({**SPEC, "stages": stages}, "synthetic")


def true_spec(truth: Truth, rate: float, in_ranker: bool) -> PipelineSpec:
    """The spec with the true costs at `rate`: the simulator batches the ranker's requests."""
    data = {**SPEC, "workload": {**SPEC["workload"], "rate_rps": rate, "zipf_alpha": truth.alpha}}
    stages = [dict(s) for s in SPEC["stages"]]
    stages[0]["service"] = {"model": "deterministic", "seconds": truth.ingress_s}
    # The cache and the store are replayed separately, call by call (`synthetic_run`).
    stages[1] |= {"cache_capacity": 0, "store": {"base_s": 0.0, "per_key_s": 0.0},
                  "in_ranker": in_ranker}  # fmt: skip
    if not in_ranker:
        stages[1]["service"] = {"model": "deterministic", "seconds": truth.features_s}
    stages[2]["service"] = {
        "model": "linear", "base_s": truth.ranker_base_s, "per_row_s": truth.ranker_per_row_s,
    }  # fmt: skip
    return validate_spec({**data, "stages": stages}, "true")


@dataclass
class FakeRay:
    """Cumulative metrics as Ray exports them; `snapshot(at)` freezes the current values."""

    midpoint_sums: bool = True
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    @staticmethod
    def _labels(labels: dict[str, str]) -> Labels:
        return frozenset(labels.items())

    def inc(self, name: str, value: float, **labels: str) -> None:
        key = (name, self._labels(labels))
        self.samples[key] = self.samples.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.samples[(name, self._labels(labels))] = value

    def observe(self, name: str, value: float, bounds: tuple[float, ...], **labels: str) -> None:
        i = bisect.bisect_left(bounds, value)
        for j, bound in enumerate([*bounds, math.inf]):
            self.inc(f"{name}_bucket", 1.0 if j >= i else 0.0, le=_le(bound), **labels)
        self.inc(f"{name}_count", 1.0, **labels)
        if self.midpoint_sums:  # Ray 2.60: the middle of the value's bucket, not the value
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i] if i < len(bounds) else bounds[-1]
            value = (lower + upper) / 2 if i < len(bounds) else upper
        self.inc(f"{name}_sum", value, **labels)

    def snapshot(self, at: float) -> Snapshot:
        return Snapshot(at=at, samples=dict(self.samples))


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _component(deployment: str) -> str:
    return f"ray::ServeReplica:{APP}:{deployment}"


def synthetic_run(
    truth: Truth,
    rates: tuple[float, ...] = (20.0, 60.0, 150.0, 300.0, 200.0, 40.0),
    seconds: float = 20.0,
    *,
    in_ranker: bool = False,
    midpoint_sums: bool = True,
    gauge_noise: float = 0.03,
    seed: int = 0,
) -> list[Snapshot]:
    """One snapshot at the start and one after each sub-window of `seconds` at each rate.

    Requests and the ranker's batches come from simulating the true costs at each rate; keys are
    drawn at `truth.alpha`, cut and replayed through one replica's LRU cache call by call (per
    request, or per batch with `in_ranker`); each call with misses is one store lookup. CPU gauges
    are the true CPU seconds over the sub-window, times 1 + `gauge_noise` × N(0, 1).
    """
    rng = np.random.default_rng(seed)
    ray = FakeRay(midpoint_sums=midpoint_sums)
    workload, features = SPEC["workload"], SPEC["stages"][1]
    rows, keys_per_request = workload["rows_per_request"], 32
    cache = make_cache("lru", features["cache_capacity"])
    zipf = ZipfSampler(workload["vocab_size"], truth.alpha, rng)
    host = "Ranker" if in_ranker else "Features"
    deployments = ("Ingress", "Ranker") if in_ranker else ("Ingress", "Features", "Ranker")
    lookup_labels = {"application": APP, "deployment": host}
    at = 1_000_000.0
    snapshots = [ray.snapshot(at)]
    for i, rate in enumerate(rates):
        sim = simulate(true_spec(truth, rate, in_ranker), requests=int(rate * seconds),
                       warmup_requests=200, seed=seed + i).stages[-1]  # fmt: skip
        requests, batches = round(sim.batches * sim.mean_batch_size), sim.batches
        ray.inc("ray_serve_num_http_requests_total", requests, application=APP, route="/infer",
                method="POST", status_code="200")  # fmt: skip
        for dep in deployments:
            ray.inc(_REQ, requests, application=APP, deployment=dep)
        ray.inc(_BATCH, batches, application=APP, deployment="Ranker")
        # requests per lookup call: one each, or the batches' sizes (as even as they come)
        calls = [1] * requests if not in_ranker else np.diff(
            np.linspace(0, requests, batches + 1).round()).astype(int).tolist()  # fmt: skip
        store_s = 0.0
        for size in calls:
            keys = zipf.sample(keys_per_request * size)
            kept = keys[keys < features["cutoff_rank"]]
            hits, misses = cache.access(kept)
            ray.inc(_HITS, hits, **lookup_labels)
            ray.inc(_MISSES, misses, **lookup_labels)
            ray.inc(_CUT, len(keys) - len(kept), **lookup_labels)
            if misses:
                sigma2 = math.log1p(truth.store_cv**2)
                noise = rng.lognormal(-sigma2 / 2, math.sqrt(sigma2))
                lookup_s = (truth.store_base_s + truth.store_per_key_s * misses) * noise
                store_s += lookup_s
                ray.observe("ray_jizhi_store_lookup_seconds", lookup_s, STORE_BUCKETS,
                            **lookup_labels)  # fmt: skip
        ranker_s = truth.ranker_base_s * batches + truth.ranker_per_row_s * rows * requests
        hops = len(deployments) - 1
        cpu = {
            "ray::ProxyActor": truth.proxy_s * requests,
            _component("Ingress"): (truth.ingress_s + hops * truth.hop_s) * requests,
            _component("Ranker"): ranker_s,
        }
        if in_ranker:  # the lookup's CPU on each batch: the spec's features service, and the store
            merged = features["service"]
            cpu[_component("Ranker")] += (
                merged["base_s"] * batches + merged["per_row_s"] * rows * requests
            )
            cpu[_component("Ranker")] += store_s
        else:
            cpu[_component("Features")] = truth.features_s * requests + store_s
        pipeline = 0.0
        for name, cpu_s in cpu.items():
            measured = cpu_s * (1 + gauge_noise * rng.standard_normal())
            pipeline += measured
            # the process runs a method while sampled: its CPU shows under `name.method`
            ray.set(_CPU, 0.0, Component=name)
            ray.set(_CPU, 100 * measured / seconds, Component=f"{name}.handle_request")
        others = (
            (1 - truth.speed) * truth.cores * seconds * (1 + gauge_noise * rng.standard_normal())
        )
        ray.set(_CPU, 100 * others / seconds, Component="ray::Other")  # not the pipeline's
        ray.set("ray_node_cpu_count", truth.cores, ip="10.0.0.1")
        ray.set("ray_node_cpu_utilization", 100 * (pipeline + others) / (truth.cores * seconds),
                ip="10.0.0.1")  # fmt: skip
        at += seconds
        snapshots.append(ray.snapshot(at))
    return snapshots


_REQ = "ray_serve_deployment_processing_latency_ms_count"
_BATCH = "ray_serve_batch_execution_time_ms_count"
_HITS, _MISSES, _CUT = (
    "ray_jizhi_cache_hits_total", "ray_jizhi_cache_misses_total", "ray_jizhi_keys_cut_total",
)  # fmt: skip
_CPU = "ray_component_cpu_percentage"
