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
import random
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import simpy

from simulator.cache import KeyCache, make_cache
from simulator.config import ServingConfig, apply_config, config_warnings
from simulator.errors import InputError
from simulator.node import Cpu, Proxy, ReplicaThread, node_stats
from simulator.report import (
    CacheStats,
    LatencyStats,
    SimulationReport,
    SloVerdict,
    StageReport,
)
from simulator.service import Sampler, make_sampler, make_store_sampler
from simulator.spec import Device, PipelineSpec, StageKind, StageSpec
from simulator.workload import arrival_times
from simulator.zipf import ZipfSampler

__all__ = ["simulate"]

_KEY_BLOCK = 1 << 18
_BACKOFF_STEPS = 32  # retries past the last of these wait the last one


class _Request:
    __slots__ = ("arrived", "caller", "entered", "index", "keys", "measured", "rows", "started")

    def __init__(self, index: int, arrived: float, rows: int, measured: bool) -> None:
        self.index = index
        self.arrived = arrived
        self.rows = rows
        self.measured = measured
        self.keys: Any = None
        self.entered = 0.0
        self.started = 0.0
        # with a node: the thread of the first stage's replica, which makes the handle calls
        self.caller: ReplicaThread | None = None


class _Replica:
    __slots__ = (
        "cache", "form_id", "forming", "index", "ongoing", "ready", "running", "thread", "waiting",
    )  # fmt: skip

    def __init__(self, index: int, cache: KeyCache | None, thread: ReplicaThread | None) -> None:
        self.index = index
        self.thread = thread  # with a node: the replica's CPU work, one piece at a time
        self.ongoing = 0  # requests held: batch queue + forming + ready + running
        self.waiting: deque[_Request] = deque()  # the replica's batch queue
        self.forming: list[_Request] | None = None
        self.form_id = 0  # invalidates the deadline of a batch that closed full
        self.ready: deque[list[_Request]] = deque()  # closed batches waiting for the semaphore
        self.running = 0
        self.cache = cache


class _Stage:
    """Router + replicas of one deployment, with the counters its report needs."""

    def __init__(
        self,
        sim: _Simulation,
        spec: StageSpec,
        position: int,
        rng: np.random.Generator,
        merged: tuple[StageSpec, ...] = (),
    ) -> None:
        """`merged`: stages with `in_ranker` that run inside this stage's replicas — a features
        stage looks the whole batch up, a compute stage (an ingress) handles each request."""
        self.sim = sim
        self.spec = spec
        self.name = spec.name
        self.position = position
        self.next: _Stage | None = None
        self.max_ongoing = spec.max_ongoing_requests
        self.max_queued = spec.max_queued_requests
        self.max_batch = spec.max_batch_size  # the replica's cap keeps batches within it
        self.wait_s = spec.batch_wait_timeout_s
        self.max_concurrent = spec.max_concurrent_batches
        rngs = rng.spawn(4)
        variant = spec.gpu if spec.device is Device.GPU and spec.gpu is not None else None
        self.service: Sampler = make_sampler(variant.service if variant else spec.service, rngs[0])
        self.store: Sampler | None = None
        self.cutoff: int | None = None
        merged_lookup = [m for m in merged if m.kind is StageKind.FEATURES]
        self.lookup_spec = (
            spec if spec.kind is StageKind.FEATURES else next(iter(merged_lookup), None)
        )
        if self.lookup_spec is not None:
            assert self.lookup_spec.store is not None
            self.store = make_store_sampler(self.lookup_spec.store, rngs[1])
            self.cutoff = self.lookup_spec.cutoff_rank
        merged_rngs = rngs[3].spawn(max(len(merged), 1))
        # Merged work shares the replica with the batches: a lookup runs on the whole batch, a
        # merged compute stage's handler once per request (on the replica's one event loop).
        self.merged_batch: list[Sampler] = []
        self.merged_request: list[Sampler] = []
        for m, m_rng in zip(merged, merged_rngs, strict=False):
            target = self.merged_batch if m.kind is StageKind.FEATURES else self.merged_request
            target.append(make_sampler(m.service, m_rng))
        # Python's generator, seeded from the stage's stream: a draw costs ~50 ns in the hot path.
        self.uniform = random.Random(int(rngs[2].integers(2**63))).random
        lookup = self.lookup_spec
        self.replicas = [
            _Replica(
                i,
                make_cache(lookup.cache_policy or "none", lookup.cache_capacity or 0)
                if lookup is not None
                else None,
                ReplicaThread(sim.cpu) if sim.cpu is not None else None,
            )
            for i in range(spec.replicas)
        ]
        self.queue: deque[_Request] = deque()  # the router's FIFO
        router = sim.spec.router
        self.backoff = tuple(
            min(router.initial_backoff_s * router.backoff_multiplier**k, router.max_backoff_s)
            for k in range(_BACKOFF_STEPS)
        )
        self.max_tasks = min(router.max_tasks, 2 * spec.replicas)
        self.tasks = 0  # routing tasks retrying for waiting requests
        self.trace = sim.trace
        # statistics (window = measured part)
        self.latency = array("d")
        self.queue_wait = array("d")
        self.in_stage = 0
        self.area_in_stage = 0.0
        self.area_queue = 0.0
        self.t_last = 0.0
        self.arrivals_in_window = 0
        self.batches = 0
        self.batch_requests = 0
        self.batch_rows = 0
        self.busy_s = 0.0
        self.shed = 0
        self.keys_requested = 0
        self.keys_cut = 0
        self.hits = 0
        self.misses = 0

    # -- bookkeeping ----------------------------------------------------------------------------

    def _integrate(self, now: float) -> None:
        dt = now - self.t_last
        self.area_in_stage += self.in_stage * dt
        self.area_queue += len(self.queue) * dt
        self.t_last = now

    # -- router ---------------------------------------------------------------------------------

    def accept(self, req: _Request) -> None:
        sim = self.sim
        now = sim.env.now
        # NOTE: _integrate inlined (hot path)
        dt = now - self.t_last
        self.area_in_stage += self.in_stage * dt
        self.area_queue += len(self.queue) * dt
        self.t_last = now
        if sim.measuring:
            self.arrivals_in_window += 1
        req.entered = now
        if not self.queue:
            replica = self._pick()
            if replica is not None:
                self.in_stage += 1
                self._assign(replica, req)
                return
        if self.max_queued != -1 and len(self.queue) >= self.max_queued:
            if self.trace is not None:
                self.trace.append((now, "shed", self.name, req.index))
            self.shed += 1 if sim.measuring else 0
            sim.on_shed(req)
            return
        if self.trace is not None:
            self.trace.append((now, "queue", self.name, req.index))
        self.in_stage += 1
        self.queue.append(req)
        if self.backoff[0] > 0.0 and self.tasks < min(len(self.queue), self.max_tasks):
            self.tasks += 1  # a routing task for it, which just found every replica full
            self._retry_after(0)

    def _retry_after(self, attempt: int) -> None:
        step = self.backoff[min(attempt, _BACKOFF_STEPS - 1)]
        retry = self.sim.env.timeout(step, attempt)
        retry.callbacks.append(self._on_retry)

    def _on_retry(self, event: simpy.Event) -> None:
        """A routing task wakes: place the oldest waiting requests while replicas have room, then
        back off again (from the start if it placed one), or end when nothing waits or the router
        runs more tasks than its waiting requests call for."""
        attempt = cast(int, event.value)
        queue = self.queue
        placed = False
        if queue:
            self._integrate(self.sim.env.now)
            placed = self._place_waiting()
        if not queue or self.tasks > min(len(queue), self.max_tasks):
            self.tasks -= 1
            return
        self._retry_after(0 if placed else attempt + 1)

    def _pick(self) -> _Replica | None:
        """Power of two choices: the less loaded of two random replicas, if it has room.

        When both are full Ray retries with two new random replicas; here the retry draws its two
        among the replicas that have room, which is where Ray's retries end up.
        """
        replicas = self.replicas
        n = len(replicas)
        cap = self.max_ongoing
        if n == 1:
            only = replicas[0]
            return only if only.ongoing < cap else None
        uniform = self.uniform
        i = int(uniform() * n)
        j = int(uniform() * (n - 1))
        a, b = replicas[i], replicas[j + 1 if j >= i else j]
        if b.ongoing < a.ongoing:
            a = b
        if a.ongoing < cap:
            return a
        free = [r for r in replicas if r.ongoing < cap]
        if len(free) <= 1:
            return free[0] if free else None
        i = int(uniform() * len(free))
        j = int(uniform() * (len(free) - 1))
        a, b = free[i], free[j + 1 if j >= i else j]
        return b if b.ongoing < a.ongoing else a

    def _assign(self, replica: _Replica, req: _Request) -> None:
        replica.ongoing += 1
        if self.position == 0:
            req.caller = replica.thread
        if self.trace is not None:
            self.trace.append((self.sim.env.now, "assign", self.name, req.index, replica.index))
        if self.max_batch == 1:
            # NOTE: fast path, same rules: a batch of one closes at once and waits for the semaphore.
            if replica.running < self.max_concurrent:
                self._execute(replica, [req])
            else:
                replica.ready.append([req])
            return
        forming = replica.forming
        if forming is not None and not replica.waiting and len(forming) < self.max_batch:
            forming.append(req)
            if len(forming) >= self.max_batch:
                self._close(replica)
            return
        replica.waiting.append(req)
        if forming is None:
            self._start_forming(replica)

    # -- batching (Ray's _BatchQueue) -----------------------------------------------------------

    def _start_forming(self, replica: _Replica) -> None:
        waiting = replica.waiting
        take = min(len(waiting), self.max_batch)
        batch = [waiting.popleft() for _ in range(take)]
        replica.forming = batch
        if take >= self.max_batch or self.wait_s == 0.0:
            self._close(replica)
            return
        replica.form_id += 1
        deadline = self.sim.env.timeout(self.wait_s, (replica, replica.form_id))
        deadline.callbacks.append(self._on_deadline)

    def _on_deadline(self, event: simpy.Event) -> None:
        replica, form_id = cast(tuple[_Replica, int], event.value)
        if replica.forming is not None and replica.form_id == form_id:
            self._close(replica)

    def _close(self, replica: _Replica) -> None:
        batch = replica.forming
        assert batch is not None
        replica.forming = None
        replica.form_id += 1
        if replica.running < self.max_concurrent:
            self._execute(replica, batch)
        else:
            replica.ready.append(batch)
        if replica.waiting:
            self._start_forming(replica)

    def _execute(self, replica: _Replica, batch: list[_Request]) -> None:
        sim = self.sim
        now = sim.env.now
        replica.running += 1
        rows = 0
        for req in batch:
            rows += req.rows
            req.started = now
        seconds = self.service(rows)
        for merged in self.merged_batch:
            seconds += merged(rows)
        for merged in self.merged_request:
            for req in batch:
                seconds += merged(req.rows)
        store_s = self._lookup(replica, batch) if self.store is not None else 0.0
        if self.trace is not None:
            ids = tuple(r.index for r in batch)
            self.trace.append((now, "start", self.name, replica.index, ids))
        if sim.measuring:
            self.batches += 1
            self.batch_requests += len(batch)
            self.batch_rows += rows
        if replica.thread is None:
            if sim.measuring:
                self.busy_s += seconds + store_s
            done = sim.env.timeout(seconds + store_s, (replica, batch))
            done.callbacks.append(self._on_done)
        else:  # the multi-get is I/O (no core), then the batch's CPU work on the replica's thread
            replica.thread.run_after(store_s, seconds, (replica, batch), (self._on_node_done,))

    def _lookup(self, replica: _Replica, batch: list[_Request]) -> float:
        """Cut and replay the batch's keys through the replica's cache; the store time of its misses."""
        keys = batch[0].keys if len(batch) == 1 else np.concatenate([r.keys for r in batch])
        for req in batch:
            req.keys = None
        requested = len(keys)
        if self.cutoff is not None:
            keys = keys[keys < self.cutoff]
        assert replica.cache is not None and self.store is not None
        hits, misses = replica.cache.access(keys)
        if self.sim.measuring:
            self.keys_requested += requested
            self.keys_cut += requested - len(keys)
            self.hits += hits
            self.misses += misses
        return self.store(misses) if misses else 0.0

    def _on_node_done(self, event: simpy.Event) -> None:
        """With a node, a batch holds its slot from its start, core wait included."""
        if self.sim.measuring:
            batch = cast(tuple[_Replica, list[_Request]], event.value)[1]
            self.busy_s += self.sim.env.now - batch[0].started
        self._on_done(event)

    def _on_done(self, event: simpy.Event) -> None:
        replica, batch = cast(tuple[_Replica, list[_Request]], event.value)
        sim = self.sim
        now = sim.env.now
        dt = now - self.t_last
        self.area_in_stage += self.in_stage * dt
        self.area_queue += len(self.queue) * dt
        self.t_last = now
        replica.running -= 1
        replica.ongoing -= len(batch)
        if self.trace is not None:
            self.trace.append(
                (now, "done", self.name, replica.index, tuple(r.index for r in batch))
            )
        self.in_stage -= len(batch)
        for req in batch:
            if req.measured:
                self.latency.append(now - req.entered)
                self.queue_wait.append(req.started - req.entered)
        if replica.ready:
            self._execute(replica, replica.ready.popleft())
        # Freed slots go to requests waiting at the router, oldest first: at once when the router
        # does not back off, else at its routing tasks' next retries (`_on_retry`).
        if self.backoff[0] == 0.0:
            self._place_waiting()
        sim.forward(self, batch)

    def _place_waiting(self) -> bool:
        """Give replicas with room to the oldest waiting requests; whether any was placed."""
        queue = self.queue
        placed = False
        while queue:
            target = self._pick()
            if target is None:
                break
            self._assign(target, queue.popleft())
            placed = True
        return placed

    def report(self, window_s: float, cost_per_hour: float) -> StageReport:
        spec = self.spec
        slots = spec.replicas * spec.max_concurrent_batches
        cache = None
        if self.lookup_spec is not None:
            lookups = self.hits + self.misses
            policy = self.lookup_spec.cache_policy
            cache = CacheStats(
                policy=policy.value if policy else "none",
                capacity_per_replica=self.replicas[0].cache.capacity
                if self.replicas[0].cache
                else 0,
                lookups=lookups,
                hits=self.hits,
                misses=self.misses,
                hit_rate=self.hits / lookups if lookups else 0.0,
                keys_requested=self.keys_requested,
                keys_cut=self.keys_cut,
                cut_fraction=self.keys_cut / self.keys_requested if self.keys_requested else 0.0,
            )
        return StageReport(
            name=self.name,
            replicas=spec.replicas,
            latency=LatencyStats.of(self.latency),
            queue_wait=LatencyStats.of(self.queue_wait),
            utilisation=self.busy_s / (slots * window_s) if window_s > 0 else 0.0,
            mean_queue_length=self.area_queue / window_s if window_s > 0 else 0.0,
            mean_in_stage=self.area_in_stage / window_s if window_s > 0 else 0.0,
            arrival_rate_rps=self.arrivals_in_window / window_s if window_s > 0 else 0.0,
            mean_batch_size=self.batch_requests / self.batches if self.batches else 0.0,
            mean_batch_rows=self.batch_rows / self.batches if self.batches else 0.0,
            batches=self.batches,
            shed=self.shed,
            cost_per_hour=cost_per_hour,
            cache=cache,
        )


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
        self.stages: list[_Stage] = []
        merged: list[StageSpec] = []
        for stage_spec, stage_rng in zip(spec.stages, stage_rngs, strict=True):
            if stage_spec.in_ranker:
                merged.append(stage_spec)  # runs inside the next deployed stage: no deployment
                continue
            self.stages.append(_Stage(self, stage_spec, len(self.stages), stage_rng, tuple(merged)))
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
        req = _Request(index, now, self.rows, measured)
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
        stage, req = cast(tuple[_Stage, _Request], event.value)
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

    def forward(self, stage: _Stage, batch: list[_Request]) -> None:
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

    def _respond(self, req: _Request, now: float) -> None:
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
        self._complete(cast(_Request, event.value), self.env.now, responded=True)

    def _complete(self, req: _Request, now: float, responded: bool = False) -> None:
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

    def on_shed(self, req: _Request) -> None:
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
