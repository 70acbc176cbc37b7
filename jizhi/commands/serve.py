"""`jizhi serve SPEC --config FILE --model DIR`, `jizhi serve --status|--stop`, `jizhi export`,
`jizhi store load MODEL redis://…`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jizhi.commands._args import add_overrides
from simulator.errors import InputError

__all__ = ["register"]

DEPLOYED = Path(".jizhi") / "serve-config.yaml"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the pipeline on a local Ray Serve (starts a loopback Ray head if none runs)",
        description="Deploy SPEC with a config and a model; --status and --stop manage it.",
    )
    serve.add_argument("spec", nargs="?", help="pipeline spec (YAML)")
    _app_arguments(serve)
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for RUNNING")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="show the running application")
    group.add_argument("--stop", action="store_true", help="stop the application and our Ray head")
    serve.set_defaults(func=run_serve)

    export = subparsers.add_parser(
        "export",
        help="write the Serve config file (`serve deploy`) for a spec, config and model",
    )
    export.add_argument("spec", help="pipeline spec (YAML)")
    _app_arguments(export)
    export.add_argument("--out", help="output file (default: standard output)")
    export.set_defaults(func=run_export)

    store = subparsers.add_parser("store", help="parameter-store tools")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser("load", help="copy a model's embedding table into Redis")
    load.add_argument("model", help="model directory written by `jizhi train`")
    load.add_argument("url", help="redis://host:port/db")
    load.set_defaults(func=run_store_load)


def _app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="serving config (YAML), e.g. a tuner's best.yaml")
    parser.add_argument("--model", help="model directory written by `jizhi train`")
    parser.add_argument("--store", help="parameter store: redis://… (default: the model's table)")
    add_overrides(parser, "override a knob, e.g. ranker.max_batch_size=32")


def build_serve_config(args: argparse.Namespace) -> dict[str, Any]:
    from serving.deploy import serve_config
    from serving.models import read_artifact
    from simulator import load_pipeline

    if not args.spec or not args.model:
        raise InputError("give a SPEC and --model DIR (and usually --config best.yaml)")
    spec = load_pipeline(args.spec, args.config, args.overrides)
    model = Path(args.model).resolve()
    read_artifact(model)  # a clear error now rather than replicas failing later
    return serve_config(spec, str(model), store=args.store)


def run_serve(args: argparse.Namespace) -> int:
    import yaml

    from serving import cluster
    from serving.deploy import APP_NAME, HTTP_PORT

    if args.stop:
        stopped = cluster.stop_head()
        print("stopped the Ray head jizhi started" if stopped else "no Ray head started by jizhi")
        return 0
    if args.status:
        print(json.dumps(cluster.status(), indent=2))
        return 0
    config = build_serve_config(args)
    DEPLOYED.parent.mkdir(exist_ok=True)
    DEPLOYED.write_text(yaml.safe_dump(config, sort_keys=False))
    cpus = sum(
        d["num_replicas"] * d["ray_actor_options"]["num_cpus"]
        for d in config["applications"][0]["deployments"]
    )
    if cluster.ensure_head(num_cpus=cpus + 1):
        print(f"started a Ray head on 127.0.0.1 (dashboard {cluster.DASHBOARD})")
    since = cluster.deploy(config)
    cluster.wait_running(APP_NAME, since=since, timeout_s=args.timeout)
    print(f"serving on http://127.0.0.1:{HTTP_PORT}/v2/models/ctr (config: {DEPLOYED})")
    print(f"metrics: http://127.0.0.1:{cluster.METRICS_PORT}/metrics")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import yaml

    text = yaml.safe_dump(build_serve_config(args), sort_keys=False)
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
