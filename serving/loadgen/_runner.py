"""Sending a plan on its schedule through `tritonclient.http`, one greenlet per request."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from serving.loadgen._plan import LoadPlan, RequestShape
from serving.loadgen._report import (
    OUTCOMES,
    LoadReport,
    Outcome,
    RequestRecords,
    classify_exception,
    summarize,
)
from simulator.errors import InputError

__all__ = ["check_loopback", "run_load"]

_TIMER_SLACK_S = 0.0015  # sleep through the event loop until this long before a send is due


def check_loopback(url: str) -> str:
    """`host:port[/path]` for tritonclient; an InputError unless the host is this machine.

    >>> check_loopback("http://127.0.0.1:8000"), check_loopback("[::1]:8000")
    ('127.0.0.1:8000', '[::1]:8000')
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise InputError(f"{url}: only http:// URLs are supported (got {parts.scheme}://)")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise InputError(f"{url}: the port is not a number") from None
    if port is None:
        raise InputError(f"{url}: name the port, e.g. http://127.0.0.1:8000")
    if host.lower() == "localhost":
        try:
            found = {info[4][0] for info in socket.getaddrinfo(host, port)}
        except OSError as exc:
            raise InputError(f"{url}: cannot resolve localhost ({exc})") from None
        addresses = [str(a).split("%")[0] for a in found]
    else:
        addresses = [host]
    for address in addresses:
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InputError(
                f"{url}: load tests may only target this machine (127.0.0.0/8, localhost or ::1)"
            )
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return netloc + parts.path.rstrip("/")


def run_load(
    url: str,
    plan: LoadPlan,
    *,
    model_name: str = "ctr",
    concurrency: int = 64,
    binary: bool = False,
    timeout_s: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Send `plan` to `url` (loopback only) on its schedule; stops at last send + `timeout_s`.

    A request times out when no response came within `timeout_s` of its scheduled send time;
    those still outstanding at the end are counted as timed out and abandoned.
    """
    target = check_loopback(url)
    if concurrency < 1:
        raise InputError(f"--concurrency must be >= 1 (got {concurrency})")
    if not 0 < timeout_s <= 120:
        raise InputError(f"--timeout must be in (0, 120] s (got {timeout_s})")
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        target,
        concurrency=concurrency,
        connection_timeout=min(timeout_s, 5.0),
        network_timeout=timeout_s,
    )
    try:
        _preflight(client, url, model_name, plan.shape)
        return _drive(
            client, httpclient, url, plan, model_name, concurrency, binary, timeout_s, progress
        )
    finally:
        client.close()


def _preflight(client: Any, url: str, model_name: str, shape: RequestShape) -> None:
    """Before the clock starts: is the server up, the model there, and does it take our shapes?"""
    try:
        live = client.is_server_live()
    except Exception as exc:
        raise InputError(
            f"{url}: no inference server answers ({type(exc).__name__}: {exc})"
        ) from None
    if not live:
        raise InputError(f"{url}: the server answers GET /v2/health/live with an error")
    try:
        meta = client.get_model_metadata(model_name)
    except Exception as exc:
        raise InputError(f"{url}: model {model_name!r} is not served ({exc})") from None
    columns = {i.get("name"): (i.get("shape") or [None, None])[-1] for i in meta.get("inputs", [])}
    ours = {"sparse_ids": shape.sparse_fields, "dense": shape.dense_features or None}
    for name, want in ours.items():
        theirs = columns.get(name)
        if theirs not in (want, -1):  # -1: any number of columns
            raise InputError(
                f"{url}: model {model_name!r} takes {name} with {theirs or 0} columns, the plan has "
                f"{want or 0}; pass --model DIR (the served model) or a matching --spec"
            )


def _drive(
    client: Any,
    httpclient: Any,
    url: str,
    plan: LoadPlan,
    model_name: str,
    concurrency: int,
    binary: bool,
    timeout_s: float,
    progress: Callable[[int, int], None] | None,
) -> LoadReport:
    import gevent  # type: ignore[import-untyped]

    # NOTE: each request is a greenlet calling the blocking `infer`, not `async_infer`: the latter
    # sleeps 10 ms after every submit (tritonclient 2.x), which would cap one sender at 100 req/s.
    records = RequestRecords.empty(plan.send_s)
    rows, dense_cols = plan.shape.rows, plan.shape.dense_features
    outputs = [httpclient.InferRequestedOutput("scores", binary_data=binary)]
    codes = {o: OUTCOMES.index(o) for o in Outcome}
    first_errors: dict[str, str] = {}
    counts = {"in_flight": 0, "max_in_flight": 0, "waited": 0, "done": 0}
    start = time.perf_counter() + 0.05
    deadline = start + float(plan.send_s[-1]) + timeout_s

    def one(i: int) -> None:
        scheduled = start + plan.send_s[i]
        records.lateness_s[i] = time.perf_counter() - scheduled
        counts["waited"] += counts["in_flight"] >= concurrency
        counts["in_flight"] += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], counts["in_flight"])
        try:
            inputs = [_input(httpclient, "sparse_ids", plan.sparse_ids[i].astype(np.int64), binary)]
            if dense_cols:
                inputs.append(_input(httpclient, "dense", plan.dense[i], binary))
            scores = client.infer(model_name, inputs, outputs=outputs).as_numpy("scores")
            outcome, status = Outcome.OK, 200
            if scores is None or scores.shape != (rows,):
                outcome = Outcome.BAD_RESPONSE
                shown = None if scores is None else list(scores.shape)
                first_errors.setdefault(outcome.value, f"scores came back with shape {shown}")
        except Exception as exc:
            outcome, status = classify_exception(exc)
            first_errors.setdefault(outcome.value, f"{type(exc).__name__}: {exc}"[:300])
        finally:
            counts["in_flight"] -= 1
        counts["done"] += 1
        latency = time.perf_counter() - scheduled
        if status:
            records.latency_s[i] = latency
            if latency > timeout_s:
                outcome = Outcome.TIMEOUT
        records.outcome[i], records.status[i] = codes[outcome], status

    greenlets = []
    next_progress = 0.0
    try:
        for i in range(len(plan)):
            target = start + plan.send_s[i]
            if (wait := target - time.perf_counter()) > _TIMER_SLACK_S:
                gevent.sleep(wait - _TIMER_SLACK_S)  # responses are handled meanwhile
            if (wait := target - time.perf_counter()) > 0:
                # NOTE: gevent's timers wake up to 1 ms late (epoll waits in whole ms); the last
                # stretch blocks the thread briefly instead (~0.1 ms precise, no spinning).
                time.sleep(wait)
            now = time.perf_counter()
            if now >= deadline:
                break
            greenlets.append(gevent.spawn(one, i))
            gevent.sleep(0)  # let it send now, so its lateness is what it says
            if progress is not None and now >= next_progress:
                progress(counts["done"], len(plan))
                next_progress = now + 0.1
        while counts["done"] < len(greenlets) and (left := deadline - time.perf_counter()) > 0:
            gevent.sleep(min(0.1, left))
            if progress is not None:
                progress(counts["done"], len(plan))
    finally:
        gevent.killall([g for g in greenlets if not g.dead], block=True, timeout=1.0)
    if progress is not None:
        progress(len(plan), len(plan))
    return LoadReport(
        url=url,
        model_name=model_name,
        offered_rps=plan.rate_rps,
        duration_s=plan.duration_s,
        seed=plan.seed,
        timeout_s=timeout_s,
        concurrency=concurrency,
        binary=binary,
        records=records,
        summary=summarize(records, plan.duration_s),
        request_shape=dataclasses.asdict(plan.shape),
        max_in_flight=counts["max_in_flight"],
        waited_for_connection=counts["waited"],
        first_errors=first_errors,
    )


def _input(httpclient: Any, name: str, array: np.ndarray[Any, Any], binary: bool) -> Any:
    """One `InferInput` holding `array` (INT64 or FP32), as binary data or as a JSON list."""
    tensor = httpclient.InferInput(
        name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32"
    )
    if binary:
        return tensor.set_data_from_numpy(array, binary_data=True)
    # NOTE: exactly what `set_data_from_numpy(array, binary_data=False)` stores, without its
    # per-element Python loop (~1-2 µs a value; a request of examples/ctr.yaml has 384 values).
    # A unit test pins the request body to the public path's.
    tensor._data = array.ravel().tolist()
    return tensor
