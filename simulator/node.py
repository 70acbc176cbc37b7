"""The shared node (`spec.node`): every piece of CPU work queues for one of the node's cores.

Measured on the real service (docs/serving.md, "Where the time goes"), a request's CPU is spread
over Ray's HTTP proxy, each handle hop and the replicas, and all of them share the node's few cores
with other processes. With a `node`, the engine runs each piece of CPU work — the proxy's handling
of a request and of its response, each handle hop, each batch's service time (merged `in_ranker`
work included) — through `Cpu.run`: it holds one of `cores` cores for `seconds / speed`, and work
that finds every core taken waits FIFO. The HTTP proxy is a `Proxy`: one actor that handles at most
`proxy_concurrency` requests at once, each of them also holding a core. A replica's work —
its batches, and the hops it calls — runs on its `ReplicaThread`: one piece at a time, on a core.

What it approximates: the OS scheduler shares cores in slices of a few ms among runnable threads
(closer to processor sharing); here a piece of work, once it has a core, keeps it until it ends
(non-preemptive FIFO). Throughput and utilisation at saturation are the same — the cores do the
same work — but a long batch delays short proxy work behind it more than a time-sliced scheduler
would, one piece of work never uses more than one core, and there is no priority (Ray's own
processes and `nice` levels are folded into `speed`, one fixed share for every core). A
parameter-store multi-get is I/O: it holds the batch's slot, not a core.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import simpy

from simulator.report import NodeStats
from simulator.spec import NodeSpec

__all__ = ["Callback", "Cpu", "Proxy", "ReplicaThread", "node_stats"]

Callback = Callable[[simpy.Event], None]


class _Meter:
    """Time-integral of `busy` servers and the waits before them, over the measurement window."""

    __slots__ = ("area", "busy", "env", "t_last", "wait_count", "wait_sum", "window")

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.busy = 0
        self.area = 0.0  # busy servers × seconds since the window opened
        self.t_last = 0.0
        self.wait_sum = 0.0
        self.wait_count = 0
        self.window = (0.0, 0.0, 0)  # (area, wait_sum, wait_count) when the window closed

    def open_window(self, now: float) -> None:
        self.t_last = now
        self.area = self.wait_sum = 0.0
        self.wait_count = 0

    def close_window(self, now: float) -> None:
        self.area += self.busy * (now - self.t_last)
        self.t_last = now
        self.window = (self.area, self.wait_sum, self.wait_count)


class Cpu(_Meter):
    """`cores` cores shared by all CPU work, FIFO and non-preemptive; a core runs at `speed`."""

    __slots__ = ("cores", "speed", "waiting")

    def __init__(self, env: simpy.Environment, cores: int, speed: float) -> None:
        super().__init__(env)
        self.cores = cores
        self.speed = speed
        self.waiting: deque[tuple[float, float, Any, tuple[Callback, ...]]] = deque()

    def run(self, seconds: float, value: Any, callbacks: tuple[Callback, ...]) -> None:
        """Hold a core for `seconds / speed` once one is free, then fire `callbacks` in order with
        an event whose value is `value`. Work of zero seconds needs no core."""
        if seconds <= 0.0:
            event = self.env.timeout(0.0, value)
            event.callbacks.extend(callbacks)
        elif self.busy < self.cores:
            self._start(self.env.now, seconds, value, callbacks)
        else:
            self.waiting.append((self.env.now, seconds, value, callbacks))

    def _start(
        self, queued: float, seconds: float, value: Any, callbacks: tuple[Callback, ...]
    ) -> None:
        now = self.env.now
        self.area += self.busy * (now - self.t_last)
        self.t_last = now
        self.busy += 1
        self.wait_sum += now - queued
        self.wait_count += 1
        event = self.env.timeout(seconds / self.speed, value)
        event.callbacks.append(self._release)
        event.callbacks.extend(callbacks)

    def _release(self, _event: simpy.Event) -> None:
        now = self.env.now
        self.area += self.busy * (now - self.t_last)
        self.t_last = now
        self.busy -= 1
        if self.waiting:
            self._start(*self.waiting.popleft())


class ReplicaThread:
    """A replica's one Python thread (one event loop, the GIL): the replica's CPU work runs one
    piece at a time, FIFO, each piece also holding a core of the node's `Cpu`."""

    __slots__ = ("busy", "cpu", "waiting")

    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.busy = False
        self.waiting: deque[tuple[float, Any, tuple[Callback, ...]]] = deque()

    def run(self, seconds: float, value: Any, callbacks: tuple[Callback, ...]) -> None:
        """`Cpu.run` once the thread is free."""
        if seconds <= 0.0:
            self.cpu.run(seconds, value, callbacks)
        elif self.busy:
            self.waiting.append((seconds, value, callbacks))
        else:
            self.busy = True
            self.cpu.run(seconds, value, (self._release, *callbacks))

    def run_after(
        self, delay: float, seconds: float, value: Any, callbacks: tuple[Callback, ...]
    ) -> None:
        """Wait `delay` holding neither the thread nor a core (I/O), then `run`."""
        if delay <= 0.0:
            self.run(seconds, value, callbacks)
            return
        self.cpu.env.timeout(delay).callbacks.append(
            lambda _event: self.run(seconds, value, callbacks)
        )

    def _release(self, _event: simpy.Event) -> None:
        if self.waiting:
            seconds, value, callbacks = self.waiting.popleft()
            self.cpu.run(seconds, value, (self._release, *callbacks))
        else:
            self.busy = False


class Proxy(_Meter):
    """Ray's HTTP proxy: one actor handling at most `concurrency` requests at once, each on a core.

    Requests wait FIFO in front of it. A response goes ahead of requests the proxy has not begun
    (FIFO among responses): it continues a request the proxy already holds, while a request not
    yet begun is still bytes in the socket's backlog — and finishing what is in flight first is
    what keeps an overloaded proxy completing requests instead of only accepting them.
    """

    __slots__ = ("concurrency", "cpu", "incoming", "responses")

    def __init__(self, env: simpy.Environment, cpu: Cpu, concurrency: int) -> None:
        super().__init__(env)
        self.cpu = cpu
        self.concurrency = concurrency
        self.incoming: deque[tuple[float, float, Any, Callback]] = deque()
        self.responses: deque[tuple[float, float, Any, Callback]] = deque()

    def handle(self, seconds: float, value: Any, callback: Callback) -> None:
        """A request on its way in: `seconds` of the proxy's CPU, then `callback`."""
        if self.busy < self.concurrency:
            self._admit(self.env.now, seconds, value, callback)
        else:
            self.incoming.append((self.env.now, seconds, value, callback))

    def respond(self, seconds: float, value: Any, callback: Callback) -> None:
        """A response on its way out: ahead of every request not yet begun."""
        if self.busy < self.concurrency:
            self._admit(self.env.now, seconds, value, callback)
        else:
            self.responses.append((self.env.now, seconds, value, callback))

    def _admit(self, queued: float, seconds: float, value: Any, callback: Callback) -> None:
        now = self.env.now
        self.area += self.busy * (now - self.t_last)
        self.t_last = now
        self.busy += 1
        self.wait_sum += now - queued
        self.wait_count += 1
        self.cpu.run(seconds, value, (self._release, callback))

    def _release(self, _event: simpy.Event) -> None:
        now = self.env.now
        self.area += self.busy * (now - self.t_last)
        self.t_last = now
        self.busy -= 1
        if self.responses:
            self._admit(*self.responses.popleft())
        elif self.incoming:
            self._admit(*self.incoming.popleft())


def node_stats(
    spec: NodeSpec, cpu: Cpu, proxy: Proxy, window_s: float, completed: int
) -> NodeStats:
    """The node's report over the measurement window (`completed`: completions inside it)."""
    core_s, core_wait_s, core_starts = cpu.window
    proxy_s, proxy_wait_s, proxy_starts = proxy.window
    return NodeStats(
        cores=spec.cores,
        speed=spec.speed,
        proxy_concurrency=spec.proxy_concurrency,
        cpu_utilisation=core_s / (spec.cores * window_s) if window_s > 0 else 0.0,
        # core-seconds held × the pipeline's share of a core: CPU seconds at full speed
        cpu_seconds_per_request=core_s * spec.speed / completed if completed else 0.0,
        mean_core_wait_s=core_wait_s / core_starts if core_starts else 0.0,
        proxy_utilisation=(proxy_s / (spec.proxy_concurrency * window_s) if window_s > 0 else 0.0),
        proxy_mean_queue_wait_s=proxy_wait_s / proxy_starts if proxy_starts else 0.0,
    )
