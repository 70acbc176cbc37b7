"""The load generator: the plan (Poisson, Zipf, seeded), the loopback guard, the summary and error
classification on synthetic records, and end-to-end runs against a real local HTTP server that
speaks the inference protocol through `serving.protocol`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from geventhttpclient.response import HTTPConnectionClosed
from scipy import stats
from tritonclient.utils import InferenceServerException

from jizhi.cli import main
from serving.loadgen import (
    LoadReport,
    Outcome,
    RequestRecords,
    RequestShape,
    check_loopback,
    classify_exception,
    classify_status,
    model_request_shape,
    plan_requests,
    run_load,
    summarize,
)
from serving.loadgen._report import OUTCOMES
from serving.loadgen._runner import _input
from serving.models import ModelArtifact
from serving.protocol import (
    BINARY_HEADER,
    ModelSignature,
    ProtocolError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from simulator import load_spec
from simulator.errors import InputError
from simulator.zipf import zipf_probabilities
from tests.conftest import EXAMPLES

CTR = RequestShape.from_workload(load_spec(EXAMPLES / "ctr.yaml").workload)  # 32 rows × 8 ids + 4
SMALL = RequestShape(rows=4, sparse_fields=3, dense_features=2, vocab_size=1000, zipf_alpha=1.0)


# --- the plan -------------------------------------------------------------------------------------


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    a, b = plan_requests(SMALL, 300, 2, seed=7), plan_requests(SMALL, 300, 2, seed=7)
    c = plan_requests(SMALL, 300, 2, seed=8)
    for name in ("send_s", "sparse_ids", "dense"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.sparse_ids[:10], c.sparse_ids[:10])
    assert a.sparse_ids.shape == (len(a), 4, 3) and a.dense.shape == (len(a), 4, 2)
    assert (np.diff(a.send_s) >= 0).all() and a.send_s[0] >= 0 and a.send_s[-1] <= 2


def test_send_times_are_a_poisson_process_of_the_rate() -> None:
    rate, duration = 2000.0, 10.0
    plan = plan_requests(SMALL, rate, duration, seed=0)
    expected = rate * duration
    assert abs(len(plan) - expected) < 4 * np.sqrt(expected)  # count ~ Poisson(20000)
    gaps = np.diff(plan.send_s)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: CV = 1
    # Kolmogorov–Smirnov against Exp(rate); at seed 0 p is far above 0.01.
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    counts = np.histogram(plan.send_s, bins=100, range=(0, duration))[0]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.35)  # Poisson: var = mean


def test_keys_follow_the_zipf_workload() -> None:
    plan = plan_requests(SMALL, 4000, 10, seed=1)  # ~40k requests × 12 keys
    keys = plan.sparse_ids.ravel()
    assert keys.min() >= 0 and keys.max() < SMALL.vocab_size
    freq = np.bincount(keys, minlength=SMALL.vocab_size) / keys.size
    want = zipf_probabilities(SMALL.vocab_size, SMALL.zipf_alpha)
    assert freq[0] == pytest.approx(want[0], rel=0.03)  # rank 0 is key 0: p ≈ 0.134
    assert 0.5 * np.abs(freq - want).sum() < 0.02  # total variation distance (≈ 0.007 here)


def test_key_of_rank_maps_popularity_ranks_to_key_ids() -> None:
    key_of_rank = np.random.default_rng(3).permutation(SMALL.vocab_size).astype(np.int64)
    plain = plan_requests(SMALL, 100, 1, seed=5)
    mapped = plan_requests(SMALL, 100, 1, seed=5, key_of_rank=key_of_rank)
    assert np.array_equal(mapped.sparse_ids, key_of_rank[plain.sparse_ids])
    assert np.array_equal(mapped.dense, plain.dense)


def test_model_shape_and_popularity_win_over_the_spec(tiny_artifact: ModelArtifact) -> None:
    shape, key_of_rank, notes = model_request_shape(CTR, tiny_artifact.path)
    meta = tiny_artifact.metadata
    assert (shape.rows, shape.sparse_fields, shape.dense_features, shape.vocab_size) == (
        CTR.rows,
        len(meta.sparse_fields),
        len(meta.dense_features),
        meta.vocab_size,
    )
    assert any("sparse fields" in n for n in notes) and any("vocabulary" in n for n in notes)
    rank = tiny_artifact.popularity_rank()
    assert np.array_equal(rank[key_of_rank], np.arange(meta.vocab_size))  # the inverse
    plan = plan_requests(shape, 200, 1, seed=0, key_of_rank=key_of_rank)
    assert np.bincount(rank[plan.sparse_ids.ravel()]).argmax() == 0  # the top key is most drawn


@pytest.mark.parametrize(
    ("rate", "duration", "message"),
    [
        (1000, 300, "more than --max-requests 200000"),
        (10, 601, r"--duration must be in \(0, 600\]"),
        (0, 1, "--rate must be a positive"),
        (0.001, 1, "planned no request"),
    ],
)
def test_bad_plans_are_refused(rate: float, duration: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        plan_requests(SMALL, rate, duration, seed=0)


# --- the loopback guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("127.0.0.9:8000/", "127.0.0.9:8000"),
        ("http://localhost:8000", "localhost:8000"),
        ("http://[::1]:8000/base", "[::1]:8000/base"),
    ],
)
def test_loopback_urls_are_accepted(url: str, target: str) -> None:
    assert check_loopback(url) == target


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.0.0.1:8000", "may only target this machine"),
        ("http://0.0.0.0:8000", "may only target this machine"),
        ("http://example.com:8000", "may only target this machine"),
        ("http://[2001:db8::1]:8000", "may only target this machine"),
        ("https://127.0.0.1:8000", "only http://"),
        ("http://127.0.0.1", "name the port"),
    ],
)
def test_other_hosts_are_refused(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_loopback(url)


# --- classification and the summary ---------------------------------------------------------------


def test_status_and_exception_classification() -> None:
    assert [classify_status(s) for s in (200, 503, 400, 404, 429, 500, 502)] == [
        Outcome.OK,
        Outcome.SHED,
        Outcome.HTTP_4XX,
        Outcome.HTTP_4XX,
        Outcome.HTTP_4XX,
        Outcome.HTTP_5XX,
        Outcome.HTTP_5XX,
    ]
    assert classify_exception(InferenceServerException("full", status="503")) == (Outcome.SHED, 503)
    assert classify_exception(InferenceServerException("bad", status="400")) == (
        Outcome.HTTP_4XX,
        400,
    )
    assert classify_exception(InferenceServerException("garbled")) == (Outcome.BAD_RESPONSE, 0)
    assert classify_exception(ConnectionRefusedError()) == (Outcome.CONNECTION, 0)
    assert classify_exception(HTTPConnectionClosed("closed")) == (Outcome.CONNECTION, 0)
    assert classify_exception(TimeoutError()) == (Outcome.TIMEOUT, 0)
    assert classify_exception(ValueError("?")) == (Outcome.BAD_RESPONSE, 0)


def _records(rows: list[tuple[float, float, float, Outcome, int]]) -> RequestRecords:
    sched, late, lat, outcome, status = zip(*rows, strict=True)
    return RequestRecords(
        np.array(sched),
        np.array(late),
        np.array(lat),
        np.array([OUTCOMES.index(o) for o in outcome], np.int8),
        np.array(status, np.int16),
    )


NAN = float("nan")
SYNTHETIC = _records(
    [  # scheduled, lateness, latency, outcome, status
        (0.0, 0.001, 0.004, Outcome.OK, 200),
        (0.1, 0.001, 0.001, Outcome.OK, 200),
        (0.2, 0.002, 0.003, Outcome.OK, 200),
        (0.3, 0.001, 0.002, Outcome.OK, 200),
        (0.4, 0.001, 0.006, Outcome.OK, 200),
        (0.5, 0.003, 0.005, Outcome.OK, 200),
        (0.6, 0.001, NAN, Outcome.TIMEOUT, 0),
        (0.7, 0.001, 0.0005, Outcome.SHED, 503),
        (0.8, 0.001, NAN, Outcome.CONNECTION, 0),
        (0.9, 0.050, 1.6, Outcome.HTTP_4XX, 404),
    ]
)


def test_summary_of_synthetic_records() -> None:
    s = summarize(SYNTHETIC, duration_s=1.0)
    assert (s["requests"], s["sent"], s["answered"], s["ok"]) == (10, 10, 8, 6)
    assert s["elapsed_s"] == pytest.approx(2.5)  # the 404 came back at 0.9 + 1.6
    assert s["throughput_rps"] == pytest.approx(8 / 2.5) and s["goodput_rps"] == 6 / 2.5
    # Latency over ok + timeout = [1, 2, 3, 4, 5, 6, inf] ms, empirical (inverted-CDF) quantiles.
    lat = s["latency_s"]
    assert (lat["p50"], lat["p90"], lat["p99"]) == (0.004, None, None)
    assert lat["max_ok"] == 0.006 and lat["mean_ok"] == pytest.approx(0.0035)
    assert s["lateness_s"]["max"] == 0.050 and s["lateness_s"]["p50"] == 0.001
    assert s["errors"] == {
        "shed_503": 1,
        "http_4xx": 1,
        "http_5xx": 0,
        "connection": 1,
        "timeout": 1,
        "bad_response": 0,
    }
    assert s["http_status"] == {"200": 6, "404": 1, "503": 1}


def _report(records: RequestRecords, waited: int = 0) -> LoadReport:
    return LoadReport(
        url="http://127.0.0.1:1",
        model_name="ctr",
        offered_rps=10.0,
        duration_s=1.0,
        seed=0,
        timeout_s=2.0,
        concurrency=4,
        binary=False,
        records=records,
        summary=summarize(records, 1.0),
        waited_for_connection=waited,
    )


def test_report_text_json_and_warnings() -> None:
    report = _report(SYNTHETIC, waited=3)
    text = report.render()
    assert "p50 4.00 ms" in text and "p99 > 2 s" in text and "shed_503 1" in text
    assert "3 sends waited for a free connection" in text and "raise --concurrency" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["records"]["outcome"][6] == "timeout" and data["records"]["latency_s"][6] is None
    assert data["requests"] == 10 and data["latency_s"]["p99"] is None


def test_report_when_nothing_succeeded_and_the_client_was_late() -> None:
    report = _report(_records([(0.1 * i, 0.2, 0.001, Outcome.SHED, 503) for i in range(5)]))
    text = report.render()
    assert "latency    none (no request succeeded or timed out)" in text
    assert "sends went out late (p99 200.0 ms)" in text


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.array([[1, 2**40], [3, 4]], np.int64), "INT64"),
        (np.array([[0.1, -2.5]], np.float32), "FP32"),
    ],
)
def test_fast_json_input_matches_tritonclients_own(array: np.ndarray, datatype: str) -> None:
    public = triton.InferInput("x", list(array.shape), datatype)
    public.set_data_from_numpy(array, binary_data=False)
    ours = _input(triton, "x", array, binary=False)
    body = triton.InferenceServerClient.generate_request_body
    assert body([ours])[0] == body([public])[0]


# --- end to end against a real local server -------------------------------------------------------

SIG = ModelSignature("ctr", CTR.sparse_fields, CTR.dense_features, CTR.vocab_size)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops SYNs when many connections open at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.count = 0
        self.received: list[bytes] = []  # sparse_ids of every request answered 200
        self.shed_every = 10  # every 10th request answers 503
        self.delay_s = 0.003
        self.stall_every = 0  # every k-th request sleeps stall_s (0: never)
        self.stall_s = 0.0
        self.sig = SIG

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) and closed the connection
            self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/v2/health/live":
            self._reply(200, b"")
        elif self.path == "/v2/models/ctr":
            self._reply(200, json.dumps(model_metadata(self.server.sig)).encode())
        else:
            self._reply(404, b'{"error": "unknown model"}')

    def do_POST(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with srv.lock:
            srv.count += 1
            n = srv.count
        if srv.shed_every and n % srv.shed_every == 0:
            self._reply(503, b'{"error": "queue full"}')
            return
        try:
            request = parse_infer_request(body, self.headers.get(BINARY_HEADER), srv.sig)
        except ProtocolError as exc:
            self._reply(exc.status, json.dumps({"error": exc.message}).encode())
            return
        time.sleep(srv.stall_s if srv.stall_every and n % srv.stall_every == 0 else srv.delay_s)
        with srv.lock:
            srv.received.append(request.sparse_ids.tobytes())
        scores = request.dense.sum(axis=1).astype(np.float32)
        out, headers = encode_infer_response(srv.sig, request.id, scores, request.binary_output)
        self._reply(200, out, headers)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("binary", [False, True])
def test_end_to_end_against_a_real_server(server: _Server, binary: bool) -> None:
    plan = plan_requests(CTR, 150, 1.5, seed=11)
    report = run_load(server.url, plan, concurrency=16, binary=binary, timeout_s=5)
    s = report.summary
    n = len(plan)
    assert (s["requests"], s["sent"], s["answered"]) == (n, n, n)
    assert s["errors"]["shed_503"] == n // 10 == s["http_status"]["503"]
    assert s["ok"] == n - n // 10 and sum(s["errors"].values()) == n // 10
    ok = report.records.latency_s[report.records.outcome == OUTCOMES.index(Outcome.OK)]
    assert ok.min() >= server.delay_s  # every answer took the server's 3 ms at least
    assert s["latency_s"]["p50"] < 0.5 and s["lateness_s"]["p50"] < 0.05  # loose: 2 busy cores
    # The server saw exactly the planned payloads (in arrival order, which may differ slightly).
    planned = {plan.sparse_ids[i].astype(np.int64).tobytes() for i in range(n)}
    assert len(server.received) == s["ok"] and set(server.received) <= planned


def test_latency_counts_from_the_scheduled_send(server: _Server) -> None:
    """One connection, 20 ms per request, 100 req/s offered: the client's own queue grows, and the
    latency includes it (a closed-loop client would report ~20 ms for every request)."""
    server.shed_every, server.delay_s = 0, 0.02
    plan = plan_requests(CTR, 100, 1.0, seed=2)
    report = run_load(server.url, plan, concurrency=1, binary=True, timeout_s=5)
    s = report.summary
    assert s["ok"] == len(plan) and report.max_in_flight > 10
    assert s["lateness_s"]["p99"] < 0.1  # the sends themselves stayed on schedule
    assert report.waited_for_connection > len(plan) // 2
    # Service alone takes ≥ 20 ms × n ≈ 2 s for 1 s of sends: the last ones wait about 1 s.
    assert s["latency_s"]["p99"] > 0.5 and s["latency_s"]["p50"] > 0.1
    assert s["throughput_rps"] < 60  # 1 / 20 ms = 50 req/s at most
    assert any("raise --concurrency" in w for w in report.warnings())


def test_stalled_requests_time_out_and_the_run_stops(server: _Server) -> None:
    server.shed_every, server.stall_every, server.stall_s = 0, 5, 2.0
    plan = plan_requests(CTR, 100, 1.0, seed=4)
    began = time.perf_counter()
    report = run_load(server.url, plan, concurrency=32, binary=True, timeout_s=0.5)
    assert time.perf_counter() - began < plan.send_s[-1] + 0.5 + 1.5
    s = report.summary
    assert s["errors"]["timeout"] == len(plan) // 5 and s["ok"] == len(plan) - len(plan) // 5
    assert s["latency_s"]["p99"] is None and "p99 > 0.5 s" in report.render()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_preflight_refuses_before_the_clock_starts(server: _Server) -> None:
    plan = plan_requests(SMALL, 10, 1, seed=0)
    with pytest.raises(InputError, match="no inference server answers"):
        run_load(f"http://127.0.0.1:{_free_port()}", plan, timeout_s=2)
    with pytest.raises(InputError, match="model 'other' is not served"):
        run_load(server.url, plan, model_name="other")
    with pytest.raises(InputError, match="takes sparse_ids with 8 columns, the plan has 3"):
        run_load(server.url, plan)
    assert server.count == 0


def test_cli_writes_json_and_plot(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    argv = ["load", server.url, "--rate", "60", "--duration", "1", "--seed", "3", "--binary"]
    assert main([*argv, "--spec", str(EXAMPLES / "ctr.yaml"), "--out", str(out), "--plot"]) == 0
    text = capsys.readouterr().out
    assert "Poisson 60 req/s for 1 s (seed 3)" in text and "shed_503" in text
    data = json.loads(out.read_text())
    assert data["offered_rps"] == 60 and data["request_shape"]["rows"] == 32
    assert len(data["records"]["scheduled_s"]) == data["requests"] == data["sent"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_cli_with_a_model_sends_its_shapes_and_keys(
    server: _Server, tiny_artifact: ModelArtifact, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = tiny_artifact.metadata
    server.shed_every = 0
    server.sig = ModelSignature(
        "ctr", len(meta.sparse_fields), len(meta.dense_features), meta.vocab_size
    )
    argv = [
        "load",
        server.url,
        "--rate",
        "40",
        "--duration",
        "1",
        "--model",
        str(tiny_artifact.path),
    ]
    assert main([*argv, "--spec", str(EXAMPLES / "ctr.yaml")]) == 0
    out, err = capsys.readouterr()
    fields = len(meta.sparse_fields)
    assert f"note: the model has {fields} sparse fields (spec: 8); using the model's" in err
    assert "http_4xx 0" in out and "http       200: " in out  # every id was in the model's vocab


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://10.1.2.3:8000"], "load tests may only target this machine"),
        (["http://127.0.0.1:9", "--plot"], "--plot needs --out"),
        (["http://127.0.0.1:9", "--max-requests", "5"], "more than --max-requests 5"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["load", *args, "--rate", "100", "--duration", "1"]
    assert main([*argv, "--spec", str(EXAMPLES / "ctr.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jizhi load: error: ") and message in err and "\n" not in err
