"""Torch's intra-op threads: a ranker replica's share of its node's real cores."""

from __future__ import annotations

import pytest

from serving.app import intra_op_threads


@pytest.mark.parametrize(
    ("cpus", "node_cpus", "cores", "threads"),
    [
        (2, 2.0, 2, 2),  # the node advertises its cores: the replica's CPUs
        (4, 32.0, 64, 4),
        (2, None, 2, 2),  # unknown node: the replica's CPUs
        (2, 5.0, 2, 1),  # jizhi serve on 2 cores advertises 5: 2 × 2/5 = 0.8 → 1
        (8, 16.0, 8, 4),  # half the advertised CPUs are not there
        (1, 64.0, 2, 1),  # never fewer than one
    ],
)
def test_threads_are_the_replicas_share_of_the_real_cores(
    cpus: int, node_cpus: float | None, cores: int, threads: int
) -> None:
    assert intra_op_threads(cpus, node_cpus, cores) == threads
