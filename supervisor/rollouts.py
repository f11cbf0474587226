"""Every agent's rollout: the one in flight, its thread, and the latest record.

One rollout per agent at a time. A judged rollout, and any rollout with a
bake time or a warm old set, goes on in a thread of its own after the call
that began it has answered; operators steer it through `control` (promote,
abort, pause, resume). Stopping or removing the agent, or shutting the
supervisor down, ends it first (`cancel`). At start, a record the store
still shows in flight belongs to a supervisor that died mid-rollout: the
agent was restored on its stable version, so the record is closed as
aborted (or, if the new version had already been promoted, as promoted with
its bake cut short), with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .errors import FailedPrecondition
from .events import EventBus
from .rollout_status import RolloutRecord, RolloutState
from .steering import ACTIONS, Steering
from .store import StateStore

log = logging.getLogger("caxton.rollout")

# How long stopping an agent waits for its rollout to wind down.
CANCEL_WAIT_S = 30.0


class Rollouts:
    def __init__(self, store: StateStore, events: EventBus,
                 rolled_back: Callable[[str, str], None] = lambda agent, reason: None) -> None:
        self._store = store
        self._events = events
        self._rolled_back = rolled_back
        self._lock = threading.Lock()
        self._active: dict[str, Steering] = {}
        self._latest: dict[str, RolloutRecord] = {}

    def restore(self) -> None:
        """Close the records of rollouts a previous supervisor left in flight."""
        for name, record in self._store.rollouts().items():
            if not record.state.ended:
                record = self._interrupted(record)
            self._latest[name] = record

    def _interrupted(self, record: RolloutRecord) -> RolloutRecord:
        if record.state is RolloutState.BAKING:
            record = replace(record, state=RolloutState.PROMOTED, ended_at=time.time(),
                             reason=f"promoted; the supervisor restarted during the bake, "
                                    f"v{record.candidate_version} serves")
            self._store.save_rollout(record)
            return record
        reason = (f"supervisor-restart: the supervisor restarted mid-rollout; v{record.stable_version} serves, "
                  f"v{record.candidate_version} was not promoted")
        record = replace(record, state=RolloutState.ABORTED, reason=reason, share=0.0, ended_at=time.time())
        self._store.save_rollout(record)
        self._events.publish(record.agent, "rollout-aborted", record.candidate_version, reason)
        self._rolled_back(record.agent, "supervisor-restart")
        log.warning("[%s] %s", record.agent, reason)
        return record

    def in_flight(self, name: str) -> bool:
        with self._lock:
            return name in self._active

    def baseline(self, name: str) -> dict[int, int] | None:
        """Each version's messages when the agent's rollout in flight began."""
        with self._lock:
            steering = self._active.get(name)
        return dict(steering.baseline) if steering is not None else None

    def record(self, name: str) -> RolloutRecord | None:
        """The agent's rollout in flight, else its latest."""
        with self._lock:
            steering = self._active.get(name)
            return steering.record if steering is not None else self._latest.get(name)

    def begin(self, record: RolloutRecord, publish: Callable[[str, int, str], None]) -> Steering:
        """Register a new rollout; FailedPrecondition if one is in flight."""
        with self._lock:
            if record.agent in self._active:
                active = self._active[record.agent].record
                raise FailedPrecondition(
                    f"agent {record.agent!r} has a {active.strategy} rollout to v{active.candidate_version} in "
                    f"progress ({active.state.value}); promote or abort it first")
            steering = Steering(record, save=self._store.save_rollout, publish=publish)
            self._active[record.agent] = steering
        return steering

    def check_idle(self, name: str) -> None:
        """FailedPrecondition if the agent has a rollout in flight. One that
        has ended but still winds down (draining the old workers, keeping
        blue-green's old set warm) is finished first: a new rollout
        supersedes it."""
        with self._lock:
            steering = self._active.get(name)
        if steering is not None and steering.record.state.ended:
            self.cancel(name, "shutdown")
            with self._lock:
                steering = self._active.get(name)
        if steering is not None:
            active = steering.record
            raise FailedPrecondition(
                f"agent {name!r} has a {active.strategy} rollout to v{active.candidate_version} in progress "
                f"({active.state.value}); promote or abort it first")

    def in_background(self, name: str, steering: Steering, drive: Callable[[], None]) -> None:
        """Drive the rollout on in its own thread; it leaves the registry when done."""
        def run() -> None:
            try:
                drive()
            except Exception:
                log.exception("[%s] the rollout's thread failed", name)
            finally:
                self.finish(name, steering)

        threading.Thread(target=run, name=f"rollout-{name}", daemon=True).start()

    def finish(self, name: str, steering: Steering) -> None:
        steering.done.set()
        with self._lock:
            if self._active.get(name) is steering:
                del self._active[name]
            self._latest[name] = steering.record

    def control(self, name: str, action: str) -> RolloutRecord:
        """An operator's command to the agent's rollout in flight."""
        if action not in ACTIONS:
            raise FailedPrecondition(f"unknown rollout action {action!r}: use one of {', '.join(ACTIONS)}")
        with self._lock:
            steering = self._active.get(name)
        if steering is None:
            latest = self._latest.get(name)
            ended = f" (its latest ended {latest.state.value})" if latest is not None else ""
            raise FailedPrecondition(f"agent {name!r} has no rollout in progress{ended}")
        steering.command(action)
        # Answer once the command has taken effect (bounded: a revert may
        # start workers).
        _wait_for(steering, action)
        return steering.record

    def cancel(self, name: str, why: str) -> None:
        """End the agent's rollout in flight (before a stop, a remove or a
        supervisor shutdown) and wait for it, within CANCEL_WAIT_S."""
        with self._lock:
            steering = self._active.get(name)
        if steering is None:
            return
        try:
            steering.command("shutdown" if why == "shutdown" else "abort")
        except FailedPrecondition:
            return  # ended meanwhile
        if not steering.done.wait(CANCEL_WAIT_S):
            log.error("[%s] the rollout did not wind down within %.0f s", name, CANCEL_WAIT_S)

    def cancel_all(self) -> None:
        with self._lock:
            names = list(self._active)
        for name in names:
            self.cancel(name, "shutdown")

    def forget(self, name: str) -> None:
        with self._lock:
            self._latest.pop(name, None)


# The state each command leads to, once the rollout's thread has acted on it.
_TAKEN = {"promote": (RolloutState.BAKING, RolloutState.PROMOTED), "pause": (RolloutState.PAUSED,),
          "resume": (RolloutState.PROGRESSING,)}


def _wait_for(steering: Steering, action: str) -> None:
    """Until the command has taken effect: an abort once the rollout's
    thread is done (the stable version serves), the others once the record
    shows their state."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    wanted = _TAKEN.get(action, ())
    while time.monotonic() < deadline:
        if steering.record.state in wanted:
            return
        if steering.done.wait(0.02):
            return
