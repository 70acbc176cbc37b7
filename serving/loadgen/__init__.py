"""Open-loop Poisson load against an Open Inference Protocol v2 endpoint, through `tritonclient`.

Every send time and every payload is fixed in advance from a seed (`plan_requests`), so a slow
server cannot slow the client down and hide its own latency. Latency runs from a request's
*scheduled* send time to its response: when the client sends late, that lateness counts against
the server (no coordinated omission), and the report says how late sends went out.

>>> shape = RequestShape(rows=2, sparse_fields=3, dense_features=1, vocab_size=1000)
>>> plan = plan_requests(shape, rate_rps=100.0, duration_s=2.0, seed=0)
>>> plan.sparse_ids.shape[1:], bool((plan.send_s[1:] >= plan.send_s[:-1]).all())
((2, 3), True)

Then `report = run_load("http://127.0.0.1:8000", plan)`; `print(report.render())`.
"""

from serving.loadgen._plan import (
    MAX_DURATION_S,
    LoadPlan,
    RequestShape,
    model_request_shape,
    plan_requests,
)
from serving.loadgen._report import (
    PERCENTILES,
    LoadReport,
    Outcome,
    RequestRecords,
    classify_exception,
    classify_status,
    summarize,
    write_plot,
)
from serving.loadgen._runner import check_loopback, run_load

__all__ = [
    "MAX_DURATION_S",
    "PERCENTILES",
    "LoadPlan",
    "LoadReport",
    "Outcome",
    "RequestRecords",
    "RequestShape",
    "check_loopback",
    "classify_exception",
    "classify_status",
    "model_request_shape",
    "plan_requests",
    "run_load",
    "summarize",
    "write_plot",
]
