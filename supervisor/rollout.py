"""Rolling an agent onto another version: new workers first, proven, then the switch.

Used by start (all replicas at once) through `launch_many`, and by hot reload
and rollback through `Rollout`, which takes its steps in order: launch the
new workers beside the old ones; prove them (caxton_init passed at load, a
health check, the warm-up messages); switch traffic in one step; drain the
old workers. Up to the switch it is all or nothing: if anything fails, the
new workers are discarded and the old version keeps serving untouched.
The rollout-strategies work adds its strategies here.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .deadline import Deadline
from .errors import FailedPrecondition, WorkerStartError
from .instance import InstanceStartError, WorkerInstance
from .launcher import ExitStatus
from .lifecycle import AgentState
from .mailbox import Mailbox
from .store import VersionRecord
from .worker_client import WorkerCallError

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("caxton.rollout")

# Starts one worker serving `version`: loaded, caxton_init passed.
Launch = Callable[[VersionRecord], WorkerInstance]


def launch_many(launch: Launch, version: VersionRecord, count: int) -> list[WorkerInstance]:
    """Start `count` workers for `version` in parallel; all or nothing."""
    if count == 1:
        return [launch(version)]
    with ThreadPoolExecutor(max_workers=min(count, 16), thread_name_prefix="launch") as pool:
        futures = [pool.submit(launch, version) for _ in range(count)]
    started, errors = [], []
    for future in futures:
        try:
            started.append(future.result())
        except Exception as exc:
            errors.append(exc)
    if errors:
        discard(started)
        raise errors[0]
    return started


def discard(instances: list[WorkerInstance]) -> None:
    """Kill workers that never took traffic, wait for them, release what
    they hold. Blocks: never call it from an exit callback."""
    for instance in instances:
        instance.kill()
    for instance in instances:
        instance.process.wait_exit(5.0)
        instance.close()


def abandon(instances: list[WorkerInstance]) -> None:
    """Kill workers and release what they hold once they have exited,
    without waiting: safe from any thread."""
    for instance in instances:
        instance.kill()
        instance.process.add_exit_callback(functools.partial(_close_on_exit, instance))


def _close_on_exit(instance: WorkerInstance, status: ExitStatus) -> None:
    instance.close()


# caxton_shutdown gets at least this long, even after a drain that used up
# its whole deadline: an agent's last words are worth a second.
SHUTDOWN_GRACE_S = 1.0


def drain(instances: list[WorkerInstance], mailbox: Mailbox, deadline: Deadline, *, agent: str) -> None:
    """Let retired workers finish the batch they hold (until `deadline`),
    then run caxton_shutdown in each and end it."""
    for instance in instances:
        if not instance.wait_idle(deadline):
            log.warning("[%s] worker %d did not finish its batch before the deadline", agent, instance.pid)
            instance.retire(mailbox, drain=False)
    last_words = deadline if deadline.remaining() >= SHUTDOWN_GRACE_S else Deadline.after(SHUTDOWN_GRACE_S)
    for instance in instances:
        instance.shutdown(last_words)


def prove_ready(instances: list[WorkerInstance], warmup: list[bytes], timeout_s: float) -> None:
    """Health-check each new worker and run the warm-up messages through it
    (directly, not through the agent's mailbox); raise InstanceStartError
    saying which check failed."""
    for instance in instances:
        try:
            instance.stats(Deadline.after(timeout_s))
        except WorkerCallError as exc:
            raise InstanceStartError(f"worker {instance.pid} failed its health check: {exc.details}") from exc
        if not warmup:
            continue
        try:
            outcomes = instance.warm_up(warmup, Deadline.after(timeout_s * len(warmup)))
        except WorkerCallError as exc:
            raise InstanceStartError(f"worker {instance.pid} failed during warm-up: {exc.details}") from exc
        for number, outcome in enumerate(outcomes, 1):
            if not outcome.ok:
                raise InstanceStartError(f"warm-up message {number} failed on worker {instance.pid}: {outcome.error}")


@dataclass(frozen=True)
class RolloutResult:
    from_version: int
    to_version: int
    switched_after_s: float  # from the call to the traffic switch
    drained_after_s: float  # from the call to the old workers being gone


class Rollout:
    """A graceful rollout of one agent to `version` (today's reload and
    rollback). `on_switched(version)` records the switch durably before the
    old workers drain, so a supervisor that dies mid-rollout comes back with
    whichever version was last switched to; `on_stable(version)` records
    that the version took all traffic after a completed switch."""

    def __init__(self, agent: Agent, version: VersionRecord, *, warmup: list[bytes], drain_timeout_s: float,
                 start_timeout_s: float, on_switched: Callable[[VersionRecord], None],
                 on_stable: Callable[[VersionRecord], None]):
        self.agent = agent
        self.version = version
        self.warmup = warmup
        self.drain_timeout_s = drain_timeout_s
        self.start_timeout_s = start_timeout_s
        self._on_switched = on_switched
        self._on_stable = on_stable
        self._started = time.monotonic()
        self._from_version = agent.version.version

    def run(self) -> RolloutResult:
        agent = self.agent
        with agent.operation():
            if agent.state is not AgentState.RUNNING:
                raise FailedPrecondition(
                    f"agent {agent.name!r} is {agent.state.value}; only a running agent can be reloaded")
            self._from_version = agent.version.version
            self._publish("reload-started", f"v{self._from_version} -> v{self.version.version}")
            fresh = self.launch()
            self.prove(fresh)
            old = self.switch(fresh)
            switched = time.monotonic() - self._started
            self.drain(old)
            drained = time.monotonic() - self._started
        self._publish("reload-drained", f"v{self._from_version} drained after {drained * 1000:.0f} ms")
        log.info("[%s] reloaded v%d -> v%d (switch %.0f ms, drained %.0f ms)", agent.name, self._from_version,
                 self.version.version, switched * 1000, drained * 1000)
        return RolloutResult(self._from_version, self.version.version, switched, drained)

    def _publish(self, kind: str, message: str) -> None:
        self.agent.publish(kind, message, self.version.version)

    def _failed(self, exc: Exception) -> FailedPrecondition:
        self._publish("reload-failed", str(exc))
        return FailedPrecondition(f"reload of {self.agent.name!r} to v{self.version.version} failed, "
                                  f"v{self._from_version} keeps serving: {exc}")

    def launch(self) -> list[WorkerInstance]:
        """Step 1: the new workers, beside the old ones."""
        try:
            return launch_many(self.agent.launch, self.version, self.agent.replicas)
        except (InstanceStartError, WorkerStartError) as exc:
            raise self._failed(exc) from exc

    def prove(self, fresh: list[WorkerInstance]) -> None:
        """Step 2: health check and warm-up; all or nothing."""
        try:
            prove_ready(fresh, self.warmup, self.start_timeout_s)
        except InstanceStartError as exc:
            discard(fresh)
            raise self._failed(exc) from exc
        self._publish("reload-ready", f"{len(fresh)} new worker(s) healthy")

    def switch(self, fresh: list[WorkerInstance]) -> list[WorkerInstance]:
        """Step 3: traffic to the new workers in one step; returns the old."""
        old = self.agent.switch_to(fresh, self.version)
        self._on_switched(self.version)
        switched = time.monotonic() - self._started
        self._publish("reload-switched", f"traffic on v{self.version.version} after {switched * 1000:.0f} ms")
        return old

    def drain(self, old: list[WorkerInstance]) -> None:
        """Step 4: the old workers finish what they hold and end."""
        drain(old, self.agent.mailbox, Deadline.after(self.drain_timeout_s), agent=self.agent.name)
        self._on_stable(self.version)
