"""Rollout strategies as plain data: what a caller asked for, checked up front.

A `RolloutPlan` says how a new version reaches traffic: the strategy and its
parameters, and the thresholds the analysis (analysis.py) judges it by.
Every unset field takes the supervisor's `[rollout]` defaults
(`RolloutDefaults`); each field is checked on its own and an error names it
(`rollout.steps: ...`), so a bad request is refused before any worker starts.

Replacement strategies act on replicas (immediate, rolling, blue-green,
graceful); judged strategies put the new version beside the stable one and
give it a share of the traffic (canary, traffic-split) or a copy of every
message (parallel), judged step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import Enum

from .analysis import COMPARE_MODES, Thresholds, check_thresholds
from .errors import InvalidArgument
from .settings import Table


class Strategy(Enum):
    GRACEFUL = "graceful"
    IMMEDIATE = "immediate"
    ROLLING = "rolling"
    BLUE_GREEN = "blue-green"
    CANARY = "canary"
    TRAFFIC_SPLIT = "traffic-split"
    PARALLEL = "parallel"

    @property
    def judged(self) -> bool:
        """The new version serves beside the stable one while it is judged."""
        return self in (Strategy.CANARY, Strategy.TRAFFIC_SPLIT, Strategy.PARALLEL)


STRATEGY_NAMES = tuple(s.value for s in Strategy)


@dataclass(frozen=True)
class RolloutDefaults:
    """The `[rollout]` config table: what a request leaves unset."""

    canary_steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    split_steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    step_s: float = 10.0
    keep_old_s: float = 60.0
    # After promotion: a judged or blue-green rollout is watched this long
    # by default; the replacement strategies only when asked, so that a
    # plain reload behaves as it always did.
    bake_s: float = 60.0
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass(frozen=True)
class RolloutRequest:
    """A caller's rollout options; None = the default."""

    strategy: str = ""
    batch: int | None = None
    keep_old_s: float | None = None
    canary_replicas: int | None = None
    steps: tuple[float, ...] = ()
    step_s: float | None = None
    min_messages: int | None = None
    max_error_rate: float | None = None
    max_latency_ratio: float | None = None
    bake_s: float | None = None
    compare: str = ""
    max_mismatch_rate: float | None = None


@dataclass(frozen=True)
class RolloutPlan:
    strategy: Strategy
    thresholds: Thresholds
    batch: int = 1
    keep_old_s: float = 0.0
    canary_replicas: int = 1
    steps: tuple[float, ...] = ()  # percent shares, ascending, ending at 100
    step_s: float = 0.0
    bake_s: float = 0.0
    compare: str = "exact"


GRACEFUL = RolloutPlan(Strategy.GRACEFUL, Thresholds())

# Longest wait a caller may ask for (a day): a typo of extra zeros is
# refused rather than a rollout that never ends.
_MOST_SECONDS = 86_400.0


def _seconds(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or not 0 <= value <= _MOST_SECONDS:
        raise InvalidArgument(f"rollout.{name}: {value} is not a number of seconds from 0 to {_MOST_SECONDS:.0f}")
    return value


def _steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    for share in steps:
        if not math.isfinite(share) or not 0 < share <= 100:
            raise InvalidArgument(f"rollout.steps: {share} is not a percentage above 0 and at most 100")
    if list(steps) != sorted(set(steps)):
        raise InvalidArgument(f"rollout.steps: {', '.join(f'{s:g}' for s in steps)} do not ascend")
    if steps[-1] != 100:
        raise InvalidArgument(f"rollout.steps: the last step must be 100 (the new version takes all traffic), "
                              f"not {steps[-1]:g}")
    return steps


def plan(request: RolloutRequest, defaults: RolloutDefaults, *, replicas: int) -> RolloutPlan:
    """The plan a request asks for, defaults filled in; InvalidArgument
    naming the first field that is wrong."""
    try:
        strategy = Strategy(request.strategy or Strategy.GRACEFUL.value)
    except ValueError:
        raise InvalidArgument(f"rollout.strategy: {request.strategy!r} is not one of "
                              f"{', '.join(STRATEGY_NAMES)}") from None
    thresholds = _thresholds(request, defaults.thresholds)
    batch = 1 if request.batch is None else request.batch
    if not 1 <= batch <= replicas:
        raise InvalidArgument(f"rollout.batch: {batch} is not from 1 to the agent's {replicas} replicas")
    canary_replicas = 1 if request.canary_replicas is None else request.canary_replicas
    if not 1 <= canary_replicas <= replicas:
        raise InvalidArgument(f"rollout.canary_replicas: {canary_replicas} is not from 1 to the agent's "
                              f"{replicas} replicas")
    default_steps = defaults.canary_steps if strategy is Strategy.CANARY else defaults.split_steps
    steps = _steps(request.steps) if request.steps else default_steps
    compare = request.compare or "exact"
    if compare not in COMPARE_MODES:
        raise InvalidArgument(f"rollout.compare: {compare!r} is not one of {', '.join(COMPARE_MODES)}")
    watched = strategy.judged or strategy is Strategy.BLUE_GREEN
    return RolloutPlan(
        strategy=strategy, thresholds=thresholds, batch=batch,
        keep_old_s=_seconds("keep_old_s", request.keep_old_s, defaults.keep_old_s),
        canary_replicas=canary_replicas,
        steps=steps if strategy in (Strategy.CANARY, Strategy.TRAFFIC_SPLIT) else (),
        step_s=_seconds("step_s", request.step_s, defaults.step_s),
        bake_s=_seconds("bake_s", request.bake_s, defaults.bake_s if watched else 0.0),
        compare=compare,
    )


def _thresholds(request: RolloutRequest, base: Thresholds) -> Thresholds:
    overrides = {f.name: getattr(request, f.name) for f in fields(Thresholds)
                 if getattr(request, f.name, None) is not None}
    try:
        return check_thresholds(replace(base, **overrides))
    except ValueError as exc:
        # check_thresholds' messages begin with the field's name.
        name, _, problem = str(exc).partition(" ")
        raise InvalidArgument(f"rollout.{name}: {problem}") from None


def read_rollout(table: Table) -> RolloutDefaults:
    """[rollout]: defaults for what rollout requests leave unset."""
    base = RolloutDefaults()
    t = base.thresholds
    try:
        thresholds = check_thresholds(Thresholds(
            max_error_rate=table.number("max_error_rate", t.max_error_rate),
            max_latency_ratio=table.number("max_latency_ratio", t.max_latency_ratio),
            min_messages=table.integer("min_messages", t.min_messages, minimum=1),
            max_mismatch_rate=table.number("max_mismatch_rate", t.max_mismatch_rate),
            latency_floor_s=table.number("latency_floor_s", t.latency_floor_s),
        ))
    except ValueError as exc:
        name, _, problem = str(exc).partition(" ")
        raise table.error(name, problem) from None
    defaults = RolloutDefaults(
        canary_steps=_table_steps(table, "canary_steps", base.canary_steps),
        split_steps=_table_steps(table, "split_steps", base.split_steps),
        step_s=table.number("step_s", base.step_s, minimum=0),
        keep_old_s=table.number("keep_old_s", base.keep_old_s, minimum=0),
        bake_s=table.number("bake_s", base.bake_s, minimum=0),
        thresholds=thresholds,
    )
    table.finish()
    return defaults


def _table_steps(table: Table, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    steps = table.numbers(name, default)
    try:
        return _steps(steps)
    except InvalidArgument as exc:
        raise table.error(name, exc.message.split(": ", 1)[-1]) from None
