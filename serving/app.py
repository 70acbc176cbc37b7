"""The Ray Serve application: Ingress (Open Inference Protocol v2) → Features → Ranker.

- `Ingress` (FastAPI under `@serve.ingress`) parses requests with `serving.protocol` (the body is
  read raw: tritonclient sends no Content-Type) and answers 400/404/413 with `{"error": ...}`;
  503 when a stage sheds the request (its queue is full), 500 when a stage fails.
- `Features` looks rows' keys up through the cut-off, the cache and the parameter store
  (`serving.features.FeatureLookup`).
- `Ranker` runs the TorchScript dense part under `@serve.batch`, on a GPU when the config says so
  (`_RankerCore`). With `features_in_ranker` the lookup runs inside the ranker on the whole batch
  (one hop less); with `ingress_in_ranker` as well, one deployment named Ranker serves the
  protocol and scores in-process (the Ingress class holding a `_RankerCore`): no handle hop.

Knobs that Ray changes without restarting a replica arrive through `user_config` and
`reconfigure`: batch size and wait timeout (set on the live batch queue), cache policy and
capacity, cut-off. Built by `build_app(args)` — the `import_path` of the Serve config file that
`serving.deploy` writes, so later updates are in-place config-file deploys.
"""

# NOTE: no `from __future__ import annotations`: FastAPI must see the real `Request` type.
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, model_validator
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.features import FeatureLookup
from serving.metrics import StageMetrics
from serving.protocol import (
    BINARY_HEADER,
    ModelSignature,
    ProtocolError,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from serving.stores import open_store

__all__ = ["AppArgs", "build_app", "intra_op_threads"]

MAX_BODY_BYTES = 8 << 20


class AppArgs(BaseModel):
    """What `build_app` needs; written into the Serve config file's `args`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str
    model_name: str = "ctr"
    store: str | None = None  # redis://… or a .npy path; default: the model's own table
    features_in_ranker: bool = False
    ingress_in_ranker: bool = False
    device: str = "cpu"
    max_concurrent_batches: int = 1
    torch_threads: int = 1  # the ranker replica's CPUs (see `intra_op_threads`), at least 1
    stage_names: tuple[str, str, str] = ("ingress", "features", "ranker")

    @model_validator(mode="after")
    def _one_process_needs_the_lookup(self) -> "AppArgs":
        if self.ingress_in_ranker and not self.features_in_ranker:
            raise ValueError(
                "ingress_in_ranker needs features_in_ranker: the lookup runs there too"
            )
        return self


def intra_op_threads(cpus: int, node_cpus: float | None, cores: int) -> int:
    """Torch's intra-op threads for a replica of `cpus` CPUs on a node that advertises `node_cpus`
    CPUs to Ray and has `cores` cores: its share of the real cores, at least 1.

    A head that advertises more CPUs than its machine has (`jizhi serve` does on a small machine,
    so that production-sized configs fit) hands out CPUs that are not there; OpenMP threads that
    outnumber the free cores then wait at every barrier for a core another process holds, and
    the whole service slows (docs/serving.md, "Torch's threads").
    """
    if node_cpus is None or node_cpus <= cores:
        return max(1, cpus)
    return max(1, int(cpus * cores / node_cpus))


def _node_cpus() -> float | None:
    """The CPUs Ray advertises on this replica's node (None when it cannot tell)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return float(node.get("Resources", {}).get("CPU", 0.0)) or None
    return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _signature(args: AppArgs) -> ModelSignature:
    from serving.models import read_artifact

    meta = read_artifact(Path(args.model_dir)).metadata
    return ModelSignature(
        name=args.model_name,
        sparse_fields=len(meta.sparse_fields),
        dense_features=len(meta.dense_features),
        vocab_size=meta.vocab_size,
    )


class _Lookup:
    """A `FeatureLookup` of the model's store, configured from `user_config`."""

    def __init__(self, args: AppArgs, stage: str) -> None:
        from serving.models import read_artifact

        artifact = read_artifact(Path(args.model_dir))
        store = open_store(
            args.store or str(artifact.file("embeddings")), artifact.config.embedding_dim
        )
        self.lookup = FeatureLookup(store, artifact.popularity_rank())
        self.metrics = StageMetrics(stage)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.lookup.reconfigure(
            config.get("cache_policy", "lru"),
            int(config.get("cache_capacity", 0) or 0),
            config.get("cutoff_rank"),
        )

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        vectors, stats = self.lookup.lookup(ids)
        self.metrics.lookup(stats.hits, stats.misses, stats.cut, stats.store_seconds)
        return vectors


@serve.deployment(name="Features")
class Features:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = AppArgs.model_validate(args)
        self._lookup = _Lookup(self.args, self.args.stage_names[1])

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._lookup.reconfigure(config)

    def describe(self) -> dict[str, Any]:
        """The live cache and cut-off settings and this replica's process id."""
        import os

        lookup = self._lookup.lookup
        return {
            "cache_policy": lookup.cache.policy.value,
            "cache_capacity": lookup.cache.capacity,
            "cutoff_rank": lookup.cutoff_rank,
            "pid": os.getpid(),
        }

    async def lookup(self, ids: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        vectors = self._lookup(ids)
        self._lookup.metrics.latency.observe(time.perf_counter() - started)
        return vectors


class _RankerCore:
    """The dense model under a per-replica `@serve.batch` queue (and the lookup when it runs here)."""

    def __init__(self, args: AppArgs) -> None:
        import torch

        from serving.models import read_artifact

        self.device = "cuda" if args.device == "gpu" else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "the config asks for a GPU ranker but this replica sees no CUDA device"
            )
        # Ray sets OMP_NUM_THREADS from num_cpus, which may be more cores than the node has.
        torch.set_num_threads(
            intra_op_threads(args.torch_threads, _node_cpus(), len(os.sched_getaffinity(0)))
        )
        self.model = read_artifact(Path(args.model_dir)).dense_torchscript(self.device)
        self._torch = torch
        self.metrics = StageMetrics(args.stage_names[2])
        self._lookup = _Lookup(args, args.stage_names[2]) if args.features_in_ranker else None
        # The batch queue is built here so that max_concurrent_batches comes from the config.
        self._batched: Any = serve.batch(
            max_batch_size=10,
            batch_wait_timeout_s=0.01,
            max_concurrent_batches=args.max_concurrent_batches,
        )(self._score_batch)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._batched.set_max_batch_size(int(config.get("max_batch_size", 10)))
        self._batched.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.01)))
        if self._lookup is not None:
            self._lookup.reconfigure(config)

    def batching(self) -> dict[str, Any]:
        """The live batching settings, torch's threads and this replica's process id (for tests
        and status)."""
        return {
            "max_batch_size": self._batched._get_max_batch_size(),
            "batch_wait_timeout_s": self._batched._get_batch_wait_timeout_s(),
            "torch_threads": self._torch.get_num_threads(),
            "pid": os.getpid(),
        }

    async def _score_batch(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        started = time.perf_counter()
        sizes = [len(dense) for _, dense in items]
        firsts = [first for first, _ in items]
        if self._lookup is not None:  # `first` is key ids: one lookup for the whole batch
            vectors = self._lookup(np.concatenate(firsts))
        else:
            vectors = np.concatenate(firsts)
        dense = np.concatenate([d for _, d in items])
        torch = self._torch
        with torch.inference_mode():
            scores = self.model(
                torch.from_numpy(vectors).to(self.device), torch.from_numpy(dense).to(self.device)
            )
        out = scores.float().cpu().numpy()
        self.metrics.batch_rows.observe(len(dense))
        self.metrics.latency.observe(time.perf_counter() - started)
        return list(np.split(out, np.cumsum(sizes)[:-1]))

    async def score(self, first: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Scores for one request's rows; `first` is vectors, or key ids with features_in_ranker."""
        result: np.ndarray = await self._batched((first, dense))
        return result


@serve.deployment(name="Ranker")
class Ranker:
    def __init__(self, args: dict[str, Any]) -> None:
        self.core = _RankerCore(AppArgs.model_validate(args))

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.core.reconfigure(config)

    def batching(self) -> dict[str, Any]:
        return self.core.batching()

    async def score(self, first: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return await self.core.score(first, dense)


api = FastAPI(title="jizhi", docs_url=None, redoc_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        args: dict[str, Any],
        ranker: DeploymentHandle | None = None,
        features: DeploymentHandle | None = None,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.signature = _signature(self.args)
        self.ranker = ranker
        self.features = features
        # ingress_in_ranker: this replica is the ranker (deployed under the name Ranker).
        self.core = None if ranker is not None else _RankerCore(self.args)

    def reconfigure(self, config: dict[str, Any]) -> None:
        if self.core is not None:
            self.core.reconfigure(config)

    def batching(self) -> dict[str, Any]:
        if self.core is None:
            raise RuntimeError("this ingress does not run the ranker (ingress_in_ranker is off)")
        return self.core.batching()

    async def _scores(self, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
        if self.core is not None:
            return await self.core.score(ids, dense)
        assert self.ranker is not None
        first = ids
        if self.features is not None:
            first = await self.features.lookup.remote(ids)
        scores: np.ndarray = await self.ranker.score.remote(first, dense)
        return scores

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @api.get("/v2/models/{name}")
    async def metadata(self, name: str) -> Response:
        if name != self.signature.name:
            return _error(
                404, f"unknown model '{name}'; this server serves '{self.signature.name}'"
            )
        return JSONResponse(model_metadata(self.signature))

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> Response:
        if name != self.signature.name:
            return _error(
                404, f"unknown model '{name}'; this server serves '{self.signature.name}'"
            )
        return JSONResponse({"name": name, "ready": True})

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        if name != self.signature.name:
            return _error(
                404, f"unknown model '{name}'; this server serves '{self.signature.name}'"
            )
        # The body is read whole even when too large: answering before the client has sent it
        # all makes the proxy reset the connection instead of delivering the 413.
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            parsed = parse_infer_request(body, request.headers.get(BINARY_HEADER), self.signature)
        except ProtocolError as exc:
            return _error(exc.status, exc.message)
        try:
            scores = await self._scores(parsed.sparse_ids, parsed.dense)
        except BackPressureError as exc:  # a stage's queue is full: load shedding, retry later
            return _error(503, f"overloaded: {exc}"[:500])
        except Exception as exc:  # a stage failed (store unreachable, replica died)
            return _error(500, f"inference failed: {type(exc).__name__}: {exc}"[:500])
        payload, headers = encode_infer_response(
            self.signature, parsed.id, scores, parsed.binary_output
        )
        return Response(payload, headers=headers, media_type=headers["Content-Type"])


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder (`import_path: serving.app:build_app`)."""
    parsed = AppArgs.model_validate(args)
    plain = parsed.model_dump(mode="json")
    deployments: Any = (Ranker, Features, Ingress)  # Serve's Deployment objects
    ranker_d, features_d, ingress_d = deployments
    if parsed.ingress_in_ranker:
        return ingress_d.options(name="Ranker").bind(plain)
    ranker = ranker_d.bind(plain)
    features = None if parsed.features_in_ranker else features_d.bind(plain)
    return ingress_d.bind(plain, ranker, features)
