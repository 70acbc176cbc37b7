"""A discrete-event model of a staged inference pipeline on Ray Serve: what-if in seconds.

>>> from simulator import load_spec, simulate
>>> report = simulate(load_spec("examples/queueing/md1.yaml"), requests=5000, seed=3)
>>> report.slo.holds
True

No Ray or torch import anywhere in this package: the tuner runs it in plain worker processes.
"""

from simulator.cache import CachePolicy, KeyCache, make_cache
from simulator.config import (
    ServingConfig,
    apply_config,
    apply_overrides,
    config_warnings,
    with_overrides,
)
from simulator.engine import simulate
from simulator.errors import InputError
from simulator.load import load_config, load_pipeline, load_spec
from simulator.report import LatencyStats, NodeStats, SimulationReport, StageReport
from simulator.spec import Device, NodeSpec, PipelineSpec, StageKind, StageSpec
from simulator.zipf import ZipfSampler

__all__ = [
    "CachePolicy",
    "Device",
    "InputError",
    "KeyCache",
    "LatencyStats",
    "NodeSpec",
    "NodeStats",
    "PipelineSpec",
    "ServingConfig",
    "SimulationReport",
    "StageKind",
    "StageReport",
    "StageSpec",
    "ZipfSampler",
    "apply_config",
    "apply_overrides",
    "config_warnings",
    "load_config",
    "load_pipeline",
    "load_spec",
    "make_cache",
    "simulate",
    "with_overrides",
]
