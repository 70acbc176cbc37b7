"""Served throughput of the example CTR pipeline on Ray Serve, against the bare dense model.

One run on this machine measures
  (a) the dense model in a bare torch loop at its best batch size and thread count: rows/s, and
      requests/s at the spec's rows per request — the limit;
  (b) the served throughput with Ray Serve's defaults (max_batch_size 10, batch_wait_timeout_s
      0.01, max_ongoing_requests 5, one replica per stage, no cache, the feature stage on its own);
  (c) the same with a tuned config (`TUNED`, or `--tuned stage.knob=v ...` on top of the defaults);
and prints (b)/(a), (c)/(a) and (c)/(b).

"Served throughput" is the highest offered Poisson rate whose p99 latency (from the scheduled send
time, `serving.loadgen`) is within the spec's SLO with fewer errors than its `max_shed_rate`
(0.1 %). Where no rate meets the SLO (the latency floor of Ray's hops on a busy 2-core machine can
sit above it), the column beside it still compares the configs: the highest rate each keeps up
with (p99 ≤ `KEEPS_UP_P99_S`, same error bound; beyond it the queue grows until requests time
out). Per config, the keep-up search runs first — a ramp ×2 from `--start-rps` until a rate fails
(÷2 while none passes), then bisection in log rate until the bracket is within 8 % — and its
probes seed the SLO's search, which goes on the same way (not below `--min-rps`); at most
`--max-probes` probes of each. Both configs are deployed side by side as two Serve applications
(`/defaults`, `/tuned`, one HTTP proxy) and their probes alternate, so the two searches see the
same neighbours on this shared machine rather than whatever ran during one half of the run; the
idle application's CPU is reported. A probe lasts `--probe-s` seconds, longer at low rates (up to
twice that) for enough samples of the tail.

Where the time goes, per probe (`benchmarks/serving_breakdown.py`): CPU seconds of every process
on the machine by role (/proc: the HTTP proxy, each replica, Ray's own processes, the load client,
everything else), and the deltas of Ray's and jizhi's histograms on the metrics port (proxy
latency, per-deployment processing latency, batch wait, lookup and model time). Ray 2.60 exports a
histogram's `_sum` from bucket midpoints, so those means are approximations at bucket resolution;
counts are exact. Shown at the highest rate each config keeps up with and the next one up
(overloaded), next to a request's own work measured in this process without Ray (the feature
lookup and the dense model).

The load client runs in up to `MAX_CLIENTS` processes (one per `CLIENT_RPS` req/s offered; one
client costs ~0.6-0.9 ms CPU per request) on the same 2 cores as the server: its CPU is reported,
not hidden. Requests use tritonclient's binary-data extension (its default).

The script starts a loopback Ray head (as `jizhi serve` does) unless one answers, and stops it at
the end if it started it. Its head runs Ray's workers at niceness `--ray-niceness` (default 0:
Ray's default, 15, lets anything else on a shared machine — including the load client — take the
CPU from the server first) and reports metrics every second. Bounded: loopback only, at most
`--max-probes` probes per config and criterion, a request times out after `TIMEOUT_S`, and the
searches stop when `--budget-s` is spent. Seeded: a seed fixes every probe's send times and
payloads.

Run:  .venv/bin/python benchmarks/serving_throughput.py          (about 10 minutes)
      .venv/bin/python benchmarks/serving_throughput.py --tuned ranker.max_batch_size=64 ...
Writes out/serving_throughput.json and out/serving_throughput.png.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving_breakdown import (  # noqa: E402
    OTHERS,
    breakdown,
    cpu_by_role,
    cpu_snapshot,
    metric_deltas,
    print_breakdown,
    scrape,
)

from serving import cluster  # noqa: E402
from serving.deploy import HTTP_PORT, serve_config  # noqa: E402
from simulator import PipelineSpec, ServingConfig, apply_config, apply_overrides, load_spec  # noqa: E402
from simulator.spec import Resources  # noqa: E402

URL = f"http://127.0.0.1:{HTTP_PORT}"
TIMEOUT_S = 2.0  # a request slower than this is a timeout (an error), far beyond any SLO here
CLIENT_RPS = 300.0  # offered req/s per load-client process
MAX_CLIENTS = 3
CONNECTIONS = 64  # HTTP connections per client process
MIN_PROBE_REQUESTS = 800  # a probe lasts long enough for this many requests, up to 2 × --probe-s
REPLICA_CPUS = 1.0  # Ray Serve's default num_cpus per replica; logical, and 1 torch thread
RAMP = 2.0
TOLERANCE = 0.08  # stop bisecting when fail/pass < 1 + TOLERANCE
SETTLE_S = 2.5  # metrics are reported every second: wait this long before reading them
IDLE_S = 6.0  # the no-load window that measures everyone's background CPU
OTHERS_WARN = 0.15  # warn when processes not ours took more than this share of the machine
KEEPS_UP_P99_S = 0.5  # "keeps up": the queue stays bounded (an overloaded probe hits the timeout)
RAW_BATCH_ROWS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
RAW_THREADS = (1, 2)

# Ray Serve's defaults, one replica per stage, no cache, the feature stage its own deployment.
# max_batch_size 10 with max_ongoing_requests 5 is what Ray does by default: it only warns, every
# batch is capped at 5 and waits the whole timeout for the 10 it never gets (BRIEF §3).
DEFAULTS = (
    "ingress.replicas=1",
    "ingress.max_ongoing_requests=5",
    "ingress.max_queued_requests=-1",
    "features.replicas=1",
    "features.max_ongoing_requests=5",
    "features.max_queued_requests=-1",
    "features.cache_policy=none",
    "features.cache_capacity=0",
    "features.in_ranker=false",
    "ingress.in_ranker=false",
    "ranker.replicas=1",
    "ranker.max_ongoing_requests=5",
    "ranker.max_queued_requests=-1",
    "ranker.max_batch_size=10",
    "ranker.batch_wait_timeout_s=0.01",
    "ranker.max_concurrent_batches=1",
)
# The tuned config, from what this script measures (docs/serving.md, "Throughput benchmark"):
# on 2 shared cores the binding resource is CPU, and most of it goes to Ray's per-request hops, not
# to the model or the lookups. So: the lookup and the protocol inside the ranker (one deployment
# instead of three: no handle hop at all, one multi-get per batch); in-flight limits that never hold a request back from an idle replica
# (max_ongoing ≥ batch); a short batch wait (batching saves little CPU here, since every request
# still pays its own hop, and waiting only adds latency); no cache in front of the memory-mapped
# table (measured slower than the table itself: the cache pays off in front of Redis).
TUNED = (
    *DEFAULTS,
    "ingress.max_ongoing_requests=64",
    "features.in_ranker=true",
    "ingress.in_ranker=true",
    "ranker.max_ongoing_requests=64",
    "ranker.max_batch_size=32",
    "ranker.batch_wait_timeout_s=0.002",
)
APPS = ("defaults", "tuned")


def say(message: str) -> None:
    print(message, flush=True)


# --- (a) the dense model in a bare loop, and a request's own work without Ray --------------------


def raw_dense(model_dir: Path, rows_per_request: int, seconds: float = 0.2) -> dict[str, Any]:
    """Rows/s of the TorchScript dense part per (threads, batch rows): best of 3 timed windows."""
    import torch

    from serving.models import read_artifact

    art = read_artifact(model_dir)
    meta = art.metadata
    fields, dim, n_dense = len(meta.sparse_fields), meta.embedding_dim, len(meta.dense_features)
    model = art.dense_torchscript()
    generator = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    table: dict[str, dict[str, float]] = {}
    try:
        with torch.inference_mode():
            for threads in RAW_THREADS:
                torch.set_num_threads(threads)
                row: dict[str, float] = {}
                for rows in RAW_BATCH_ROWS:
                    pooled = torch.randn(rows, fields, dim, generator=generator)
                    dense = torch.randn(rows, n_dense, generator=generator)
                    for _ in range(5):
                        model(pooled, dense)
                    best = 0.0
                    for _ in range(3):
                        calls, started = 0, time.perf_counter()
                        while (elapsed := time.perf_counter() - started) < seconds:
                            model(pooled, dense)
                            calls += 1
                        best = max(best, calls * rows / elapsed)
                    row[str(rows)] = best
                table[str(threads)] = row
                top = max(row, key=lambda k: row[k])
                say(f"  {threads} torch thread(s): best {row[top]:,.0f} rows/s at {top} rows/batch")
    finally:
        torch.set_num_threads(before)
    threads_best, rows_best = max(
        ((t, r) for t in table for r in table[t]), key=lambda tr: table[tr[0]][tr[1]]
    )
    rows_per_s = table[threads_best][rows_best]
    return {
        "rows_per_s": rows_per_s,
        "requests_per_s": rows_per_s / rows_per_request,
        "best_batch_rows": int(rows_best),
        "best_threads": int(threads_best),
        "rows_per_s_by_threads_and_batch": table,
        "torch": torch.__version__,
    }


def components(model_dir: Path, plan_ids: np.ndarray, batch_requests: int = 32) -> dict[str, float]:
    """CPU ms per request of a request's own work, in this process without Ray: the feature
    lookup (memory-mapped table, no cache) and the dense model (1 thread), one request at a time
    and in batches of `batch_requests` requests."""
    import torch

    from serving.features import FeatureLookup
    from serving.models import read_artifact
    from serving.stores import open_store

    art = read_artifact(model_dir)
    store = open_store(str(art.file("embeddings")), art.config.embedding_dim)
    lookup = FeatureLookup(store, art.popularity_rank(), "none", 0)
    model = art.dense_torchscript()
    rng = np.random.default_rng(0)
    n_dense = len(art.metadata.dense_features)
    out: dict[str, float] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for label, size in (("1", 1), (str(batch_requests), batch_requests)):
                batches = [
                    plan_ids[i : i + size].reshape(-1, plan_ids.shape[-1])
                    for i in range(0, len(plan_ids) - size + 1, size)
                ][: max(20, 2000 // size)]
                dense = torch.from_numpy(
                    rng.standard_normal((batches[0].shape[0], n_dense), dtype=np.float32)
                )
                for ids in batches[:3]:  # warm-up
                    model(torch.from_numpy(lookup.lookup(ids)[0]), dense)
                started = time.process_time()
                vectors = [lookup.lookup(ids)[0] for ids in batches]
                lookup_s = time.process_time() - started
                started = time.process_time()
                for v in vectors:
                    model(torch.from_numpy(v), dense)
                model_s = time.process_time() - started
                requests = len(batches) * size
                out[f"lookup_ms_per_request_batch_{label}"] = lookup_s / requests * 1e3
                out[f"model_ms_per_request_batch_{label}"] = model_s / requests * 1e3
    finally:
        torch.set_num_threads(before)
    return out


# --- the load: client processes ---------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _client_init(model_dir: str, spec_path: str, niceness: int) -> None:
    from serving.loadgen import RequestShape, model_request_shape

    if niceness:
        os.nice(niceness)
    shape = RequestShape.from_workload(load_spec(spec_path).workload)
    _WORKER["shape"], _WORKER["key_of_rank"], _ = model_request_shape(shape, Path(model_dir))


def _client_run(task: dict[str, Any]) -> dict[str, Any]:
    from serving.loadgen import plan_requests, run_load

    plan = plan_requests(
        _WORKER["shape"],
        task["rate"],
        task["duration"],
        task["seed"],
        key_of_rank=_WORKER["key_of_rank"],
    )
    time.sleep(max(0.0, task["start_at"] - time.time()))  # the clients start together
    cpu = time.process_time()
    report = run_load(task["url"], plan, binary=True, concurrency=CONNECTIONS, timeout_s=TIMEOUT_S)
    r = report.records
    return {
        "records": (r.scheduled_s, r.lateness_s, r.latency_s, r.outcome, r.status),
        "cpu_s": time.process_time() - cpu,
        "waited_for_connection": report.waited_for_connection,
        "first_errors": report.first_errors,
    }


@dataclass(frozen=True)
class Criterion:
    """What a probe must show to pass: p99 latency and error rate bounds."""

    name: str
    p99_s: float
    max_errors: float

    def __call__(self, p: Probe) -> bool:
        s = p.summary
        p99 = s["latency_s"]["p99"]
        errors = (s["requests"] - s["ok"]) / max(1, s["requests"])
        return p99 is not None and p99 <= self.p99_s and errors < self.max_errors


@dataclass
class Probe:
    app: str
    rate: float
    duration: float
    summary: dict[str, Any]
    clients: int
    cpu: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)

    def others_share(self) -> float:
        capacity = self.cpu["wall_s"] * self.cpu["cores"]
        return self.cpu["by_role_s"].get(OTHERS, 0.0) / capacity if capacity else 0.0

    def to_dict(self, criteria: Sequence[Criterion]) -> dict[str, Any]:
        return {
            "offered_rps": self.rate,
            "duration_s": self.duration,
            "passes": {c.name: c(self) for c in criteria},
            "clients": self.clients,
            "summary": self.summary,
            "cpu": self.cpu,
            "metrics": self.metrics,
            "first_errors": self.first_errors,
        }


class LoadDriver:
    """Offers a Poisson rate to one application through client processes; measures the window."""

    def __init__(self, model_dir: Path, spec_path: Path, niceness: int) -> None:
        self.pool = mp.get_context("spawn").Pool(
            MAX_CLIENTS,
            initializer=_client_init,
            initargs=(str(model_dir), str(spec_path), niceness),
        )

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def probe(self, app: str, rate: float, duration: float, seed: int) -> Probe:
        from serving.loadgen import RequestRecords, summarize

        clients = min(MAX_CLIENTS, max(1, math.ceil(rate / CLIENT_RPS)))
        start_at = time.time() + 1.0  # planning and the preflight happen before this
        tasks = [
            {
                "url": f"{URL}/{app}",
                "rate": rate / clients,
                "duration": duration,
                "seed": seed * 100 + i,
                "start_at": start_at,
            }
            for i in range(clients)
        ]
        metrics_before = scrape(app)
        cpu_before = cpu_snapshot()
        results = self.pool.map(_client_run, tasks, chunksize=1)
        cpu_after = cpu_snapshot()
        time.sleep(SETTLE_S)
        metrics_after = scrape(app)
        columns = [np.concatenate([r["records"][i] for r in results]) for i in range(5)]
        summary = summarize(RequestRecords(*columns), duration)
        summary["client_cpu_ms_per_request"] = (
            sum(r["cpu_s"] for r in results) / max(1, summary["sent"]) * 1e3
        )
        summary["waited_for_connection"] = sum(r["waited_for_connection"] for r in results)
        first_errors: dict[str, str] = {}
        for r in results:
            for k, v in r["first_errors"].items():
                first_errors.setdefault(k, v)
        return Probe(
            app=app,
            rate=rate,
            duration=duration,
            summary=summary,
            clients=clients,
            cpu=cpu_by_role(cpu_before, cpu_after),
            metrics=metric_deltas(metrics_before, metrics_after),
            first_errors=first_errors,
        )


# --- serving configs --------------------------------------------------------------------------------


def app_config(
    spec: PipelineSpec, model_dir: Path, assignments: Sequence[str], name: str
) -> dict[str, Any]:
    """One application of the Serve config file (as `jizhi serve` deploys it, at route /NAME)
    for the spec with `assignments`, one logical CPU per replica. A max_batch_size above
    max_ongoing_requests (Ray's own defaults) is deployed as Ray runs it, although `serve_config`
    refuses to write it."""
    base, overrides = apply_overrides(spec, ServingConfig(), list(assignments))
    configured = apply_config(base, overrides)
    stages = [
        s.model_copy(update={"resources": Resources(cpu=REPLICA_CPUS)}) for s in configured.stages
    ]
    ranker = stages[-1]
    wanted = ranker.max_batch_size
    capped = max(1, min(wanted, ranker.max_ongoing_requests // ranker.max_concurrent_batches))
    stages[-1] = ranker.model_copy(update={"max_batch_size": capped})
    config = serve_config(configured.model_copy(update={"stages": stages}), str(model_dir))
    app: dict[str, Any] = config["applications"][0]
    for deployment in app["deployments"]:
        if deployment["name"] == "Ranker":
            deployment["user_config"]["max_batch_size"] = wanted
    return {**config, "applications": [{**app, "name": name, "route_prefix": f"/{name}"}]}


def deploy(configs: list[dict[str, Any]]) -> float:
    """Deploy the applications of `configs` together (one Serve config); seconds until running."""
    started = time.monotonic()
    config = {**configs[0], "applications": [c["applications"][0] for c in configs]}
    since = cluster.deploy(config)
    for c in configs:
        cluster.wait_running(c["applications"][0]["name"], since=since, timeout_s=300)
    return time.monotonic() - started


def infer_once(app: str, ids: np.ndarray, dense: np.ndarray, timeout: float = 10.0) -> float:
    """One JSON request on a fresh connection; its latency in seconds."""
    inputs = [
        {"name": "sparse_ids", "shape": list(ids.shape), "datatype": "INT64"},
        {"name": "dense", "shape": list(dense.shape), "datatype": "FP32"},
    ]
    inputs[0]["data"], inputs[1]["data"] = ids.ravel().tolist(), dense.ravel().tolist()
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(f"{URL}/{app}/v2/models/ctr/infer", data=body, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
    return time.perf_counter() - started


def wait_idle(app: str, ids: np.ndarray, dense: np.ndarray, limit_s: float = 20.0) -> None:
    """Until two requests in a row come back within 0.2 s (whatever an overloaded probe left
    queued has drained), at most `limit_s`."""
    deadline, good = time.monotonic() + limit_s, 0
    while time.monotonic() < deadline and good < 2:
        try:
            good = good + 1 if infer_once(app, ids, dense) <= 0.2 else 0
        except (urllib.error.URLError, OSError):
            good = 0
            time.sleep(0.5)


class Search:
    """The highest rate that passes `criterion`, from the probes it is given: ramp ×RAMP from
    `start` until a rate fails, or ÷RAMP while none passes (not below `min_rate`); then bisect in
    log rate until fail/pass < 1 + TOLERANCE. At most `max_probes` probes of its own; probes of an
    earlier search (`add(p, own=False)`) count as evidence too."""

    def __init__(
        self, criterion: Criterion, start: float, min_rate: float, max_rate: float, max_probes: int
    ) -> None:
        self.criterion = criterion
        self.start, self.min_rate, self.max_rate = start, min_rate, max_rate
        self.max_probes, self.own = max_probes, 0
        self.seen: list[Probe] = []

    def add(self, probe: Probe, own: bool = True) -> None:
        self.seen.append(probe)
        self.own += own

    @property
    def good(self) -> float | None:
        return max((p.rate for p in self.seen if self.criterion(p)), default=None)

    @property
    def bad(self) -> float | None:
        floor = self.good or 0.0
        failing = [p.rate for p in self.seen if not self.criterion(p) and p.rate > floor]
        return min(failing, default=None)

    def propose(self) -> float | None:
        if self.own >= self.max_probes:
            return None
        if not self.seen:
            return self.start
        good, bad = self.good, self.bad
        if good is None:  # nothing passes yet: go down
            lower = min(p.rate for p in self.seen) / RAMP
            return lower if lower >= self.min_rate else None
        if bad is None:  # nothing above passes... or fails yet: go up
            return min(self.max_rate, good * RAMP) if good < self.max_rate else None
        return None if bad / good < 1 + TOLERANCE else math.sqrt(good * bad)

    @property
    def resolved(self) -> bool:
        """The answer is known to the tolerance (or: nothing passes down to `min_rate`, or
        everything up to `max_rate` does)."""
        good, bad = self.good, self.bad
        if good is None:
            return bool(self.seen) and min(p.rate for p in self.seen) / RAMP < self.min_rate
        return good >= self.max_rate or (bad is not None and bad / good < 1 + TOLERANCE)


def _ms(seconds: float | None) -> str:
    return "   >2 s" if seconds is None else f"{seconds * 1e3:7.1f}"


def probe_line(p: Probe, criteria: Sequence[Criterion]) -> str:
    s = p.summary
    lat, late = s["latency_s"], s["lateness_s"]
    errors = s["requests"] - s["ok"]
    others = p.others_share()
    warn = f"  [others took {others:.0%} of the CPU]" if others > OTHERS_WARN else ""
    verdict = ", ".join(f"{c.name} {'yes' if c(p) else 'NO'}" for c in criteria)
    return (
        f"{p.app:8s} {p.rate:6.1f} req/s ({p.duration:.0f} s): p50 {_ms(lat['p50'])} p99 "
        f"{_ms(lat['p99'])} ms, errors {errors}/{s['requests']}, client late p99 "
        f"{_ms(late['p99'])} ms → {verdict}{warn}"
    )


# --- the plot ---------------------------------------------------------------------------------------


def write_plot(path: Path, served: dict[str, Any], slo: Criterion, keeps_up: Criterion) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    colors = {"defaults": "tab:red", "tuned": "tab:blue"}
    ceiling = TIMEOUT_S * 1e3
    for name, result in served.items():
        probes = sorted(result["probes"], key=lambda q: q["offered_rps"])
        rates = [q["offered_rps"] for q in probes]

        def ms(q: dict[str, Any], p: str) -> float:
            value = q["summary"]["latency_s"][p]
            return ceiling if value is None else value * 1e3

        color = colors.get(name)
        p99 = [ms(q, "p99") for q in probes]
        ax.plot(rates, p99, "-", color=color, label=f"{name}: p99")
        ax.plot(
            rates,
            [ms(q, "p50") for q in probes],
            "--",
            color=color,
            alpha=0.6,
            label=f"{name}: p50",
        )
        for rate, y, q in zip(rates, p99, probes, strict=True):
            if q["passes"][slo.name]:
                ax.plot([rate], [y], "o", color=color, markersize=7)
            elif q["passes"][keeps_up.name]:
                ax.plot([rate], [y], "o", color=color, markerfacecolor="white", markersize=7)
            else:
                ax.plot([rate], [y], "x", color="black", markersize=8)
    ax.axhline(
        slo.p99_s * 1e3, color="gray", linestyle="-.", label=f"SLO p99 {slo.p99_s * 1e3:g} ms"
    )
    ax.axhline(
        keeps_up.p99_s * 1e3,
        color="gray",
        linestyle=":",
        label=f"keeps up: p99 {keeps_up.p99_s * 1e3:g} ms",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (req/s, Poisson)")
    ax.set_ylabel(f"latency, ms ({ceiling:g} = timed out)")
    ax.set_title(
        "jizhi on Ray Serve, 2 shared cores: latency vs offered load\n"
        "filled: meets the SLO; hollow: keeps up only; x: overloaded",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "ctr.yaml")
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "model")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "serving_throughput.json")
    parser.add_argument(
        "--tuned",
        nargs="+",
        metavar="STAGE.KNOB=V",
        help="the tuned config's knobs, on top of the defaults (default: the script's TUNED)",
    )
    parser.add_argument("--probe-s", type=float, default=12.0, help="seconds of load per probe")
    parser.add_argument("--start-rps", type=float, default=20.0)
    parser.add_argument("--min-rps", type=float, default=2.0)
    parser.add_argument("--max-rps", type=float, default=MAX_CLIENTS * CLIENT_RPS)
    parser.add_argument("--max-probes", type=int, default=7, help="per config and criterion")
    parser.add_argument("--budget-s", type=float, default=720.0, help="stop searching after this")
    parser.add_argument("--ray-niceness", type=int, default=0, help="of the head it starts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-raw", action="store_true", help="no (a): serving only")
    args = parser.parse_args(argv)

    os.chdir(ROOT)  # `serving.cluster` keeps its state under ./.jizhi
    began = time.monotonic()
    model_dir = args.model.resolve()
    spec = load_spec(str(args.spec))
    max_errors = max(spec.slo.max_shed_rate, 1e-9)
    slo = Criterion("slo", spec.slo.p99_s, max_errors)
    keeps_up = Criterion("keeps_up", KEEPS_UP_P99_S, max_errors)
    criteria = (slo, keeps_up)
    rows = spec.workload.rows_per_request
    assignments = {"defaults": DEFAULTS, "tuned": (*DEFAULTS, *args.tuned) if args.tuned else TUNED}
    say(
        f"serving benchmark: {args.spec.name}, model {args.model}; SLO p99 ≤ {slo.p99_s * 1e3:g} "
        f"ms with < {max_errors:.1%} errors; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    results: dict[str, Any] = {
        "machine_at_start": machine(),
        "spec": str(args.spec),
        "model": str(model_dir),
        "criteria": {c.name: {"p99_s": c.p99_s, "max_error_rate": c.max_errors} for c in criteria},
        "rows_per_request": rows,
        "probe_s": args.probe_s,
        "timeout_s": TIMEOUT_S,
        "seed": args.seed,
        "ray_niceness": args.ray_niceness,
    }

    from serving.loadgen import RequestShape, model_request_shape, plan_requests

    shape, key_of_rank, _ = model_request_shape(
        RequestShape.from_workload(spec.workload), model_dir
    )
    sample = plan_requests(shape, 200.0, 10.0, args.seed, key_of_rank=key_of_rank)
    ids0, dense0 = sample.sparse_ids[0].astype(np.int64), sample.dense[0]

    if not args.skip_raw:
        say("\n(a) the dense model in a bare torch loop (TorchScript, inference mode):")
        results["raw"] = raw_dense(model_dir, rows)
        c = results["components"] = components(model_dir, sample.sparse_ids.astype(np.int64))
        say(
            "  a request's own work without Ray, CPU ms per request (alone / in batches of 32): "
            f"lookup {c['lookup_ms_per_request_batch_1']:.3f} / "
            f"{c['lookup_ms_per_request_batch_32']:.3f}, dense model "
            f"{c['model_ms_per_request_batch_1']:.3f} / {c['model_ms_per_request_batch_32']:.3f}"
        )

    # Ray reads its settings from RAY_<name>, in the setting's own case.
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)  # noqa: SIM112
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112
    say("\nstarting a loopback Ray head (unless one answers) ...")
    started_head = cluster.ensure_head(num_cpus=2 * 3 * REPLICA_CPUS + 1)
    say("  started one" if started_head else "  using the Ray head that was running")
    driver = LoadDriver(model_dir, args.spec, args.ray_niceness if started_head else 0)
    idle: dict[str, Any] | None = None
    searches = {
        name: [
            Search(c, args.start_rps, args.min_rps, args.max_rps, args.max_probes)
            for c in (keeps_up, slo)  # the capacity first: its probes seed the SLO's search
        ]
        for name in APPS
    }
    phase = dict.fromkeys(APPS, 0)
    probes: dict[str, list[Probe]] = {name: [] for name in APPS}
    configs = [app_config(spec, model_dir, assignments[name], name) for name in APPS]
    try:
        for name in APPS:
            changed = " ".join(assignments[name][len(DEFAULTS) :]) or "Ray Serve's defaults"
            say(f"  {name} at {URL}/{name}: {changed}")
        say(f"  running both after {deploy(configs):.1f} s; warming up ...")
        for name in APPS:
            wait_idle(name, ids0, dense0)
            driver.probe(name, args.start_rps, 3.0, args.seed + 999)
        say(f"  what everything takes with no load ({IDLE_S:g} s) ...")
        before = cpu_snapshot()
        time.sleep(IDLE_S)
        idle = results["idle_cpu"] = cpu_by_role(before, cpu_snapshot())
        ours = sum(v for k, v in idle["by_role_s"].items() if k != OTHERS) / idle["wall_s"]
        theirs = idle["by_role_s"][OTHERS] / idle["wall_s"]
        say(f"  idle: Ray and both apps {ours:.2f} cores, processes not ours {theirs:.2f} cores")
        say(
            f"\n(b) defaults and (c) tuned, probes alternating: first the highest rate each keeps "
            f"up with (p99 ≤ {keeps_up.p99_s:g} s), then the highest within the SLO"
        )
        step = 0
        while time.monotonic() - began < args.budget_s:
            progressed = False
            for i, name in enumerate(APPS):
                rate = None
                while phase[name] < len(criteria):
                    search = searches[name][phase[name]]
                    if (rate := search.propose()) is not None:
                        break
                    phase[name] += 1
                    if phase[name] < len(criteria):
                        for p in probes[name]:
                            searches[name][phase[name]].add(p, own=False)
                if rate is None:
                    continue
                duration = min(2 * args.probe_s, max(args.probe_s, MIN_PROBE_REQUESTS / rate))
                wait_idle(name, ids0, dense0)
                probe = driver.probe(name, rate, duration, args.seed * 1000 + 10 * step + i)
                probes[name].append(probe)
                searches[name][phase[name]].add(probe)
                say(f"  {probe_line(probe, criteria)}")
                progressed = True
            step += 1
            if not progressed:
                break
        else:
            say("  time budget spent: the searches stop here")
    finally:
        driver.close()
        if started_head:
            say("\nstopping the Ray head this run started ...")
            cluster.stop_head()

    served: dict[str, Any] = {}
    for name, (capacity, within_slo) in searches.items():
        seen = {id(p) for p in within_slo.seen}
        for p in probes[name]:  # the SLO search may not have started: give it every probe
            if id(p) not in seen:
                within_slo.add(p, own=False)
        by_rate = sorted(probes[name], key=lambda p: p.rate)
        top = next((p for p in reversed(by_rate) if p.rate == capacity.good), None)
        over = next((p for p in by_rate if not keeps_up(p) and p.rate > (capacity.good or 0)), None)
        best = next((p for p in reversed(by_rate) if p.rate == within_slo.good), None)
        served[name] = {
            "assignments": list(assignments[name]),
            "serve_config": next(c for c in configs if c["applications"][0]["name"] == name),
            "slo_rps": within_slo.good or 0.0,
            "slo_resolved": within_slo.resolved,
            "keeps_up_rps": capacity.good or 0.0,
            "keeps_up_resolved": capacity.resolved,
            "p50_at_lowest_rate_s": by_rate[0].summary["latency_s"]["p50"] if by_rate else None,
            "lowest_rate": by_rate[0].rate if by_rate else None,
            "probes": [p.to_dict(criteria) for p in probes[name]],
            "breakdown_keeps_up": breakdown(top, idle, APPS) if top else None,
            "breakdown_overloaded": breakdown(over, idle, APPS) if over else None,
            "breakdown_slo": breakdown(best, idle, APPS) if best else None,
        }
    results["served"] = served
    results["machine_at_end"] = machine()
    results["elapsed_s"] = time.monotonic() - began
    report(results, slo, keeps_up, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    plot = args.out.with_suffix(".png")
    if not any(result["probes"] for result in served.values()):
        say(f"\nno probe ran within --budget-s {args.budget_s:g}: wrote {args.out}, no plot")
        return 0
    write_plot(plot, served, slo, keeps_up)
    say(f"\nwrote {args.out} and {plot} ({results['elapsed_s'] / 60:.1f} min in all)")
    return 0


def report(results: dict[str, Any], slo: Criterion, keeps_up: Criterion, rows: int) -> None:
    served, raw = results["served"], results.get("raw")
    say("\n" + "=" * 96)
    say(
        f"{'':34s}{'p99 ≤ ' + f'{slo.p99_s * 1e3:g} ms (SLO)':>24s}"
        f"{'keeps up: p99 ≤ ' + f'{keeps_up.p99_s:g} s':>24s}   p50 at the lowest rate"
    )
    say(f"{'':34s}{'req/s':>12s}{'rows/s':>12s}{'req/s':>12s}{'rows/s':>12s}")
    if raw:
        rps, rs = raw["requests_per_s"], raw["rows_per_s"]
        say(
            f"{'(a) dense model, bare torch loop':34s}{rps:12,.0f}{rs:12,.0f}{'':24s}   "
            f"(batch {raw['best_batch_rows']} rows, {raw['best_threads']} thread)"
        )
    labels = {"defaults": "(b) served, Ray Serve defaults", "tuned": "(c) served, tuned"}
    for name, label in labels.items():
        r = served[name]
        a, b = r["slo_rps"], r["keeps_up_rps"]
        marks = ("" if r["slo_resolved"] else "?", "" if r["keeps_up_resolved"] else "?")
        p50 = r["p50_at_lowest_rate_s"]
        floor = "" if p50 is None else f"{p50 * 1e3:.0f} ms at {r['lowest_rate']:g} req/s"
        say(
            f"{label:34s}{a:11,.1f}{marks[0]:1s}{a * rows:12,.0f}{b:11,.1f}{marks[1]:1s}"
            f"{b * rows:12,.0f}   {floor}"
        )
    say("-" * 96)
    a = raw["requests_per_s"] if raw else None
    ratios: dict[str, dict[str, float | None]] = {}
    for key, column in (("slo_rps", "at the SLO"), ("keeps_up_rps", "keeping up")):
        b, c = served["defaults"][key], served["tuned"][key]
        ratios[column] = {
            "(b)/(a)": b / a if a and b else None,
            "(c)/(a)": c / a if a and c else None,
            "(c)/(b)": c / b if b and c else None,
        }

    def shown(label: str, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f}×" if label == "(c)/(b)" else f"{value:.3%}"

    for label in ("(b)/(a)", "(c)/(a)", "(c)/(b)"):
        say(
            f"{label:34s}{shown(label, ratios['at the SLO'][label]):>24s}"
            f"{shown(label, ratios['keeping up'][label]):>24s}"
        )
    for column, values in ratios.items():
        value = values["(c)/(b)"]
        verdict = (
            "n/a (defaults serve nothing)" if value is None else ("met" if value >= 2 else "MISSED")
        )
        say(f"target tuned ≥ 2× defaults, {column}: {verdict}")
    say("? = the search ran out of probes or time before resolving this to 8 %")
    results["ratios"] = ratios
    say("=" * 96)
    say("\nwhere the time goes:")
    for name in served:
        for key, what in (
            ("breakdown_keeps_up", "at the highest rate it keeps up with"),
            ("breakdown_overloaded", "overloaded, the next rate up"),
        ):
            if served[name][key]:
                print_breakdown(f"{name}, {what}", served[name][key])


if __name__ == "__main__":
    sys.exit(main())
