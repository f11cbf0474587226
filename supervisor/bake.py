"""After promotion: the bake time, and the way back to the stable version.

Every strategy ends the same way. Once the new version takes all traffic
(`RolloutContext.switched`), it is watched for the plan's bake time: if it
crash-loops (two restarts, or the agent fails) or breaches the thresholds
against the stable version's own numbers, Caxton goes back to the previous
stable version by itself (`revert`): instantly to blue-green's old set while
it is kept warm, else through a graceful rollout. An operator's abort during
the bake does the same. Every ending is recorded (`RolloutContext.ended`):
the record, an event, and the deployment and rollback metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .analysis import Counts, Result, Sample, judge
from .deadline import Deadline
from .errors import CaxtonError, FailedPrecondition
from .instance import WorkerInstance
from .lifecycle import AgentState
from .rollout import Rollout, drain
from .rollout_status import RolloutState
from .steering import Steering
from .store import VersionRecord
from .strategy import RolloutPlan

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("caxton.rollout")

WATCH_EVERY_S = 0.1
# Restarts of the promoted version within the bake time that make a crash loop.
CRASH_LOOP_RESTARTS = 2


@dataclass
class RolloutContext:
    """One rollout: what it moves between, and where it reports."""

    agent: Agent
    plan: RolloutPlan
    stable: VersionRecord
    candidate: VersionRecord
    steering: Steering
    counts: Callable[[int], Counts]  # a version's message numbers so far
    queue_limit: int
    warmup: list[bytes]
    start_timeout_s: float
    drain_timeout_s: float
    set_current: Callable[[VersionRecord], None]  # durably: the version in service, marked stable
    finished: Callable[[str, float], None]  # (deployment outcome, seconds): caxton_deployments_total
    rolled_back: Callable[[str], None]  # (reason): caxton_rollbacks_total
    release_standby: Callable[[], None] = lambda: None  # blue-green: end the old set once its window closes
    restore_standby: Callable[[], bool] = lambda: False  # blue-green: the old set back in service, if warm
    started: float = field(default_factory=time.monotonic)
    promoted_after_s: float = 0.0
    counted: bool = False  # the deployment's outcome is counted once

    def count_once(self, outcome: str, seconds: float) -> None:
        if not self.counted:
            self.counted = True
            self.finished(outcome, seconds)

    def refused(self, exc: Exception) -> FailedPrecondition:
        """The new version could not start: nothing changed."""
        reason = f"v{self.candidate.version} could not start: {exc}"
        self.ended(RolloutState.ABORTED, "", reason)
        return FailedPrecondition(f"rollout of {self.agent.name!r} to v{self.candidate.version} failed, "
                                  f"v{self.stable.version} keeps serving: {exc}")

    def switched(self) -> None:
        """The new version takes all traffic: recorded durably, then baking."""
        self.set_current(self.candidate)
        self.promoted_after_s = time.monotonic() - self.started
        baking = self.plan.bake_s > 0
        message = (f"v{self.candidate.version} takes all traffic"
                   + (f"; baking for {self.plan.bake_s:g} s" if baking else ""))
        self.steering.update("rollout-promoted", message, share=1.0,
                             state=RolloutState.BAKING if baking else RolloutState.PROMOTED, reason=message)
        if not baking:
            self.count_once("succeeded", self.promoted_after_s)

    def ended(self, state: RolloutState, cause: str, reason: str) -> None:
        """The rollout is over without (or after losing) its promotion."""
        kind = "rollout-aborted" if state is RolloutState.ABORTED else "rollout-rolled-back"
        words = f"{cause}: {reason}" if cause else reason
        self.steering.update(kind, words, state=state, reason=words, share=0.0)
        self.count_once("rolled-back" if state is RolloutState.ROLLED_BACK else "failed",
                       time.monotonic() - self.started)
        if cause:
            self.rolled_back(cause)
        self.steering.done.set()


def end_workers(ctx: RolloutContext, instances: list[WorkerInstance]) -> None:
    """Let retired workers finish what they hold, then end them."""
    if instances:
        drain(instances, ctx.agent.mailbox, Deadline.after(ctx.drain_timeout_s), agent=ctx.agent.name)


def bake(ctx: RolloutContext) -> None:
    """Watch the promoted version for the bake time (and keep blue-green's
    old set warm for its window); go back to the stable version on a crash
    loop, a breach or an abort."""
    plan = ctx.plan
    agent = ctx.agent
    began = time.monotonic()
    restarts = agent.recovery.restarts
    reference = Sample.between(None, ctx.counts(ctx.stable.version))
    since = ctx.counts(ctx.candidate.version)
    baking = plan.bake_s > 0
    try:
        while True:
            elapsed = time.monotonic() - began
            if baking and elapsed >= plan.bake_s:
                baking = False
                ctx.steering.update("rollout-baked", f"v{ctx.candidate.version} passed its {plan.bake_s:g} s bake",
                                    state=RolloutState.PROMOTED, reason="")
                ctx.count_once("succeeded", ctx.promoted_after_s)
            if not baking and (agent.standby is None or elapsed >= plan.keep_old_s):
                return
            command, _ = ctx.steering.wait(WATCH_EVERY_S)
            if command == "abort":
                _revert(ctx, RolloutState.ABORTED, "manual", "aborted by the operator")
                return
            if command == "shutdown":
                if baking:
                    ctx.steering.update("rollout-baked", "the supervisor shut down during the bake",
                                        state=RolloutState.PROMOTED, reason="promoted; bake cut short by a shutdown")
                    ctx.count_once("succeeded", ctx.promoted_after_s)
                return
            if command == "promote" and baking:
                began -= plan.bake_s  # the operator ends the bake early
                continue
            if not baking:
                continue
            if agent.state is AgentState.FAILED or agent.recovery.restarts - restarts >= CRASH_LOOP_RESTARTS:
                why = agent.last_error or f"{agent.recovery.restarts - restarts} restarts"
                _revert(ctx, RolloutState.ROLLED_BACK, "crash-loop",
                        f"v{ctx.candidate.version} crash-looped within its bake time: {why}")
                return
            verdict = judge(reference, Sample.between(since, ctx.counts(ctx.candidate.version)),
                            plan.thresholds)
            if verdict.result is Result.FAIL:
                _revert(ctx, RolloutState.ROLLED_BACK, "bake-failure", f"{verdict.cause}: {verdict.reason}")
                return
    finally:
        ctx.release_standby()
        ctx.steering.done.set()


def _revert(ctx: RolloutContext, state: RolloutState, cause: str, reason: str) -> None:
    """Back to the stable version after a promotion."""
    agent = ctx.agent
    log.warning("[%s] going back to v%d: %s", agent.name, ctx.stable.version, reason)
    try:
        if not ctx.restore_standby():
            if agent.state is AgentState.FAILED:
                with agent.state_lock:
                    agent.version = ctx.stable
                agent.start()
            else:
                Rollout(agent, ctx.stable, warmup=[], drain_timeout_s=ctx.drain_timeout_s,
                        start_timeout_s=ctx.start_timeout_s, on_switched=lambda v: None,
                        on_stable=lambda v: None).run()
        ctx.set_current(ctx.stable)
    except CaxtonError as exc:
        reason = f"{reason}; going back to v{ctx.stable.version} failed too: {exc.message}"
        log.error("[%s] %s", agent.name, reason)
    ctx.ended(state, cause, reason)
