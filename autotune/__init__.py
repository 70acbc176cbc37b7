"""Bayesian optimisation of serving configs on the simulator: ask/tell tuner, evaluators, runs.

>>> from simulator import load_spec
>>> from autotune import SearchSpace
>>> SearchSpace(load_spec("examples/ctr.yaml")).names[:2]
['ingress.replicas', 'features.replicas']
"""

from autotune.constrained import ConstrainedCostEngine
from autotune.evaluate import EvalTask, Evaluator, Outcome, SimulatorEvaluator, evaluate_task
from autotune.objective import TrialMetrics
from autotune.run import TuneResult, tune
from autotune.space import SearchSpace
from autotune.tuner import GaussianProcessEngine, Proposal, RandomEngine, Trial, Tuner

__all__ = [
    "ConstrainedCostEngine",
    "EvalTask",
    "Evaluator",
    "GaussianProcessEngine",
    "Outcome",
    "Proposal",
    "RandomEngine",
    "SearchSpace",
    "SimulatorEvaluator",
    "Trial",
    "TrialMetrics",
    "TuneResult",
    "Tuner",
    "evaluate_task",
    "tune",
]
