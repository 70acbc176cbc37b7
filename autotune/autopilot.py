"""The autopilot's decision: hold, raise capacity at once, or save cost once the saving is confirmed.

Each interval the loop (`autotune.autopilot_loop`) measures the live traffic, re-tunes on the
simulator at the live rate, and hands `step` an `Observation`; `step` returns the next state and a
`Decision`. No I/O and no clock, so the rules are tested as traces of observations.

The rules, first match wins:

1. A step of the interval failed (`Observation.error`): HOLD, and the saving streak restarts.
2. The SLO is at risk — live p99 > `risk` × SLO p99, or the shed rate over the spec's limit:
   SCALE_UP to the tuned config at once (no confirmation, no cooldown) when it differs from the
   live one and is not cheaper (a cut while the SLO is at risk would be a guess: the model and the
   live traffic disagree), unless it is a config the live check just rolled back; else HOLD.
3. Too little traffic to judge (`Traffic.busy` false): HOLD.
4. A saving — tuned predicted cost < live predicted cost × (1 − `saving`) while the live SLO
   holds — found in `confirm` consecutive intervals, and at least `cooldown` intervals since the
   last rollout: SAVE. Anything else: HOLD.

A rollout counts from the interval after it: `Observation.previous` carries its outcome. One that
was applied or rolled back starts the cooldown (the deployment changed, if only for a while) and
restarts the streak; a config that was rolled back is not raised to again during the cooldown
(and a saving waits the cooldown out anyway). A deploy that failed changed nothing, so the same
decision is taken again the next interval.

>>> state = PilotState(Policy(slo_p99_s=0.05, max_shed_rate=0.001, confirm=2))
>>> quiet = Traffic(window_s=60, requests_per_s=10, ok_per_s=10, shed_rate=0, p50_s=0.01,
...                 p99_s=0.02)
>>> cheaper = Observation(quiet, live=Candidate("a", 1.0), tuned=Candidate("b", 0.5))
>>> state, decision = step(state, cheaper)
>>> decision.action.value, decision.reason
('hold', 'saving 50% ($1.000/h → $0.500/h): 1/2 intervals agree')
>>> step(state, cheaper)[1].action.value
'save'
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from serving.monitoring.exporter import AutopilotAction as Action
from serving.monitoring.exporter import RolloutOutcome

if TYPE_CHECKING:
    from serving.monitoring.live import LiveStats
    from simulator import ServingConfig

__all__ = [
    "Action",
    "Candidate",
    "Decision",
    "Observation",
    "PilotState",
    "Policy",
    "Traffic",
    "at_risk",
    "fingerprint",
    "missing_metric",
    "step",
]

MIN_REQUESTS = 20  # requests in a window before its latency or shed rate means anything


@dataclass(frozen=True)
class Policy:
    """The SLO the autopilot guards and how eagerly it acts."""

    slo_p99_s: float
    max_shed_rate: float
    risk: float = 0.9  # at risk above this share of the SLO p99
    saving: float = 0.1  # the least relative cost saving worth a rollout
    confirm: int = 2  # consecutive intervals that must find the saving
    cooldown: int = 2  # intervals after a rollout before a saving may be rolled out

    def __post_init__(self) -> None:
        if not self.slo_p99_s > 0:
            raise ValueError(f"slo_p99_s must be > 0 (got {self.slo_p99_s})")
        if not 0 < self.risk <= 1:
            raise ValueError(f"risk must be in (0, 1] (got {self.risk})")
        if not 0 <= self.saving < 1:
            raise ValueError(f"saving must be in [0, 1) (got {self.saving})")
        if self.confirm < 1:
            raise ValueError(f"confirm must be >= 1 (got {self.confirm})")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 (got {self.cooldown})")


@dataclass(frozen=True)
class Traffic:
    """The live figures the rules read: one window of `LiveStats` (NaN: no latency samples)."""

    window_s: float
    requests_per_s: float
    ok_per_s: float
    shed_rate: float
    p50_s: float
    p99_s: float
    offered_per_s: float = math.nan  # arrivals: answered plus the growth of those in flight

    @classmethod
    def of(cls, stats: LiveStats) -> Traffic:
        return cls(
            stats.window_s,
            stats.requests_per_s,
            stats.ok_per_s,
            stats.shed_rate,
            stats.p50_s,
            stats.p99_s,
            stats.offered_per_s,
        )

    @property
    def requests(self) -> float:
        return self.requests_per_s * self.window_s

    @property
    def busy(self) -> bool:
        """Enough answered requests to judge latency (as `LiveStats.busy`)."""
        return self.ok_per_s * self.window_s >= MIN_REQUESTS


@dataclass(frozen=True)
class Candidate:
    """A config as the rules see it: an identity and its predicted cost at the live rate."""

    config: str  # `fingerprint` of its knob values
    cost_per_hour: float


@dataclass(frozen=True)
class Observation:
    """One interval: the live traffic, the live and the tuned config, and what went wrong."""

    traffic: Traffic | None = None
    live: Candidate | None = None
    tuned: Candidate | None = None  # the tuning run's winner (None: none, or not tuned)
    error: str | None = None  # why the interval could not be judged
    previous: RolloutOutcome | None = None  # how the last interval's rollout ended, if any

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        data = asdict(self)
        if self.traffic is not None:
            data["traffic"] = {k: plain(v) for k, v in data["traffic"].items()}
        data["previous"] = None if self.previous is None else self.previous.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        traffic = data.get("traffic")
        live, tuned = data.get("live"), data.get("tuned")
        return cls(
            traffic=None
            if traffic is None
            else Traffic(**{k: math.nan if v is None else v for k, v in traffic.items()}),
            live=None if live is None else Candidate(**live),
            tuned=None if tuned is None else Candidate(**tuned),
            error=data.get("error"),
            previous=None if data.get("previous") is None else RolloutOutcome(data["previous"]),
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass(frozen=True)
class PilotState:
    """What the rules remember between intervals."""

    policy: Policy
    agreeing: int = 0  # consecutive intervals, this one included, that found a saving
    since_rollout: int | None = None  # intervals since the last rollout (None: none yet)
    pending: str | None = None  # the config the last SCALE_UP or SAVE rolled out
    refused: str | None = None  # a config the live check rolled back (until the cooldown ends)


def fingerprint(config: ServingConfig) -> str:
    """A short identity of a config's knob values (equal configs, equal fingerprints)."""
    return hashlib.sha256(config.to_yaml().encode()).hexdigest()[:12]


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.0f} ms"


def missing_metric(traffic: Traffic) -> str | None:
    """Why the window cannot be judged although requests flowed (a latency metric is missing)."""
    if traffic.ok_per_s > 0 and math.isnan(traffic.p99_s):
        return (
            f"{traffic.ok_per_s * traffic.window_s:.0f} requests answered but no latency "
            "reported (ray_serve_http_request_latency_ms missing)"
        )
    return None


def at_risk(traffic: Traffic, policy: Policy) -> str | None:
    """Why the live SLO is at risk in this window, or None."""
    if traffic.requests >= MIN_REQUESTS and traffic.shed_rate > policy.max_shed_rate:
        return f"shed {traffic.shed_rate:.2%} over the limit {policy.max_shed_rate:.2%}"
    if traffic.busy and traffic.p99_s > policy.risk * policy.slo_p99_s:
        return (
            f"p99 {_ms(traffic.p99_s)} over {policy.risk:.0%} of the SLO ({_ms(policy.slo_p99_s)})"
        )
    return None


def _after_rollout(state: PilotState, previous: RolloutOutcome | None) -> PilotState:
    """Fold in the last interval's rollout and count this interval."""
    if previous in (RolloutOutcome.APPLIED, RolloutOutcome.ROLLED_BACK):
        rolled_back = previous is RolloutOutcome.ROLLED_BACK and state.policy.cooldown > 0
        refused = state.pending if rolled_back else None
        return replace(state, agreeing=0, since_rollout=0, pending=None, refused=refused)
    since = None if state.since_rollout is None else state.since_rollout + 1
    refused = state.refused
    if since is None or since >= state.policy.cooldown:
        refused = None
    return replace(state, since_rollout=since, refused=refused)


def _cost(candidate: Candidate) -> str:
    return f"${candidate.cost_per_hour:.3f}/h"


def _scale_up(state: PilotState, obs: Observation, risk: str) -> tuple[PilotState, Decision]:
    state = replace(state, agreeing=0)
    live, tuned = obs.live, obs.tuned
    if live is None or tuned is None:
        return state, Decision(Action.HOLD, f"{risk}; no tuned config to roll out")
    if tuned.config == live.config:
        return state, Decision(Action.HOLD, f"{risk}; the tuned config is the live one")
    if tuned.cost_per_hour < live.cost_per_hour:
        return state, Decision(
            Action.HOLD,
            f"{risk}; the tuned config is cheaper ({_cost(tuned)} < {_cost(live)}): not a "
            "capacity raise, so the model disagrees with the live traffic",
        )
    if tuned.config == state.refused:
        return state, Decision(Action.HOLD, f"{risk}; the tuned config was just rolled back")
    return replace(state, pending=tuned.config), Decision(
        Action.SCALE_UP, f"{risk}: rolling out the tuned config ({_cost(live)} → {_cost(tuned)})"
    )


def _save(state: PilotState, obs: Observation) -> tuple[PilotState, Decision]:
    policy = state.policy
    live, tuned = obs.live, obs.tuned
    if live is None or tuned is None:
        return replace(state, agreeing=0), Decision(Action.HOLD, "no tuned config")
    traffic = obs.traffic
    holds = f"SLO holds (p99 {_ms(traffic.p99_s)})" if traffic is not None else "SLO holds"
    bar = live.cost_per_hour * (1 - policy.saving)
    if tuned.config == live.config or not tuned.cost_per_hour < bar:
        return replace(state, agreeing=0), Decision(
            Action.HOLD,
            f"{holds}; tuned {_cost(tuned)} vs live {_cost(live)}: no saving of "
            f"{policy.saving:.0%}",
        )
    agreeing = state.agreeing + 1
    state = replace(state, agreeing=agreeing)
    share = 1 - tuned.cost_per_hour / live.cost_per_hour if live.cost_per_hour > 0 else 1.0
    saving = f"saving {share:.0%} ({_cost(live)} → {_cost(tuned)})"
    if agreeing < policy.confirm:
        return state, Decision(
            Action.HOLD, f"{saving}: {agreeing}/{policy.confirm} intervals agree"
        )
    since = state.since_rollout
    if since is not None and since < policy.cooldown:
        return state, Decision(
            Action.HOLD,
            f"{saving}: cooldown, {since + 1}/{policy.cooldown} intervals since a rollout",
        )
    return replace(state, pending=tuned.config), Decision(
        Action.SAVE, f"{saving}, confirmed by {agreeing} interval{'s' if agreeing > 1 else ''}"
    )


def step(state: PilotState, obs: Observation) -> tuple[PilotState, Decision]:
    """The next state and this interval's decision (the rules in the module doc)."""
    state = _after_rollout(state, obs.previous)
    if obs.error is not None:
        return replace(state, agreeing=0), Decision(Action.HOLD, obs.error)
    traffic = obs.traffic
    if traffic is None:
        return replace(state, agreeing=0), Decision(Action.HOLD, "no live figures")
    risk = at_risk(traffic, state.policy)
    if risk is not None:
        return _scale_up(state, obs, risk)
    if not traffic.busy:
        return replace(state, agreeing=0), Decision(
            Action.HOLD, f"too little traffic ({traffic.ok_per_s * traffic.window_s:.0f} answered)"
        )
    return _save(state, obs)
