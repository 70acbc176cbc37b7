"""`jizhi calibrate SPEC --from URL|FILE [--config FILE] [--set k=v ...] [--out FILE]`.

Fits the spec's costs to the running service's metrics and writes the calibrated spec. `--from`
takes a Prometheus (`http://127.0.0.1:9090`: snapshots at `--snapshots` times over the last
`--window` seconds), a metrics endpoint (`http://127.0.0.1:8080/metrics`: scraped that many
times over the next `--window` seconds) or a FILE that `--record` wrote (JSON lines of snapshots).
Then, unless `--no-latency-fit`, `node.speed` and the spread of CPU work are fitted to the window's
p50 and p99 by simulation (`autotune.latency_fit`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from jizhi.commands._args import add_overrides, non_negative_float, positive_float, whole_number
from simulator.errors import InputError

if TYPE_CHECKING:
    from serving.monitoring.live import Snapshot

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit a spec's costs (rate, CPU per stage, store, Zipf alpha) to the live metrics",
        description="Fit SPEC's parameters to what the running service shows (Ray's metrics, "
        "from Prometheus, a metrics endpoint or a recording) and write the calibrated spec.",
    )
    parser.add_argument("spec", help="pipeline spec (YAML), e.g. examples/ctr.yaml")
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL|FILE",
        help="Prometheus (http://127.0.0.1:9090), a metrics endpoint "
        "(http://127.0.0.1:8080/metrics) or a recording (JSON lines that --record wrote)",
    )
    parser.add_argument("--config", help="the serving config that was deployed (best.yaml)")
    add_overrides(parser, "a knob that was deployed (ranker.max_batch_size=8) or a spec field")
    parser.add_argument(
        "--window", type=positive_float, default=300.0, help="seconds of metrics (default 300)"
    )
    parser.add_argument(
        "--snapshots",
        type=_at_least_two,
        default=31,
        help="snapshots over the window (31: every 10 s of the default window)",
    )
    parser.add_argument(
        "--subwindow",
        type=non_negative_float,
        default=30.0,
        help="shortest sub-window in seconds (30): Ray exports each process's metrics every "
        "few seconds, so shorter ones are lumpy",
    )
    parser.add_argument("--application", default="jizhi", help="Serve application (jizhi)")
    parser.add_argument(
        "--remote-store",
        action="store_true",
        help="the parameter store is a separate service (Redis): its time is not replica CPU",
    )
    parser.add_argument(
        "--latency-fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit node.speed and the spread of CPU work to the window's p50/p99 by simulation "
        "(default; 37 simulations)",
    )
    parser.add_argument(
        "--seed", type=whole_number, default=0, help="seed of the cache replay and the simulations"
    )
    parser.add_argument("--record", help="also write the snapshots to FILE (JSON lines)")
    parser.add_argument("--out", default="-", help="calibrated spec (YAML; default: stdout)")
    parser.set_defaults(func=run)


def _at_least_two(text: str) -> int:
    value = whole_number(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2: a fit needs differences (got {value})")
    return value


def run(args: argparse.Namespace) -> int:
    import yaml

    from autotune.calibration import calibrate, calibrated_spec
    from simulator import load_pipeline
    from simulator.load import validate_spec

    spec = load_pipeline(args.spec, args.config, args.overrides)
    out = None if args.out == "-" else Path(args.out)
    for path, what in ((out, "--out"), (Path(args.record) if args.record else None, "--record")):
        if path is not None and not path.parent.is_dir():
            raise InputError(f"{what}: folder not found: {path.parent}")
    snapshots = _snapshots(args)
    calibration = calibrate(
        spec,
        snapshots,
        application=args.application,
        min_subwindow_s=args.subwindow,
        store_in_process=not args.remote_store,
        seed=args.seed,
    )
    if args.latency_fit:
        from autotune.latency_fit import with_latency_fit

        say = functools.partial(print, file=sys.stderr, flush=True)
        calibration = with_latency_fit(spec, calibration, seed=args.seed, say=say)
    data = calibrated_spec(spec, calibration)
    validate_spec(data, "the calibrated spec", Path(args.spec).resolve().parent)
    table = calibration.render_table()
    header = [f"calibrated by `jizhi calibrate` from {args.source}", *table.splitlines()]
    text = "".join(f"# {line}".rstrip() + "\n" for line in header)
    text += yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    report = sys.stdout if out is not None else sys.stderr
    print(table, file=report)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=report)
    return 0


def _snapshots(args: argparse.Namespace) -> list[Snapshot]:
    from autotune.calibration import trim
    from serving.monitoring import live

    source: str = args.source
    if args.record and Path(args.record).resolve() == Path(source).resolve():
        raise InputError(f"--record {args.record}: the file --from reads; record elsewhere")
    record = Path(args.record).open("w", encoding="utf-8") if args.record else None  # noqa: SIM115
    try:
        if not source.startswith(("http://", "https://")):
            snapshots = _read_recording(Path(source))
            _write(record, snapshots)
            return snapshots
        if urllib.parse.urlparse(source).path.strip("/"):
            return _scrape(source, args.snapshots, args.window, record)
        now = time.time()
        step = args.window / (args.snapshots - 1)
        times = [now - args.window + i * step for i in range(args.snapshots)]
        snapshots = [trim(live.from_prometheus(source, at)) for at in times]
        _write(record, snapshots)
        return snapshots
    finally:
        if record is not None:
            record.close()


def _read_recording(path: Path) -> list[Snapshot]:
    from serving.monitoring import live

    if not path.is_file():
        raise InputError(f"--from: no such file: {path} (or give an http:// URL)")
    with path.open(encoding="utf-8") as lines:
        return live.read_records(lines, str(path))


def _write(record: IO[str] | None, snapshots: list[Snapshot]) -> None:
    from serving.monitoring import live

    if record is not None:
        for snapshot in snapshots:
            record.write(live.to_record(snapshot) + "\n")


def _scrape(url: str, count: int, window_s: float, record: IO[str] | None) -> list[Snapshot]:
    """Scrape `count` times, evenly over `window_s`; Ctrl-C stops early and keeps what was taken."""
    from autotune.calibration import trim
    from serving.monitoring import live

    step = window_s / (count - 1)
    print(
        f"scraping {url} {count} times over {window_s:g} s (Ctrl-C calibrates on what was taken)",
        file=sys.stderr,
    )
    update = _progress(count)
    snapshots: list[Snapshot] = []
    start = time.monotonic()
    try:
        for i in range(count):
            time.sleep(max(0.0, start + i * step - time.monotonic()))
            snapshots.append(trim(live.scrape(url)))
            _write(record, snapshots[-1:])
            if record is not None:
                record.flush()
            update(i + 1)
    except KeyboardInterrupt:
        print(f"interrupted after {len(snapshots)} snapshot(s)", file=sys.stderr)
    finally:
        update(count)
    return snapshots


def _progress(total: int) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda done: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="scraping", unit="snapshot", leave=False, file=sys.stderr)

    def update(done: int) -> None:
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
