"""`jizhi load URL --rate R --duration S [--spec SPEC] [--model DIR] [--out FILE.json [--plot]]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jizhi.commands._args import positive_float, positive_int, whole_number
from simulator.errors import InputError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "load",
        help="send open-loop Poisson load to a local inference endpoint and report latency",
        description=(
            "Send Poisson load to URL (this machine only) at --rate for --duration. Send times and "
            "payloads are fixed in advance from --seed; latency runs from each request's scheduled "
            "send time, so a slow server cannot hide its latency by slowing the client down."
        ),
    )
    parser.add_argument("url", help="inference server, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--rate", type=positive_float, required=True, help="requests per second")
    parser.add_argument("--duration", type=positive_float, required=True, help="seconds (<= 600)")
    parser.add_argument(
        "--spec",
        default="examples/ctr.yaml",
        help="spec whose workload shapes the requests (default: examples/ctr.yaml)",
    )
    parser.add_argument(
        "--model", help="served model directory: its fields, dense features and key popularity"
    )
    parser.add_argument("--model-name", default="ctr", help="model name in the URL (default: ctr)")
    parser.add_argument("--seed", type=whole_number, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--concurrency", type=positive_int, default=64, help="HTTP connections (default: 64)"
    )
    parser.add_argument(
        "--binary", action="store_true", help="send tensors with the binary-data extension"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds from a request's scheduled send until it counts as timed out (default: 10)",
    )
    parser.add_argument(
        "--max-requests",
        type=positive_int,
        default=200_000,
        help="refuse plans with more requests (default: 200000)",
    )
    parser.add_argument("--out", help="write the summary and per-request records as JSON")
    parser.add_argument(
        "--plot", action="store_true", help="with --out: a latency histogram/CDF PNG next to it"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.loadgen import (
        RequestShape,
        check_loopback,
        model_request_shape,
        plan_requests,
        run_load,
        write_plot,
    )
    from simulator import load_spec

    check_loopback(args.url)  # before any planning work
    out = Path(args.out) if args.out else None
    if args.plot and out is None:
        raise InputError("--plot needs --out FILE.json (the PNG goes next to it)")
    if out is not None and not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    shape = RequestShape.from_workload(load_spec(args.spec).workload)
    key_of_rank = None
    if args.model:
        shape, key_of_rank, notes = model_request_shape(shape, Path(args.model))
        for note in notes:
            print(f"jizhi load: note: {note}", file=sys.stderr)
    began = time.perf_counter()
    plan = plan_requests(
        shape,
        args.rate,
        args.duration,
        args.seed,
        key_of_rank=key_of_rank,
        max_requests=args.max_requests,
    )
    print(
        f"jizhi load: planned {len(plan)} requests of {shape.rows} rows × {shape.sparse_fields} "
        f"sparse ids + {shape.dense_features} dense in {time.perf_counter() - began:.1f} s",
        file=sys.stderr,
    )
    report = run_load(
        args.url,
        plan,
        model_name=args.model_name,
        concurrency=args.concurrency,
        binary=args.binary,
        timeout_s=args.timeout,
        progress=_progress_bar() if sys.stderr.isatty() else None,
    )
    print(report.render())
    if out is not None:
        out.write_text(json.dumps(report.to_dict(), separators=(",", ":")) + "\n")
        print(f"wrote {out}")
        if args.plot:
            write_plot(report, out.with_suffix(".png"))
            print(f"wrote {out.with_suffix('.png')}")
    return 0


def _progress_bar() -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar = tqdm(desc="requests answered", unit="req", leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
