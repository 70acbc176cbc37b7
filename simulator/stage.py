"""One deployment of the engine's pipeline: its router and its replicas, request by request.

The rules (Ray Serve's router, its `_BatchQueue`, the feature lookup, merged `in_ranker` work, the
shared node) are set out in `simulator.engine`, which builds a `Stage` per deployed stage, hands it
requests (`accept`) and takes back each finished batch (`Pipeline.forward`).
"""

from __future__ import annotations

import random
from array import array
from collections import deque
from typing import Any, Protocol, cast

import numpy as np
import simpy

from simulator.cache import KeyCache, make_cache
from simulator.node import Cpu, ReplicaThread
from simulator.report import CacheStats, LatencyStats, StageReport
from simulator.service import Sampler, make_sampler, make_store_sampler
from simulator.spec import Device, PipelineSpec, StageKind, StageSpec

__all__ = ["Pipeline", "Request", "Stage"]

_BACKOFF_STEPS = 32  # retries past the last of these wait the last one


class Pipeline(Protocol):
    """What a stage needs of the simulation around it."""

    env: simpy.Environment
    spec: PipelineSpec
    cpu: Cpu | None  # with `spec.node`: the shared cores
    measuring: bool  # inside the measurement window
    trace: list[tuple[Any, ...]] | None

    def forward(self, stage: Stage, batch: list[Request]) -> None:
        """A batch finished `stage`: on to the next stage, or out through the proxy."""

    def on_shed(self, req: Request) -> None:
        """`req` was rejected at a stage's router."""


class Request:
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


class Replica:
    __slots__ = (
        "cache", "form_id", "forming", "index", "ongoing", "ready", "running", "thread", "waiting",
    )  # fmt: skip

    def __init__(self, index: int, cache: KeyCache | None, thread: ReplicaThread | None) -> None:
        self.index = index
        self.thread = thread  # with a node: the replica's CPU work, one piece at a time
        self.ongoing = 0  # requests held: batch queue + forming + ready + running
        self.waiting: deque[Request] = deque()  # the replica's batch queue
        self.forming: list[Request] | None = None
        self.form_id = 0  # invalidates the deadline of a batch that closed full
        self.ready: deque[list[Request]] = deque()  # closed batches waiting for the semaphore
        self.running = 0
        self.cache = cache


class Stage:
    """Router + replicas of one deployment, with the counters its report needs."""

    def __init__(
        self,
        sim: Pipeline,
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
        self.next: Stage | None = None
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
            Replica(
                i,
                make_cache(lookup.cache_policy or "none", lookup.cache_capacity or 0)
                if lookup is not None
                else None,
                ReplicaThread(sim.cpu) if sim.cpu is not None else None,
            )
            for i in range(spec.replicas)
        ]
        self.queue: deque[Request] = deque()  # the router's FIFO
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

    def accept(self, req: Request) -> None:
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

    def _pick(self) -> Replica | None:
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

    def _assign(self, replica: Replica, req: Request) -> None:
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

    def _start_forming(self, replica: Replica) -> None:
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
        replica, form_id = cast(tuple[Replica, int], event.value)
        if replica.forming is not None and replica.form_id == form_id:
            self._close(replica)

    def _close(self, replica: Replica) -> None:
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

    def _execute(self, replica: Replica, batch: list[Request]) -> None:
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

    def _lookup(self, replica: Replica, batch: list[Request]) -> float:
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
            batch = cast(tuple[Replica, list[Request]], event.value)[1]
            self.busy_s += self.sim.env.now - batch[0].started
        self._on_done(event)

    def _on_done(self, event: simpy.Event) -> None:
        replica, batch = cast(tuple[Replica, list[Request]], event.value)
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
