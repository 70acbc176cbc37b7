"""Trials as Ray tasks, so a tuning run spreads across a Ray cluster. The only Ray import of
`autotune/`; the cluster's nodes need jizhi installed (the same image as the serving app)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from autotune.evaluate import EvalTask, Outcome, evaluate_task
from simulator import PipelineSpec

__all__ = ["RayTrials"]


def _evaluate(spec_json: str, task: EvalTask) -> Outcome:
    return evaluate_task(PipelineSpec.model_validate_json(spec_json), task)


class RayTrials:
    """`address` is a Ray cluster address (`ray://host:10001`, `auto`) or `local` for a new
    single-node Ray on this machine."""

    def __init__(self, spec: PipelineSpec, address: str) -> None:
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        self._spec = ray.put(spec.model_dump_json())
        self._remote: Any = ray.remote(num_cpus=1)(_evaluate)

    def evaluate(self, tasks: Sequence[EvalTask]) -> Iterator[Outcome]:
        pending = [self._remote.remote(self._spec, task) for task in tasks]
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            outcome: Outcome = self._ray.get(done[0])
            yield outcome

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
