"""From (spec, config, model) to the Serve config file that `serve deploy` accepts.

Every knob of the config lands where Ray applies it: replicas and in-flight limits in the
deployment options, batching, cache and cut-off in `user_config` (applied by `reconfigure`,
without restarting replicas), CPUs and GPUs in `ray_actor_options` (a change restarts replicas).
The spec must have the serving shape: an ingress stage, a features stage, a ranker stage, in order.
`in_ranker` on the features stage drops the Features deployment (the ranker looks each batch up);
on the ingress as well, the Ranker deployment serves the protocol itself and is the only one.
"""

from __future__ import annotations

from typing import Any

from serving.app import AppArgs
from simulator import PipelineSpec
from simulator.errors import InputError
from simulator.spec import Device, StageKind, StageSpec

__all__ = ["APP_NAME", "HTTP_PORT", "serve_config", "serving_stages"]

APP_NAME = "jizhi"
HTTP_PORT = 8000


def serving_stages(spec: PipelineSpec) -> tuple[StageSpec, StageSpec, StageSpec]:
    """The (ingress, features, ranker) stages of a spec that Ray Serve can run."""
    kinds = [s.kind for s in spec.stages]
    if kinds != [StageKind.COMPUTE, StageKind.FEATURES, StageKind.COMPUTE]:
        shape = ", ".join(f"{s.name} ({s.kind.value})" for s in spec.stages)
        raise InputError(
            f"serving needs three stages: ingress (compute), features (features), ranker "
            f"(compute); this spec has {shape}"
        )
    ingress, features, ranker = spec.stages
    return ingress, features, ranker


def _resources(stage: StageSpec) -> tuple[float, float]:
    """(CPUs, GPUs) of one replica of the stage on its configured device."""
    gpu = stage.device is Device.GPU and stage.gpu is not None
    resources = stage.gpu.resources if gpu and stage.gpu is not None else stage.resources
    return resources.cpu, resources.gpu


def _options(stage: StageSpec, deployment: str) -> dict[str, Any]:
    cpus, gpus = _resources(stage)
    actor: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        actor["num_gpus"] = gpus
    return {
        "name": deployment,
        "num_replicas": stage.replicas,
        "max_ongoing_requests": stage.max_ongoing_requests,
        "max_queued_requests": stage.max_queued_requests,
        "ray_actor_options": actor,
    }


def serve_config(
    spec: PipelineSpec,
    model_dir: str,
    *,
    store: str | None = None,
    model_name: str = "ctr",
    port: int = HTTP_PORT,
) -> dict[str, Any]:
    """The Serve config (the YAML of `serve deploy`) for a spec whose stages carry the config."""
    ingress, features, ranker = serving_stages(spec)
    features_in_ranker = bool(features.in_ranker)
    ingress_in_ranker = bool(ingress.in_ranker)
    if ingress_in_ranker and not features_in_ranker:
        raise InputError(
            f"stages.{ingress.name}: in_ranker serves the protocol from the ranker's replicas, "
            f"which needs the lookup there too: set {features.name}.in_ranker=true"
        )
    args = AppArgs(
        model_dir=model_dir,
        model_name=model_name,
        store=store,
        features_in_ranker=features_in_ranker,
        ingress_in_ranker=ingress_in_ranker,
        device=ranker.device.value,
        max_concurrent_batches=ranker.max_concurrent_batches,
        torch_threads=max(1, int(_resources(ranker)[0])),
        stage_names=(ingress.name, features.name, ranker.name),
    )
    cache = {
        "cache_policy": features.cache_policy.value if features.cache_policy else "none",
        "cache_capacity": features.cache_capacity or 0,
        "cutoff_rank": features.cutoff_rank,
    }
    batching = {
        "max_batch_size": ranker.max_batch_size,
        "batch_wait_timeout_s": ranker.batch_wait_timeout_s,
    }
    deployments = [] if ingress_in_ranker else [_options(ingress, "Ingress")]
    ranker_options = _options(ranker, "Ranker")
    if features_in_ranker:
        ranker_options["user_config"] = {**batching, **cache}
    else:
        deployments.append({**_options(features, "Features"), "user_config": cache})
        ranker_options["user_config"] = batching
    deployments.append(ranker_options)
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "serving.app:build_app",
                "args": args.model_dump(mode="json"),
                "deployments": deployments,
            }
        ],
    }
