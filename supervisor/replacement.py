"""Replacement strategies: immediate, rolling and blue-green, acting on replicas.

Each runs in the caller's thread under the agent's operation lock, and
either moves the agent to the new version or leaves it serving the stable
one, with the reason (`RolloutContext.refused`):

- immediate: the old workers finish what they hold and end, then the new
  start; messages wait in the mailbox meanwhile (a pause, nothing lost). If
  the new version cannot start, the old one starts again.
- rolling: `batch` replicas at a time, each new batch started and proven
  before an old one retires, so there are never fewer healthy replicas than
  before. If a batch cannot start, the replaced batches go back.
- blue-green: the whole new set starts and is proven, traffic flips at once,
  and the old set stays warm (`Standby`) for `keep_old_s`: going back within
  that window starts no worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bake import RolloutContext, end_workers
from .deadline import Deadline
from .errors import FailedPrecondition, WorkerStartError
from .instance import InstanceStartError, WorkerInstance
from .lifecycle import AgentState
from .rollout import discard, launch_many, prove_ready
from .store import VersionRecord
from .strategy import Strategy

_START_FAILED = (InstanceStartError, WorkerStartError)


@dataclass
class Standby:
    """Blue-green's old set: retired from the mailbox, alive, ready to serve."""

    version: VersionRecord
    instances: list[WorkerInstance]


def replace_replicas(ctx: RolloutContext) -> None:
    """Run the plan's replacement strategy to the switch (then ctx.switched())."""
    agent = ctx.agent
    with agent.operation():
        if agent.state is not AgentState.RUNNING:
            raise FailedPrecondition(f"agent {agent.name!r} is {agent.state.value}; only a running agent "
                                     "can be rolled out")
        ctx.steering.update("rollout-step", f"{ctx.plan.strategy.value}: starting v{ctx.candidate.version}",
                            step=1)
        strategy = ctx.plan.strategy
        if strategy is Strategy.IMMEDIATE:
            _immediate(ctx)
        elif strategy is Strategy.ROLLING:
            _rolling(ctx)
        else:
            _blue_green(ctx)
    ctx.switched()


def _proven(ctx: RolloutContext, version: VersionRecord, count: int) -> list[WorkerInstance]:
    fresh = launch_many(ctx.agent.launch, version, count)
    try:
        prove_ready(fresh, ctx.warmup if version is ctx.candidate else [], ctx.start_timeout_s)
    except InstanceStartError:
        discard(fresh)
        raise
    return fresh


def _immediate(ctx: RolloutContext) -> None:
    agent = ctx.agent
    old = agent.switch_to([], ctx.candidate)
    end_workers(ctx, old)
    try:
        fresh = _proven(ctx, ctx.candidate, agent.replicas)
    except _START_FAILED as exc:
        with agent.state_lock:
            agent.version = ctx.stable
        try:
            agent.switch_to(_proven(ctx, ctx.stable, agent.replicas))
        except _START_FAILED as again:
            # Neither starts now: restart supervision takes over, with backoff.
            agent.recovery.worker_failed(f"v{ctx.stable.version} could not start again: {again}")
        raise ctx.refused(exc) from exc
    agent.switch_to(fresh)


def _rolling(ctx: RolloutContext) -> None:
    agent = ctx.agent
    old = list(agent.instances)
    replaced: list[WorkerInstance] = []  # new workers in service so far
    done = 0
    while done < len(old):
        batch = old[done:done + ctx.plan.batch]
        try:
            fresh = _proven(ctx, ctx.candidate, len(batch))
        except _START_FAILED as exc:
            _put_back(ctx, replaced)
            raise ctx.refused(exc) from exc
        _swap(ctx, batch, fresh)
        replaced.extend(fresh)
        done += len(batch)
        ctx.steering.update("rollout-step", f"{done} of {len(old)} replicas on v{ctx.candidate.version}",
                            step=done, share=done / len(old))
    with agent.state_lock:
        agent.version = ctx.candidate


def _swap(ctx: RolloutContext, retiring: list[WorkerInstance], fresh: list[WorkerInstance]) -> None:
    """`fresh` into service beside the others, then `retiring` out of it."""
    agent = ctx.agent
    agent.switch_to(fresh)
    with agent.state_lock:
        agent.instances = [i for i in agent.instances if i not in retiring]
        for instance in retiring:
            instance.retire(agent.mailbox, drain=False)
    end_workers(ctx, retiring)


def _put_back(ctx: RolloutContext, replaced: list[WorkerInstance]) -> None:
    """A rolling rollout that cannot go on: the stable version again on
    every replica it had replaced, batch by batch as on the way in."""
    for start in range(0, len(replaced), ctx.plan.batch):
        batch = replaced[start:start + ctx.plan.batch]
        try:
            _swap(ctx, batch, _proven(ctx, ctx.stable, len(batch)))
        except _START_FAILED as exc:
            ctx.agent.recovery.worker_failed(f"v{ctx.stable.version} could not start again: {exc}")
            return


def _blue_green(ctx: RolloutContext) -> None:
    agent = ctx.agent
    try:
        fresh = _proven(ctx, ctx.candidate, agent.replicas)
    except _START_FAILED as exc:
        raise ctx.refused(exc) from exc
    old = agent.switch_to(fresh, ctx.candidate)
    deadline = Deadline.after(ctx.drain_timeout_s)
    for instance in old:
        instance.wait_idle(deadline)
    with agent.state_lock:
        agent.standby = Standby(ctx.stable, old)


def restore_standby(ctx: RolloutContext) -> bool:
    """Blue-green's old set back in service in one step, if it is still warm
    and whole; the new set is ended. False: nothing was changed."""
    agent = ctx.agent
    with agent.operation():
        with agent.state_lock:
            standby = agent.standby
            if standby is None or len(standby.instances) < agent.replicas:
                return False
            agent.standby = None
        for instance in standby.instances:
            instance.reinstate()
        current = agent.switch_to(standby.instances, standby.version)
    end_workers(ctx, current)
    return True


def release_standby(ctx: RolloutContext) -> None:
    """Blue-green's window has closed: the old set ends."""
    agent = ctx.agent
    with agent.state_lock:
        standby, agent.standby = agent.standby, None
    if standby is not None:
        end_workers(ctx, standby.instances)
