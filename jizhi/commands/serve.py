"""`jizhi serve SPEC --config FILE --model DIR`, `jizhi serve --status|--stop`, `jizhi export
[--format serve|rayservice]`, `jizhi store load MODEL redis://…`."""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jizhi.commands._args import add_overrides, positive_int
from serving.kuberay import DEFAULT_MODEL_PATH, DEFAULT_MODEL_PVC
from simulator.errors import InputError

if TYPE_CHECKING:
    from simulator import PipelineSpec

__all__ = ["ExportFormat", "build_rayservice", "register"]

DEPLOYED = Path(".jizhi") / "serve-config.yaml"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the pipeline on a local Ray Serve (starts a loopback Ray head if none runs)",
        description="Deploy SPEC with a config and a model; --status and --stop manage it.",
    )
    serve.add_argument("spec", nargs="?", help="pipeline spec (YAML)")
    app_arguments(serve)
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for RUNNING")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="show the running application")
    group.add_argument("--stop", action="store_true", help="stop the application and our Ray head")
    serve.set_defaults(func=run_serve)

    export = subparsers.add_parser(
        "export",
        help="write the Serve config file (`serve deploy`) or a KubeRay RayService manifest",
        description="--format serve: the Serve config `jizhi serve` deploys; --format "
        "rayservice: a RayService running that config and a PodMonitor (docs/kubernetes.md).",
    )
    export.add_argument("spec", help="pipeline spec (YAML)")
    app_arguments(export)
    export.add_argument(
        "--format",
        default=ExportFormat.SERVE.value,
        help="serve (default) or rayservice",
    )
    kube = export.add_argument_group("--format rayservice")
    kube.add_argument("--name", help="RayService name (default: jizhi)")
    kube.add_argument("--namespace", help="Kubernetes namespace (default: default)")
    kube.add_argument(
        "--image", help="Ray image with jizhi installed (default: rayproject/ray:<Ray>-py<Python>)"
    )
    model = kube.add_mutually_exclusive_group()
    model.add_argument("--model-pvc", help=f"PVC holding the model (default: {DEFAULT_MODEL_PVC})")
    model.add_argument(
        "--model-in-image", action="store_true", help="the model is in the image: mount no PVC"
    )
    kube.add_argument(
        "--model-path", help=f"the model directory inside the pods (default: {DEFAULT_MODEL_PATH})"
    )
    kube.add_argument(
        "--max-pod-cpus", type=positive_int, help="CPUs per worker pod at most (default: 8)"
    )
    export.add_argument("--out", help="output file (default: standard output)")
    export.set_defaults(func=run_export)

    store = subparsers.add_parser("store", help="parameter-store tools")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser("load", help="copy a model's embedding table into Redis")
    load.add_argument("model", help="model directory written by `jizhi train`")
    load.add_argument("url", help="redis://host:port/db")
    load.set_defaults(func=run_store_load)


def app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="serving config (YAML), e.g. a tuner's best.yaml")
    parser.add_argument("--model", help="model directory written by `jizhi train`")
    parser.add_argument("--store", help="parameter store: redis://… (default: the model's table)")
    add_overrides(parser, "override a knob, e.g. ranker.max_batch_size=32")


def build_serve_config(args: argparse.Namespace) -> tuple[PipelineSpec, dict[str, Any]]:
    """The configured spec and its Serve config."""
    from serving.deploy import serve_config
    from serving.models import read_artifact
    from simulator import config_warnings, load_pipeline

    if not args.spec or not args.model:
        raise InputError("give a SPEC and --model DIR (and usually --config best.yaml)")
    spec = load_pipeline(args.spec, args.config, args.overrides)
    for warning in config_warnings(spec):  # Ray deploys these too, and only warns
        print(f"warning: {warning}", file=sys.stderr)
    model = Path(args.model).resolve()
    read_artifact(model)  # a clear error now rather than replicas failing later
    return spec, serve_config(spec, str(model), store=args.store)


def predict(spec: PipelineSpec) -> dict[str, float]:
    """What the simulator predicts for the configured spec (recorded with each deploy)."""
    from simulator import simulate

    report = simulate(spec)
    return {
        "p50_s": report.latency.p50_s,
        "p99_s": report.latency.p99_s,
        "cost_per_hour": report.cost_per_hour,
        "slo_p99_s": spec.slo.p99_s,
    }


def apply_serve_config(
    config: dict[str, Any], predicted: dict[str, float] | None, timeout_s: float
) -> int:
    """Deploy a Serve config in place on the running head, wait until it runs, keep it as the
    deployed config and record the deploy for jizhi's exporter; returns the config generation
    (0 when it could not be recorded)."""
    import yaml

    from serving import cluster
    from serving.deploy import APP_NAME
    from serving.monitoring.exporter import record_deploy

    since = cluster.deploy(config)
    cluster.wait_running(APP_NAME, since=since, timeout_s=timeout_s)
    DEPLOYED.parent.mkdir(exist_ok=True)
    DEPLOYED.write_text(yaml.safe_dump(config, sort_keys=False))
    if predicted is None:
        return 0
    try:
        return record_deploy(
            predicted["p50_s"],
            predicted["p99_s"],
            predicted["cost_per_hour"],
            predicted["slo_p99_s"],
            config,
        )
    except (OSError, ValueError) as exc:
        print(f"warning: could not record the deploy for jizhi's exporter: {exc}")
        return 0


def run_serve(args: argparse.Namespace) -> int:
    from serving import cluster
    from serving.deploy import HTTP_PORT

    if args.stop:
        stopped = cluster.stop_head()
        print("stopped the Ray head jizhi started" if stopped else "no Ray head started by jizhi")
        return 0
    if args.status:
        print(json.dumps(cluster.status(), indent=2))
        return 0
    spec, config = build_serve_config(args)
    cpus = sum(
        d["num_replicas"] * d["ray_actor_options"]["num_cpus"]
        for d in config["applications"][0]["deployments"]
    )
    if cluster.ensure_head(num_cpus=cpus + 1):
        print(f"started a Ray head on 127.0.0.1 (dashboard {cluster.DASHBOARD})")
    predicted = predict(spec)
    generation = apply_serve_config(config, predicted, args.timeout)
    print(f"serving on http://127.0.0.1:{HTTP_PORT}/v2/models/ctr (config: {DEPLOYED})")
    print(f"metrics: http://127.0.0.1:{cluster.METRICS_PORT}/metrics")
    print(
        f"config generation {generation}: predicted p50 {predicted['p50_s'] * 1e3:.1f} ms, "
        f"p99 {predicted['p99_s'] * 1e3:.1f} ms, ${predicted['cost_per_hour']:.2f}/h"
    )
    return 0


class ExportFormat(str, Enum):
    """What `jizhi export` writes."""

    SERVE = "serve"  # the Serve config file of `serve deploy`
    RAYSERVICE = "rayservice"  # a KubeRay RayService and a Prometheus PodMonitor


_KUBE_OPTIONS = ("name", "namespace", "image", "model_pvc", "model_path", "max_pod_cpus")


def _export_format(text: str) -> ExportFormat:
    try:
        return ExportFormat(text)
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise InputError(f"--format must be one of {choices} (got {text!r})") from None


def build_rayservice(args: argparse.Namespace) -> str:
    """The RayService and PodMonitor manifest (multi-document YAML) for `--format rayservice`."""
    from serving.deploy import serve_config
    from serving.kuberay import dump_manifest, rayservice_manifest
    from serving.models import read_artifact
    from simulator import load_pipeline

    if args.model:  # the model that goes into the PVC or image: a clear error now
        read_artifact(Path(args.model))
    spec = load_pipeline(args.spec, args.config, args.overrides)
    model_path = args.model_path or DEFAULT_MODEL_PATH
    given = {"name": args.name, "namespace": args.namespace, "max_pod_cpus": args.max_pod_cpus}
    documents = rayservice_manifest(
        spec,
        serve_config(spec, model_path, store=args.store),
        image=args.image,
        model_dir_in_pod=model_path,
        model_volume=None if args.model_in_image else (args.model_pvc or DEFAULT_MODEL_PVC),
        **{option: value for option, value in given.items() if value is not None},
    )
    return dump_manifest(documents)


def run_export(args: argparse.Namespace) -> int:
    import yaml

    if _export_format(args.format) is ExportFormat.RAYSERVICE:
        text = build_rayservice(args)
    else:
        given = [o for o in _KUBE_OPTIONS if getattr(args, o) is not None] + (
            ["model_in_image"] if args.model_in_image else []
        )
        if given:
            flags = ", ".join("--" + o.replace("_", "-") for o in given)
            raise InputError(f"{flags}: only with --format rayservice")
        text = yaml.safe_dump(build_serve_config(args)[1], sort_keys=False)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def run_store_load(args: argparse.Namespace) -> int:
    from serving.models import read_artifact
    from serving.stores import load_redis

    if not args.url.startswith(("redis://", "rediss://", "unix://")):
        raise InputError(f"store URL must be redis://host:port/db (got {args.url!r})")
    artifact = read_artifact(Path(args.model))
    rows = load_redis(artifact.file("embeddings"), args.url)
    print(f"loaded {rows} embedding rows into {args.url}")
    return 0
