"""Judged rollouts: canary, traffic-split and parallel, step by step.

The new version's workers start beside the stable set as a candidate lane
(candidate.py). `begin` does that in the caller's thread (all or nothing:
if they cannot start, nothing changed); `run` then drives the rollout in a
thread of its own: each step gives the candidate its share (or, parallel, a
copy of every message), holds it for `step_s` and at least `min_messages`,
and asks the analysis (analysis.py) for a verdict several times a second.
A breach withdraws the candidate at once (`rolled-back`, with the cause);
the last step passed, the candidate takes all traffic (`promote`) and the
bake time begins (bake.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .analysis import LATENCY_SAMPLES, Counts, Result, Sample, Verdict, judge, judge_shadow
from .bake import RolloutContext, bake, end_workers
from .candidate import Candidate, admit, promote, withdraw
from .errors import FailedPrecondition, WorkerStartError
from .instance import InstanceStartError
from .lifecycle import AgentState
from .rollout import discard, launch_many, prove_ready
from .rollout_status import RolloutState
from .strategy import Strategy

log = logging.getLogger("caxton.rollout")

# How often a step is judged while nothing else happens.
JUDGE_EVERY_S = 0.1


@dataclass(frozen=True)
class _Ending:
    promote: bool
    cause: str = ""  # a rollback's reason label (rollout_status.ROLLBACK_REASONS)
    reason: str = ""
    aborted: bool = False


class JudgedRollout:
    def __init__(self, ctx: RolloutContext) -> None:
        self.ctx = ctx
        plan = ctx.plan
        self.shadow = plan.strategy is Strategy.PARALLEL
        workers = plan.canary_replicas if plan.strategy is Strategy.CANARY else ctx.agent.replicas
        self.workers = workers
        self.candidate = Candidate(ctx.candidate, ctx.queue_limit, shadow=self.shadow, compare=plan.compare)
        self.candidate.on_failure = ctx.steering.failed

    def begin(self) -> None:
        """Start and prove the candidate's workers and put its lane beside
        the stable set with the first step's share (or, parallel, the copies),
        so traffic reaches it when the caller is answered, not when the
        rollout's thread first runs. Raises FailedPrecondition (nothing
        changed) if they cannot start."""
        ctx = self.ctx
        try:
            fresh = launch_many(ctx.agent.launch, ctx.candidate, self.workers)
        except (InstanceStartError, WorkerStartError) as exc:
            raise ctx.refused(exc) from exc
        try:
            prove_ready(fresh, ctx.warmup, ctx.start_timeout_s)
        except InstanceStartError as exc:
            discard(fresh)
            raise ctx.refused(exc) from exc
        with ctx.agent.operation():
            if ctx.agent.candidate is not None or ctx.agent.state is not AgentState.RUNNING:
                discard(fresh)
                raise FailedPrecondition(f"agent {ctx.agent.name!r} is no longer running; nothing was changed")
            admit(ctx.agent, self.candidate, fresh, count=not self.shadow)
            # status shows each version's share of the traffic from here on.
            ctx.steering.baseline = {v.version: sum(ctx.counts(v.version)[0].values())
                                     for v in (ctx.stable, ctx.candidate)}
            if not self.shadow and ctx.plan.steps:
                self.candidate.split.set_share(ctx.plan.steps[0] / 100)

    def run(self) -> None:
        """Drive the rollout to its end (in the rollout's own thread)."""
        ctx = self.ctx
        ending = self._steps()
        if not ending.promote:
            self._roll_back(ending)
            return
        try:
            more = self._rest_of_the_set()
        except (InstanceStartError, WorkerStartError) as exc:
            self._roll_back(_Ending(False, "crash-loop", f"the rest of v{ctx.candidate.version}'s workers "
                                                          f"could not start: {exc}"))
            return
        with ctx.agent.operation():
            old = promote(ctx.agent, self.candidate, more)
        ctx.switched()
        end_workers(ctx, old)
        bake(ctx)

    def _rest_of_the_set(self) -> list:
        """Canary: the workers the candidate still needs to replace the whole stable set."""
        ctx = self.ctx
        missing = ctx.agent.replicas - self.workers
        if missing <= 0:
            return []
        fresh = launch_many(ctx.agent.launch, ctx.candidate, missing)
        try:
            prove_ready(fresh, ctx.warmup, ctx.start_timeout_s)
        except InstanceStartError:
            discard(fresh)
            raise
        return fresh

    def _steps(self) -> _Ending:
        ctx = self.ctx
        steps = ctx.plan.steps or (100.0,)
        stable_from = ctx.counts(ctx.stable.version)
        for index, percent in enumerate(steps, 1):
            if not self.shadow:
                self.candidate.split.set_share(percent / 100)
            ctx.steering.update("rollout-step", self._step_words(index, percent), step=index,
                                share=1.0 if self.shadow else percent / 100)
            ending = self._hold(stable_from, ctx.counts(ctx.stable.version), ctx.counts(ctx.candidate.version))
            if ending is not None:
                return ending
        return _Ending(True)

    def _step_words(self, index: int, percent: float) -> str:
        version = self.ctx.candidate.version
        if self.shadow:
            return f"v{version} gets a copy of every message; replies compared ({self.ctx.plan.compare})"
        return f"step {index} of {len(self.ctx.plan.steps)}: {percent:g}% of messages to v{version}"

    def _hold(self, stable_from: Counts, step_from: Counts, candidate_from: Counts) -> _Ending | None:
        """Hold the current step until it passes (None), or the rollout ends."""
        ctx = self.ctx
        started = time.monotonic()
        wait = 0.0  # the first verdict at once: a bad version is caught within its first messages
        while True:
            command, failure = ctx.steering.wait(wait)
            wait = JUDGE_EVERY_S
            if command == "abort":
                return _Ending(False, "manual", "aborted by the operator", aborted=True)
            if command == "shutdown":
                return _Ending(False, "supervisor-restart", "the supervisor shut down mid-rollout", aborted=True)
            if command == "promote":
                return _Ending(True)
            if command == "pause":
                ctx.steering.update("rollout-paused", "paused by the operator", state=RolloutState.PAUSED)
            elif command == "resume":
                ctx.steering.update("rollout-resumed", "resumed by the operator", state=RolloutState.PROGRESSING)
            if failure:
                return _Ending(False, "crash-loop", f"a v{ctx.candidate.version} worker failed: {failure}")
            verdict = self._verdict(stable_from, step_from, candidate_from)
            if ctx.steering.record.verdict != verdict.reason:
                # Shown by status; not written to the store each time it changes.
                ctx.steering.update(verdict=verdict.reason, keep=False)
            if verdict.result is Result.FAIL:
                return _Ending(False, verdict.cause, verdict.reason)
            held = time.monotonic() - started >= (0 if self.shadow else ctx.plan.step_s)
            if verdict.result is Result.PASS and held and ctx.steering.record.state is RolloutState.PROGRESSING:
                return None

    def _verdict(self, stable_from: Counts, step_from: Counts, candidate_from: Counts) -> Verdict:
        """The step's verdict. Latency is compared over the same window where
        the stable version has enough messages for a p99 (both then saw the
        same load on the host), else over the whole rollout."""
        ctx = self.ctx
        now = ctx.counts(ctx.stable.version)
        stable = Sample.between(step_from, now)
        if sum(stable.buckets) < max(LATENCY_SAMPLES, ctx.plan.thresholds.min_messages):
            stable = Sample.between(stable_from, now)
        candidate = Sample.between(candidate_from, ctx.counts(ctx.candidate.version))
        verdict = judge(stable, candidate, ctx.plan.thresholds)
        if not self.shadow or verdict.result is Result.FAIL:
            return verdict
        agreed, disagreed = self.candidate.comparisons()
        shadow = judge_shadow(agreed, disagreed, ctx.plan.thresholds)
        if shadow.result is Result.FAIL and self.candidate.last_mismatch:
            return Verdict(Result.FAIL, f"{shadow.reason} (latest: {self.candidate.last_mismatch})", shadow.cause)
        if shadow.result is not Result.PASS:
            return shadow
        return verdict

    def _roll_back(self, ending: _Ending) -> None:
        """Traffic back to the stable set at once, then end the candidate's workers."""
        ctx = self.ctx
        with ctx.agent.operation():
            retired = withdraw(ctx.agent, self.candidate)
        state = RolloutState.ABORTED if ending.aborted else RolloutState.ROLLED_BACK
        log.warning("[%s] rollout to v%d %s: %s", ctx.agent.name, ctx.candidate.version, state.value, ending.reason)
        ctx.ended(state, ending.cause, ending.reason)
        end_workers(ctx, retired)
