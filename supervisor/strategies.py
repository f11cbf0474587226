"""Running a rollout of any strategy: its context, its first part, its thread.

`run_rollout` is what a reload (or a deploy to an existing name) with a
strategy does: it registers the rollout (one per agent), runs the part the
caller waits for in the caller's thread, and leaves the rest to the
rollout's own thread:

- graceful, immediate, rolling, blue-green: the caller waits for the
  switch; the bake time (and blue-green's warm old set) goes on after.
- canary, traffic-split, parallel: the caller waits until the new workers
  are up beside the stable set; the steps, their verdicts and the promotion
  go on after, reported by the record and the rollout-* events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .analysis import Counts
from .bake import RolloutContext, bake
from .errors import CaxtonError
from .progressive import JudgedRollout
from .replacement import release_standby, replace_replicas, restore_standby
from .rollout import Rollout, RolloutResult
from .rollout_status import RolloutRecord, RolloutState
from .rollouts import Rollouts
from .store import VersionRecord
from .strategy import RolloutPlan, Strategy

if TYPE_CHECKING:
    from .agent import Agent


@dataclass(frozen=True)
class RolloutDeps:
    """What every rollout reports to (built by the runtime)."""

    rollouts: Rollouts
    counts: Callable[[str, int], Counts]  # (agent, version) -> its message numbers
    set_current: Callable[[str, VersionRecord], None]  # durably: in service, and stable
    finished: Callable[[str, str, float], None]  # (strategy, outcome, seconds)
    rolled_back: Callable[[str, str], None]  # (agent, reason)
    queue_limit: int
    start_timeout_s: float


def run_rollout(deps: RolloutDeps, agent: Agent, version: VersionRecord, plan: RolloutPlan, *,
                warmup: list[bytes], drain_timeout_s: float) -> tuple[RolloutResult, RolloutRecord]:
    """Begin the rollout of `agent` to `version`; returns when its first
    part is done (see the module docstring). Raises FailedPrecondition when
    it could not begin (the stable version keeps serving)."""
    stable = agent.version
    name = agent.name
    record = RolloutRecord(agent=name, strategy=plan.strategy.value, state=RolloutState.PROGRESSING,
                           stable_version=stable.version, candidate_version=version.version,
                           started_at=time.time(), steps=plan.steps)
    # A plain graceful reload tells its story in its reload-* events, as it
    # always has; rollout-* events come with what it adds (a bake).
    quiet = plan.strategy is Strategy.GRACEFUL and plan.bake_s == 0

    def publish(kind: str, v: int, message: str) -> None:
        if not quiet:
            agent.publish(kind, message, v)

    steering = deps.rollouts.begin(record, publish)
    ctx = RolloutContext(
        agent=agent, plan=plan, stable=stable, candidate=version, steering=steering,
        counts=lambda v: deps.counts(name, v), queue_limit=deps.queue_limit, warmup=warmup,
        start_timeout_s=deps.start_timeout_s, drain_timeout_s=drain_timeout_s,
        set_current=lambda v: deps.set_current(name, v),
        finished=lambda outcome, seconds: deps.finished(plan.strategy.value, outcome, seconds),
        rolled_back=lambda reason: deps.rolled_back(name, reason),
    )
    if not plan.strategy.judged:
        # A judged rollout counts from when its candidate takes traffic (progressive.py).
        steering.baseline = {v.version: sum(deps.counts(name, v.version)[0].values()) for v in (stable, version)}
    ctx.restore_standby = lambda: restore_standby(ctx)
    ctx.release_standby = lambda: release_standby(ctx)
    steps = ", ".join(f"{s:g}%" for s in plan.steps)
    steering.update("rollout-started", f"{plan.strategy.value} v{stable.version} -> v{version.version}"
                    + (f" in steps {steps}" if steps else ""))
    try:
        result, drive = _first_part(ctx)
    except CaxtonError as exc:
        if not steering.done.is_set():
            ctx.ended(RolloutState.ABORTED, "", exc.message)
        deps.rollouts.finish(name, steering)
        raise
    if drive is None:
        deps.rollouts.finish(name, steering)
    else:
        deps.rollouts.in_background(name, steering, drive)
    return result, steering.record


def _first_part(ctx: RolloutContext) -> tuple[RolloutResult, Callable[[], None] | None]:
    """What the caller waits for, and what goes on after (None: nothing)."""
    plan = ctx.plan
    started = time.monotonic()
    if plan.strategy.judged:
        judged = JudgedRollout(ctx)
        judged.begin()
        return RolloutResult(ctx.stable.version, ctx.candidate.version, 0.0, 0.0), judged.run
    if plan.strategy is Strategy.GRACEFUL:
        result = Rollout(ctx.agent, ctx.candidate, warmup=ctx.warmup, drain_timeout_s=ctx.drain_timeout_s,
                         start_timeout_s=ctx.start_timeout_s, on_switched=ctx.set_current,
                         on_stable=lambda v: None).run()
        ctx.switched()
    else:
        replace_replicas(ctx)
        elapsed = time.monotonic() - started
        result = RolloutResult(ctx.stable.version, ctx.candidate.version, elapsed, elapsed)
    watching = plan.bake_s > 0 or ctx.agent.standby is not None
    return result, (lambda: bake(ctx)) if watching else None
