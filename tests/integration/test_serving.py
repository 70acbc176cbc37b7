"""The real serving path: a local Ray head, the Serve application deployed from a config file,
tritonclient against it, live reconfiguration, bad requests, metrics. One deployment for the
test session (`served`, in conftest: start-up costs about a minute on 2 cores); each test leaves
it serving the `SMALL` config."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from jizhi.cli import main
from serving import cluster
from serving.app import intra_op_threads
from serving.models import read_artifact

from .services import EXAMPLE_SPEC, SMALL

pytestmark = pytest.mark.integration

URL = "127.0.0.1:8000"


def _rows(model_dir: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    meta = read_artifact(model_dir).metadata
    rng = np.random.default_rng(seed)
    ids = np.stack(
        [rng.integers(f.offset, f.offset + f.vocab_size, n) for f in meta.sparse_fields], axis=1
    ).astype(np.int64)
    dense = rng.standard_normal((n, len(meta.dense_features))).astype(np.float32)
    return ids, dense


def _infer(ids: np.ndarray, dense: np.ndarray, binary: bool) -> np.ndarray:
    client = triton.InferenceServerClient(URL)
    a = triton.InferInput("sparse_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids, binary_data=binary)
    b = triton.InferInput("dense", list(dense.shape), "FP32")
    b.set_data_from_numpy(dense, binary_data=binary)
    result = client.infer(
        "ctr", [a, b], outputs=[triton.InferRequestedOutput("scores", binary_data=binary)]
    )
    scores: np.ndarray = result.as_numpy("scores")
    return scores


def _post(path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{URL}{path}", data=body, method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_metadata_and_scores_equal_the_models_own(served: Path) -> None:
    client = triton.InferenceServerClient(URL)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ctr")
    meta = client.get_model_metadata("ctr")
    assert [i["name"] for i in meta["inputs"]] == ["sparse_ids", "dense"]
    ids, dense = _rows(served, 12, seed=1)
    expected = read_artifact(served).ranker().predict(ids, dense)
    for binary in (False, True):
        np.testing.assert_allclose(_infer(ids, dense, binary), expected, rtol=1e-5, atol=1e-6)


def test_bad_requests_get_4xx_with_error_and_the_next_request_succeeds(served: Path) -> None:
    ids, dense = _rows(served, 2, seed=2)
    good = {
        "inputs": [
            {
                "name": "sparse_ids",
                "shape": list(ids.shape),
                "datatype": "INT64",
                "data": ids.tolist(),
            },
            {
                "name": "dense",
                "shape": list(dense.shape),
                "datatype": "FP32",
                "data": dense.tolist(),
            },
        ]
    }
    bad_ids = json.loads(json.dumps(good))
    bad_ids["inputs"][0]["data"][0][0] = 10**9
    wrong_type = json.loads(json.dumps(good))
    wrong_type["inputs"][1]["datatype"] = "INT64"
    cases = [
        ("/v2/models/ctr/infer", b"{garbage", 400),
        ("/v2/models/ctr/infer", json.dumps(bad_ids).encode(), 400),
        ("/v2/models/ctr/infer", json.dumps(wrong_type).encode(), 400),
        ("/v2/models/other/infer", json.dumps(good).encode(), 404),
        ("/v2/models/ctr/infer", b"x" * (9 << 20), 413),
        ("/v2/nowhere", b"{}", 404),
    ]
    for path, body, status in cases:
        code, payload = _post(path, body)
        assert code == status, (path, payload)
        assert set(payload) == {"error"} and payload["error"], payload
        code, payload = _post("/v2/models/ctr/infer", json.dumps(good).encode())
        assert code == 200 and len(payload["outputs"][0]["data"]) == 2


def _describe(deployment: str, method: str) -> dict[str, Any]:
    """`method`'s answer from a replica of `deployment`, with the CPUs the node advertises."""
    import ray
    from ray import serve

    ray.init(address="auto", namespace="serve", log_to_driver=False, ignore_reinit_error=True)
    try:
        handle = serve.get_deployment_handle(deployment, app_name="jizhi")
        result: dict[str, Any] = getattr(handle, method).remote().result(timeout_s=30)
        return {**result, "node_cpus": ray.cluster_resources()["CPU"]}
    finally:
        ray.shutdown()


def test_config_change_applies_in_place_on_the_same_replicas(served: Path) -> None:
    ranker_before = _describe("Ranker", "batching")
    features_before = _describe("Features", "describe")
    assert ranker_before["max_batch_size"] == 8
    # the example's ranker asks for 2 CPUs; the head advertises more than this machine has
    threads = intra_op_threads(2, ranker_before["node_cpus"], len(os.sched_getaffinity(0)))
    assert ranker_before["torch_threads"] == threads
    assert features_before["cache_capacity"] == 20000
    spec = EXAMPLE_SPEC
    changed = [*SMALL, "--set", "ranker.max_batch_size=4", "--set", "ranker.batch_wait_timeout_s=0.002",
               "--set", "features.cutoff_rank=1000", "--set", "features.cache_capacity=500"]  # fmt: skip
    assert main(["serve", spec, "--model", str(served), *changed]) == 0
    deadline = time.monotonic() + 60
    ranker_after = _describe("Ranker", "batching")
    while ranker_after["max_batch_size"] != 4 and time.monotonic() < deadline:
        time.sleep(0.5)
        ranker_after = _describe("Ranker", "batching")
    assert ranker_after == {
        **ranker_before, "max_batch_size": 4, "batch_wait_timeout_s": 0.002,
    }  # fmt: skip
    assert _describe("Features", "describe") == {
        **features_before, "cache_capacity": 500, "cutoff_rank": 1000,
    }  # fmt: skip
    assert features_before["cache_policy"] == "lru"
    # the cut-off is live: scores now equal the model's with long-tail keys zeroed
    artifact = read_artifact(served)
    ids, dense = _rows(served, 6, seed=3)
    keep = artifact.popularity_rank()[ids] < 1000
    expected = artifact.ranker().predict(ids, dense, keep=keep)
    np.testing.assert_allclose(_infer(ids, dense, binary=True), expected, rtol=1e-5, atol=1e-6)


def test_metrics_are_exported_with_the_documented_names(served: Path) -> None:
    from serving.metrics import NAMES

    ids, dense = _rows(served, 4, seed=4)
    _infer(ids, dense, binary=False)
    deadline = time.monotonic() + 30
    missing: set[str] = set(NAMES)
    while missing and time.monotonic() < deadline:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{cluster.METRICS_PORT}/metrics", timeout=10)
            .read()
            .decode()
        )
        missing = {name for name in NAMES if not any(
            line.startswith(name) for line in text.splitlines())}  # fmt: skip
        time.sleep(1)
    # keys_cut appears once a cut-off is live (the previous test sets one)
    assert missing <= {"ray_jizhi_keys_cut_total"}, missing
    assert "ray_serve_num_http_requests_total" in text


def test_redis_store_gives_the_same_scores_as_the_memory_mapped_table(
    served: Path, tmp_path: Path
) -> None:
    from .services import redis_server

    ids, dense = _rows(served, 10, seed=5)
    spec = EXAMPLE_SPEC
    assert main(["serve", spec, "--model", str(served), *SMALL]) == 0
    from_table = _infer(ids, dense, binary=True)
    with redis_server(tmp_path) as url:
        assert main(["store", "load", str(served), url]) == 0
        assert main(["serve", spec, "--model", str(served), "--store", url, *SMALL]) == 0
        assert _describe("Features", "describe")["cache_capacity"] == 20000
        np.testing.assert_array_equal(_infer(ids, dense, binary=True), from_table)
        main(
            ["serve", spec, "--model", str(served), *SMALL]
        )  # back to the table before Redis stops


def test_ingress_in_ranker_serves_the_protocol_from_one_deployment(served: Path) -> None:
    spec = EXAMPLE_SPEC
    fused = [*SMALL, "--set", "features.in_ranker=true", "--set", "ingress.in_ranker=true"]
    try:
        assert main(["serve", spec, "--model", str(served), *fused]) == 0
        deployments = cluster.status()["applications"]["jizhi"]["deployments"]
        assert set(deployments) == {"Ranker"}
        ids, dense = _rows(served, 9, seed=6)
        expected = read_artifact(served).ranker().predict(ids, dense)
        np.testing.assert_allclose(_infer(ids, dense, binary=True), expected, rtol=1e-5, atol=1e-6)
        assert _post("/v2/models/ctr/infer", b"{garbage")[0] == 400
        before = _describe("Ranker", "batching")
        changed = [*fused, "--set", "ranker.max_batch_size=2"]
        assert main(["serve", spec, "--model", str(served), *changed]) == 0
        after = _describe("Ranker", "batching")
        assert after["max_batch_size"] == 2 and after["pid"] == before["pid"]
        np.testing.assert_allclose(_infer(ids, dense, binary=False), expected, rtol=1e-5, atol=1e-6)
    finally:
        main(["serve", spec, "--model", str(served), *SMALL])


def test_ingress_in_ranker_without_the_lookup_there_is_rejected(served: Path) -> None:
    spec = EXAMPLE_SPEC
    args = ["export", spec, "--model", str(served), "--set", "ingress.in_ranker=true"]
    assert main(args) == 2
