"""Argument types and options shared by the subcommands: one-line argparse errors (exit 2)."""

from __future__ import annotations

import argparse
import os

__all__ = [
    "add_overrides",
    "add_workers",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "whole_number",
]


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (got {text!r})") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (got {text!r})") from None
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def add_workers(parser: argparse.ArgumentParser) -> None:
    """`--workers N`: parallel evaluations in worker processes, one per core by default."""
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="parallel evaluations in worker processes (default: number of cores)",
    )


def add_overrides(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The repeatable `--set PATH=VALUE` option (knobs and spec fields; see simulator.config)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help=help_text
    )
