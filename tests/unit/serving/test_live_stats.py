"""Live figures from two snapshots: the offered rate counts the requests still in flight."""

from __future__ import annotations

import socket

import pytest

from autotune.autopilot_loop import rate_only
from serving.monitoring.live import LiveMetricsError, Window, from_prometheus, parse, summarize
from simulator import load_spec
from tests.unit.autotune.helpers import EXAMPLES

COUNTER = 'ray_serve_num_http_requests_total{application="jizhi",status_code="200"} '
IN_FLIGHT = 'ray_serve_num_ongoing_http_requests{NodeAddress="127.0.0.1"} '


def _text(answered: float, in_flight: float | None) -> str:
    text = COUNTER + f"{answered}\n"
    return text + (IN_FLIGHT + f"{in_flight}\n" if in_flight is not None else "")


def _window(answered: float, in_flight: tuple[float, float] | None) -> Window:
    start, end = in_flight if in_flight is not None else (None, None)
    return Window(parse(_text(100, start), 0.0), parse(_text(100 + answered, end), 10.0))


def test_an_overloaded_window_offers_more_than_it_answers() -> None:
    stats = summarize(_window(45, (3, 28)))  # 45 answered, 25 more waiting than at the start
    assert stats.requests_per_s == pytest.approx(4.5)
    assert stats.offered_per_s == pytest.approx(7.0)


def test_a_draining_window_offers_less_and_never_below_zero() -> None:
    assert summarize(_window(80, (30, 10))).offered_per_s == pytest.approx(6.0)
    assert summarize(_window(5, (60, 0))).offered_per_s == 0.0


def test_without_the_gauge_the_offered_rate_is_the_answered_one() -> None:
    stats = summarize(_window(45, None))
    assert stats.in_flight_change == 0.0 and stats.offered_per_s == pytest.approx(4.5)


def test_the_autopilots_rate_is_the_offered_one() -> None:
    spec = rate_only(load_spec(EXAMPLES / "ctr.yaml"), summarize(_window(45, (3, 28))), [])
    assert spec.workload.rate_rps == pytest.approx(7.0)


def test_an_unreachable_prometheus_is_a_live_metrics_error() -> None:
    """One HTTP client for Prometheus (`prometheus.api`); live readers get their own error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(
        LiveMetricsError, match=rf"no Prometheus answers at http://127.0.0.1:{port}"
    ):
        from_prometheus(f"http://127.0.0.1:{port}", timeout_s=1.0)
