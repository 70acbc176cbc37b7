"""The SimPy engine: a pipeline of Ray Serve deployments, request by request.

Each rule is Ray Serve's own (ray 2.60, python/ray/serve):
- Router (`request_router/pow_2_router.py`): a request goes to one of two replicas sampled at
  random, the one with fewer ongoing requests, and never to a replica already holding
  `max_ongoing_requests`. Ray samples from all replicas and retries with back-off when both are
  full; here the two are sampled among replicas with room, and a waiting request gets a freed
  slot at one of the router's retries (`request_router.py`, `spec.router`): up to
  min(waiting, 2 × replicas, `max_tasks`) routing tasks retry after 25 ms × 2^k (at most 0.5 s),
  each placing the oldest waiting requests while replicas have room and starting its back-off
  over after it placed one; nothing wakes them when a slot frees, so a slot can stay empty until
  the next retry (`router.initial_backoff_s: 0`: placed at once). Waiting requests queue FIFO at
  the router; past `max_queued_requests` (-1 = unbounded) a new request is rejected — the proxy's
  HTTP 503 — and counted as shed. One router per stage stands for all its callers.
- Replica (`batching.py`, `_BatchQueue`): requests enter the replica's batch queue. The batching
  loop takes the first waiting request, then the batch closes when it holds `max_batch_size`
  requests or `batch_wait_timeout_s` after that first request, whichever is first; the loop then
  starts the next batch at once. A closed batch waits on a semaphore of `max_concurrent_batches`.
  Because a replica never holds more than `max_ongoing_requests`, no batch can exceed it either;
  when that is below `max_batch_size` a batch never fills and always waits out the timeout.
- Feature stage: when a batch starts, its requests' keys are cut (popularity rank ≥ cutoff_rank
  is skipped) and replayed through the replica's own cache (`simulator.cache`, the one the
  serving path uses); the distinct misses cost one parameter-store multi-get.
- `in_ranker`: a stage with it has no deployment; it runs inside the next deployed stage's
  replicas — a features stage's lookup once per batch (one multi-get), a compute stage (an
  ingress) once per request — and its hop disappears. That work is added to the batch's time,
  since a replica runs its handlers and its batches on one event loop.
- Overheads: the HTTP proxy before the first stage and after the last, and a handle hop between
  stages, are delays that hold no replica.
- Node (optional `spec.node`, `simulator.node`): the pipeline's processes share `cores` cores. The
  proxy's handling of a request and of its response, each hop and each batch's service time hold
  a core while they run (work waits FIFO for one); the proxy is one actor handling at most
  `proxy_concurrency` requests at once. A replica is one process: its batches and the hops it
  calls run on its one `ReplicaThread`, one piece at a time; the first stage's replica makes
  every call (an ingress calling each later deployment), so a hop is CPU on that replica's
  thread. Without a node, every replica has a CPU of its own and the overheads are pure delays.

Timing: warm-up requests run but are not counted; statistics cover the measured requests and the
window between the first and last measured arrival. Arrivals continue until every measured
request is resolved (at most 3 × (warm-up + measured) arrivals), so the tail of the window sees
the same load as its middle.

NOTE: the hot path uses plain callbacks on SimPy timeouts rather than one generator process per
request (about 5× faster); the rules above are unchanged by it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from array import array
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import simpy

from simulator.config import ServingConfig, apply_config, config_warnings
from simulator.errors import InputError
from simulator.node import Cpu, Proxy, node_stats
from simulator.report import LatencyStats, SimulationReport, SloVerdict
from simulator.service import make_sampler
from simulator.spec import PipelineSpec, StageKind, StageSpec
from simulator.stage import Request, Stage
from simulator.workload import arrival_times
from simulator.zipf import ZipfSampler

__all__ = ["simulate"]

_KEY_BLOCK = 1 << 18


class _Simulation:
    """Arrivals → stages → completion, and the window bookkeeping."""

    def __init__(
        self,
        spec: PipelineSpec,
        requests: int,
        warmup: int,
        seed: int,
        progress: Callable[[float], None] | None,
        trace: list[tuple[Any, ...]] | None = None,
    ) -> None:
        self.trace = trace
        self.spec = spec
        self.seed = seed
        self.progress = progress
        self.env = simpy.Environment()
        self.requests = requests
        self.warmup = warmup
        self.max_arrivals = 3 * (warmup + requests)
        root = np.random.default_rng(seed)
        # Separate streams, so a knob change in one stage leaves the others' draws unchanged
        # (common random numbers across configs for arrivals, request shapes and keys).
        arrival_rng, key_rng, overhead_rng, *stage_rngs = root.spawn(3 + len(spec.stages))
        self.arrivals = arrival_times(spec.workload, arrival_rng)
        workload = spec.workload
        self.rows = workload.rows_per_request
        self.keys_per_request = workload.keys_per_request
        needs_keys = any(s.kind is StageKind.FEATURES for s in spec.stages)
        self.zipf = (
            ZipfSampler(workload.vocab_size, workload.zipf_alpha, key_rng) if needs_keys else None
        )
        self.key_block = np.empty(0, dtype=np.int64)
        self.key_pos = 0
        o1, o2, o3 = overhead_rng.spawn(3)
        self.proxy = make_sampler(spec.overhead.proxy, o1)
        self.hop = make_sampler(spec.overhead.hop, o2)
        self.response = make_sampler(spec.overhead.response, o3)
        self.cpu: Cpu | None = None  # with `spec.node`: the shared cores, and the proxy as a server
        self.proxy_server: Proxy | None = None
        self.meters: tuple[Cpu | Proxy, ...] = ()
        if spec.node is not None:
            self.cpu = Cpu(self.env, spec.node.cores, spec.node.speed)
            self.proxy_server = Proxy(self.env, self.cpu, spec.node.proxy_concurrency)
            self.meters = (self.cpu, self.proxy_server)
        self.stages: list[Stage] = []
        merged: list[StageSpec] = []
        for stage_spec, stage_rng in zip(spec.stages, stage_rngs, strict=True):
            if stage_spec.in_ranker:
                merged.append(stage_spec)  # runs inside the next deployed stage: no deployment
                continue
            self.stages.append(Stage(self, stage_spec, len(self.stages), stage_rng, tuple(merged)))
            merged = []
        for a, b in zip(self.stages, self.stages[1:], strict=False):
            a.next = b
        self.first = self.stages[0]
        self.measuring = False
        self.t_start = 0.0
        self.t_end: float | None = None
        self.arrived = 0
        self.completed = 0
        self.shed = 0
        self.in_transit = 0  # between stages: inside the proxy or a handle hop
        self.measured_done = 0
        self.measured_completed = 0
        self.measured_shed = 0
        self.completions_in_window = 0
        self.e2e = array("d")
        self.all_resolved = self.env.event()

    # -- arrivals -------------------------------------------------------------------------------

    def start(self) -> None:
        self._schedule_next_arrival()

    def _schedule_next_arrival(self) -> None:
        if self.arrived >= self.max_arrivals or self.all_resolved.triggered:
            return
        t = next(self.arrivals, None)
        if t is None:  # a trace ran out
            return
        ev = self.env.timeout(max(t - self.env.now, 0.0))
        ev.callbacks.append(self._on_arrival)

    def _keys(self) -> Any:
        n = self.keys_per_request
        if self.key_pos + n > len(self.key_block):
            assert self.zipf is not None
            self.key_block = self.zipf.sample(max(_KEY_BLOCK, n))
            self.key_pos = 0
        keys = self.key_block[self.key_pos : self.key_pos + n]
        self.key_pos += n
        return keys

    def _on_arrival(self, _event: simpy.Event) -> None:
        now = self.env.now
        index = self.arrived
        self.arrived += 1
        measured = self.warmup <= index < self.warmup + self.requests
        if self.progress is not None and index & 4095 == 0:
            self.progress(min(1.0, index / (self.warmup + self.requests)))
        if index == self.warmup:
            self._open_window(now)
        elif index == self.warmup + self.requests:
            self._close_window(now)
        req = Request(index, now, self.rows, measured)
        if self.trace is not None:
            self.trace.append((now, "arrive", req.index))
        if self.zipf is not None:
            req.keys = self._keys()
        delay = self.proxy(req.rows)
        if delay > 0.0:
            self.in_transit += 1
            if self.proxy_server is None:
                ev = self.env.timeout(delay, (self.first, req))
                ev.callbacks.append(self._on_enter)
            else:
                self.proxy_server.handle(delay, (self.first, req), self._on_enter)
        else:
            self.first.accept(req)
        self._schedule_next_arrival()

    def _on_enter(self, event: simpy.Event) -> None:
        stage, req = cast(tuple[Stage, Request], event.value)
        self.in_transit -= 1
        stage.accept(req)

    def _open_window(self, now: float) -> None:
        self.measuring = True
        self.t_start = now
        for stage in self.stages:
            stage._integrate(now)
            stage.area_in_stage = stage.area_queue = 0.0
        for meter in self.meters:
            meter.open_window(now)

    def _close_window(self, now: float) -> None:
        if self.t_end is not None:
            return
        for stage in self.stages:
            stage._integrate(now)
        for meter in self.meters:
            meter.close_window(now)
        self.measuring = False
        self.t_end = now

    # -- leaving a stage ------------------------------------------------------------------------

    def forward(self, stage: Stage, batch: list[Request]) -> None:
        nxt = stage.next
        if nxt is None:
            now = self.env.now
            if self.proxy_server is None:
                for req in batch:
                    self._complete(req, now)
            else:
                for req in batch:
                    self._respond(req, now)
            return
        hop = self.hop
        for req in batch:
            delay = hop(req.rows)
            if delay > 0.0:
                self.in_transit += 1
                if req.caller is None:
                    ev = self.env.timeout(delay, (nxt, req))
                    ev.callbacks.append(self._on_enter)
                else:  # the caller's (Ray's) work, on the calling replica's thread
                    req.caller.run(delay, (nxt, req), (self._on_enter,))
            else:
                nxt.accept(req)

    def _respond(self, req: Request, now: float) -> None:
        """With a node, the response is the proxy's work too; the request completes after it."""
        assert self.proxy_server is not None
        seconds = self.response(req.rows)
        if seconds > 0.0:
            self.in_transit += 1
            self.proxy_server.respond(seconds, req, self._on_responded)
        else:
            self._complete(req, now, responded=True)

    def _on_responded(self, event: simpy.Event) -> None:
        self.in_transit -= 1
        self._complete(cast(Request, event.value), self.env.now, responded=True)

    def _complete(self, req: Request, now: float, responded: bool = False) -> None:
        if self.trace is not None:
            self.trace.append((now, "complete", req.index))
        self.completed += 1
        if self.measuring:
            self.completions_in_window += 1
        if req.measured:
            end = now if responded else now + self.response(req.rows)
            self.e2e.append(end - req.arrived)
            self.measured_completed += 1
            self._resolved()

    def on_shed(self, req: Request) -> None:
        self.shed += 1
        req.keys = None
        if req.measured:
            self.measured_shed += 1
            self._resolved()

    def _resolved(self) -> None:
        self.measured_done += 1
        if self.measured_done == self.requests:
            self._close_window(self.env.now)
            self.all_resolved.succeed()


def simulate(
    spec: PipelineSpec,
    config: ServingConfig | None = None,
    *,
    requests: int | None = None,
    warmup_requests: int | None = None,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
    trace: list[tuple[Any, ...]] | None = None,
    keep_samples: bool = False,
) -> SimulationReport:
    """Simulate `spec` under `config` (default: the spec's baseline knobs) and report.

    `progress` is called with the fraction done; `trace`, when given, receives one tuple per event
    — (t, "arrive", req), (t, "queue"|"shed", stage, req), (t, "assign", stage, req, replica),
    (t, "start"|"done", stage, replica, reqs), (t, "complete", req) — for exact-trace tests.
    `keep_samples` keeps every end-to-end latency in `report.latency_samples` (for plots).

    >>> from simulator.load import load_spec
    >>> report = simulate(load_spec("examples/queueing/mm1.yaml"), requests=2000, seed=1)
    >>> report.completed + report.shed == 2000
    True
    """
    started = time.perf_counter()
    if config is not None:
        spec = apply_config(spec, config)
    n = requests if requests is not None else spec.simulation.requests
    warmup = warmup_requests if warmup_requests is not None else spec.simulation.warmup_requests
    seed = seed if seed is not None else spec.simulation.seed
    if n < 1:
        raise InputError(f"requests must be >= 1 (got {n})")
    if warmup < 0:
        raise InputError(f"warm-up requests must be >= 0 (got {warmup})")
    sim = _Simulation(spec, n, warmup, seed, progress, trace)
    sim.start()
    # SimPy raises RuntimeError when the schedule runs empty first (a trace ended): reported below.
    with contextlib.suppress(RuntimeError):
        sim.env.run(until=sim.all_resolved)
    if progress is not None:
        progress(1.0)
    if not sim.all_resolved.triggered:
        sim._close_window(sim.env.now)
        missing = n - sim.measured_done
        raise InputError(
            f"the workload ended after {sim.arrived} arrivals, before {missing} of the "
            f"{warmup} + {n} requested were resolved: ask for fewer requests or a longer trace"
        )
    report = _report(sim, spec, time.perf_counter() - started)
    if keep_samples:
        report = dataclasses.replace(report, latency_samples=tuple(sim.e2e))
    return report


def _report(sim: _Simulation, spec: PipelineSpec, wall_s: float) -> SimulationReport:
    assert sim.t_end is not None
    window = sim.t_end - sim.t_start
    deployed = {st.name for st in sim.stages}
    costs = [
        spec.replica_cost_per_hour(s, s.device) * s.replicas
        for s in spec.stages
        if s.name in deployed
    ]
    latency = LatencyStats.of(sim.e2e)
    node = None
    if spec.node is not None:
        assert sim.cpu is not None and sim.proxy_server is not None
        node = node_stats(spec.node, sim.cpu, sim.proxy_server, window, sim.completions_in_window)
    shed_rate = sim.measured_shed / sim.requests
    slo = SloVerdict(
        p99_target_s=spec.slo.p99_s,
        max_shed_rate=spec.slo.max_shed_rate,
        p99_s=latency.p99_s,
        shed_rate=shed_rate,
        holds=latency.count > 0
        and latency.p99_s <= spec.slo.p99_s
        and shed_rate <= spec.slo.max_shed_rate,
    )
    return SimulationReport(
        spec_name=spec.name,
        seed=sim.seed,
        requests=sim.requests,
        warmup_requests=sim.warmup,
        window_s=window,
        offered_rps=(sim.requests - 1) / window if window > 0 else 0.0,
        throughput_rps=sim.completions_in_window / window if window > 0 else 0.0,
        completed=sim.measured_completed,
        shed=sim.measured_shed,
        shed_rate=shed_rate,
        arrived_total=sim.arrived,
        completed_total=sim.completed,
        shed_total=sim.shed,
        in_flight_at_end=sim.in_transit + sum(st.in_stage for st in sim.stages),
        latency=latency,
        stages=tuple(st.report(window, c) for st, c in zip(sim.stages, costs, strict=True)),
        cost_per_hour=float(sum(costs)),
        slo=slo,
        warnings=tuple(config_warnings(spec)),
        wall_s=wall_s,
        node=node,
    )
