"""What a load run measured: outcomes, per-request records, the summary, its text and its plot.

Pure: `summarize` and the classifiers are tested on synthetic records, without a server.
"""

from __future__ import annotations

import http.client
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PERCENTILES",
    "LoadReport",
    "Outcome",
    "RequestRecords",
    "classify_exception",
    "classify_status",
    "summarize",
    "write_plot",
]

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


class Outcome(str, Enum):
    OK = "ok"
    SHED = "shed_503"  # the server's load shedding (Ray Serve: past max_queued_requests)
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECTION = "connection"  # refused, reset or closed before a response
    TIMEOUT = "timeout"  # no response within the timeout of the scheduled send time
    BAD_RESPONSE = "bad_response"  # a 200 without `scores` of the right shape, or undecodable


OUTCOMES = list(Outcome)  # records store an outcome as its index here


def classify_status(status: int) -> Outcome:
    if status == 200:
        return Outcome.OK
    if status == 503:
        return Outcome.SHED
    return Outcome.HTTP_4XX if 400 <= status < 500 else Outcome.HTTP_5XX


def classify_exception(exc: BaseException) -> tuple[Outcome, int]:
    """Outcome and HTTP status (0 when none came back) of a failed request."""
    status_of = getattr(exc, "status", None)  # tritonclient's InferenceServerException
    if callable(status_of):
        status = status_of()
        if status is not None and str(status).isdigit():
            return classify_status(int(status)), int(status)
        return Outcome.BAD_RESPONSE, 0
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT, 0
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return Outcome.CONNECTION, 0
    return Outcome.BAD_RESPONSE, 0


@dataclass(frozen=True)
class RequestRecords:
    """One entry per planned request; times in seconds, relative to the scheduled start."""

    scheduled_s: NDArray[np.float64]
    lateness_s: NDArray[np.float64]  # actual send − scheduled; NaN: never sent
    latency_s: NDArray[np.float64]  # response − scheduled send; NaN: no response
    outcome: NDArray[np.int8]  # index into list(Outcome)
    status: NDArray[np.int16]  # HTTP status; 0: none

    @classmethod
    def empty(cls, scheduled_s: NDArray[np.float64]) -> RequestRecords:
        n = len(scheduled_s)
        nan = np.full(n, np.nan)
        code = OUTCOMES.index(Outcome.TIMEOUT)  # until a response says otherwise
        return cls(scheduled_s, nan, nan.copy(), np.full(n, code, np.int8), np.zeros(n, np.int16))

    def outcomes(self) -> list[Outcome]:
        return [OUTCOMES[c] for c in self.outcome.tolist()]


def _quantiles(values: NDArray[np.float64]) -> dict[str, float | None]:
    if len(values) == 0:
        return {f"p{p:g}": None for p in PERCENTILES}
    qs = np.quantile(values, [p / 100 for p in PERCENTILES], method="inverted_cdf")
    return {
        f"p{p:g}": (float(q) if math.isfinite(q) else None)
        for p, q in zip(PERCENTILES, qs, strict=True)
    }


def summarize(records: RequestRecords, duration_s: float) -> dict[str, Any]:
    """Rates, latency and lateness percentiles, and counts by outcome and by HTTP status.

    Latency percentiles are over successful requests plus timed-out ones counted as infinitely
    slow (so losing the tail to timeouts cannot flatter them): `None` means beyond the timeout.
    """
    codes = records.outcome
    ok = codes == OUTCOMES.index(Outcome.OK)
    timeout = codes == OUTCOMES.index(Outcome.TIMEOUT)
    answered = ~np.isnan(records.latency_s) & ~timeout
    sent = ~np.isnan(records.lateness_s)
    ends = records.scheduled_s[answered] + records.latency_s[answered]
    elapsed = max(duration_s, float(ends.max()) if ends.size else 0.0)
    latency = np.where(timeout, np.inf, records.latency_s)[ok | timeout]
    statuses, counts = np.unique(records.status[records.status > 0], return_counts=True)
    late = _quantiles(records.lateness_s[sent])
    return {
        "requests": len(codes),
        "sent": int(sent.sum()),
        "answered": int(answered.sum()),
        "ok": int(ok.sum()),
        "planned_rps": len(codes) / duration_s,
        "sent_rps": int(sent.sum()) / duration_s,
        "throughput_rps": int(answered.sum()) / elapsed,
        "goodput_rps": int(ok.sum()) / elapsed,
        "elapsed_s": elapsed,
        "latency_s": {
            **_quantiles(latency),
            "mean_ok": float(records.latency_s[ok].mean()) if ok.any() else None,
            "max_ok": float(records.latency_s[ok].max()) if ok.any() else None,
        },
        "lateness_s": {
            "p50": late["p50"],
            "p99": late["p99"],
            "max": float(records.lateness_s[sent].max()) if sent.any() else None,
        },
        "errors": {
            o.value: int((codes == i).sum()) for i, o in enumerate(OUTCOMES) if o is not Outcome.OK
        },
        "http_status": {
            str(s): int(c) for s, c in zip(statuses.tolist(), counts.tolist(), strict=True)
        },
    }


@dataclass(frozen=True)
class LoadReport:
    """What `run_load` measured: the summary (see `summarize`) and the raw per-request records."""

    url: str
    model_name: str
    offered_rps: float
    duration_s: float
    seed: int
    timeout_s: float
    concurrency: int
    binary: bool
    records: RequestRecords
    summary: dict[str, Any]
    request_shape: dict[str, Any] = field(default_factory=dict)
    max_in_flight: int = 0
    # Sends that found every connection busy and queued in the client (HTTP/1.1: one request in
    # flight per connection); one example error message per outcome.
    waited_for_connection: int = 0
    first_errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        """The summary's fields, the run's settings and (`records`) the per-request columns."""
        out: dict[str, Any] = {
            "url": self.url,
            "model_name": self.model_name,
            "offered_rps": self.offered_rps,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "timeout_s": self.timeout_s,
            "concurrency": self.concurrency,
            "binary": self.binary,
            "request_shape": self.request_shape,
            **self.summary,
            "client": {
                "max_in_flight": self.max_in_flight,
                "waited_for_connection": self.waited_for_connection,
            },
            "first_errors": self.first_errors,
        }
        if records:
            r = self.records

            def column(values: NDArray[np.float64]) -> list[float | None]:
                return [None if math.isnan(v) else round(v, 7) for v in values.tolist()]

            out["records"] = {
                "scheduled_s": column(r.scheduled_s),
                "lateness_s": column(r.lateness_s),
                "latency_s": column(r.latency_s),
                "outcome": [o.value for o in r.outcomes()],
                "status": r.status.tolist(),
            }
        return out

    def warnings(self) -> list[str]:
        """Why the measurement may be the client's fault rather than the server's."""
        s, out = self.summary, []
        late, p99 = s["lateness_s"]["p99"], s["latency_s"]["p99"]
        if late is not None and late > max(0.005, 0.1 * (p99 or 0.0)):
            out.append(
                f"sends went out late (p99 {late * 1e3:.1f} ms): the client is overloaded and the latencies "
                "include its lateness; lower the rate or run fewer things on this machine"
            )
        if self.waited_for_connection:
            out.append(
                f"{self.waited_for_connection} sends waited for a free connection "
                f"(all {self.concurrency} busy); raise --concurrency"
            )
        return out

    def render(self) -> str:
        s = self.summary

        def ms(value: float | None, missing: str = "-") -> str:
            return missing if value is None else f"{value * 1e3:.2f} ms"

        lat, late = s["latency_s"], s["lateness_s"]
        beyond = f"> {self.timeout_s:g} s"
        if s["ok"] + s["errors"]["timeout"]:
            latency = "  ".join(
                f"{k} {ms(lat[k], beyond)}" for k in ("p50", "p90", "p95", "p99", "p99.9")
            )
            latency += f"  max(ok) {ms(lat['max_ok'])}"
        else:
            latency = "none (no request succeeded or timed out)"
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
        statuses = ", ".join(f"{k}: {v}" for k, v in s["http_status"].items()) or "none"
        lines = [
            f"{self.url} model {self.model_name!r}: Poisson {self.offered_rps:g} req/s for "
            f"{self.duration_s:g} s (seed {self.seed}), {s['requests']} requests planned",
            f"  sent       {s['sent']} ({s['sent_rps']:.1f} req/s); lateness p50 "
            f"{ms(late['p50'])}, p99 {ms(late['p99'])}, max {ms(late['max'])}",
            f"  answered   {s['answered']} in {s['elapsed_s']:.2f} s: throughput "
            f"{s['throughput_rps']:.1f} req/s, goodput (ok) {s['goodput_rps']:.1f} req/s",
            f"  latency    {latency}",
            f"  outcomes   ok {s['ok']}, {errors}",
            f"  http       {statuses}",
            f"  client     {self.concurrency} connections, at most {self.max_in_flight} in flight",
        ]
        lines += [f"  warning: {w}" for w in self.warnings()]
        return "\n".join(lines)


def write_plot(report: LoadReport, path: Path) -> None:
    """Latency histogram and CDF of the successful requests, percentiles marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = report.records
    ok = r.latency_s[r.outcome == OUTCOMES.index(Outcome.OK)] * 1e3
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    if ok.size:
        hist.hist(ok, bins=60, color="tab:blue")
        xs = np.sort(ok)
        cdf.plot(xs, np.arange(1, xs.size + 1) / xs.size, color="tab:blue")
        for name in ("p50", "p99", "p99.9"):
            value = report.summary["latency_s"][name]
            if value is not None:
                for ax in (hist, cdf):
                    ax.axvline(value * 1e3, ls="--", lw=0.8, color="gray")
                cdf.annotate(name, (value * 1e3, 0.02), rotation=90, fontsize=8, color="gray")
    hist.set(xlabel="latency from scheduled send (ms)", ylabel="requests", title="ok requests")
    cdf.set(xlabel="latency (ms)", ylabel="fraction ≤ x", ylim=(0, 1.01), title="CDF")
    s = report.summary
    fig.suptitle(
        f"{report.offered_rps:g} req/s offered, {s['goodput_rps']:.1f} ok/s; "
        f"{s['requests'] - s['ok']} of {s['requests']} not ok"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
