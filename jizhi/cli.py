"""The `jizhi` console script: one parser, one subcommand per module in `jizhi.commands`.

Bad input of any kind (an `InputError` raised anywhere below) is printed as one line and exits 2;
argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jizhi import __version__
from simulator.errors import InputError, ServiceError

__all__ = ["main"]

# Subcommand modules under jizhi.commands, in the order `jizhi --help` lists them. Each module keeps
# its heavy imports (torch, ray) inside its run function so that `jizhi simulate` starts fast.
_COMMANDS = (
    "simulate",
    "tune",
    "whatif",
    "train",
    "profile",
    "serve",
    "load",
    "monitor",
    "rollout",
    "calibrate",
    "autopilot",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jizhi",
        description="Tune and serve staged online-inference pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"jizhi {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"jizhi.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(f"jizhi {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"jizhi {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jizhi {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
