"""Restart supervision of one agent: what happens after one of its workers fails.

The decisions are the pure `RestartPolicy` (restart.py); this module owns
the clock and the timers around it and carries the decisions out on the
agent: restart the missing replicas after the backoff; when the breaker
opens, fail the agent and, after the cool-down, start one probe worker
(caxton_init and a health check, no user traffic) that either brings the
agent back with all its replicas or reopens the breaker for twice as long.
Timers run on their own threads and take the agent's operation lock, so a
restart or probe never races a start, stop or rollout; nothing here runs
on the launcher's threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from .errors import WorkerStartError
from .instance import InstanceStartError, WorkerInstance
from .lifecycle import AgentState
from .restart import BreakerState, Decision, RestartPolicy, RestartSettings
from .rollout import abandon, discard, launch_many, prove_ready

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("caxton.recovery")


@dataclass(frozen=True)
class BreakerView:
    state: BreakerState
    opened_at: float | None  # Unix seconds of the latest opening
    reason: str
    next_attempt_in_s: float  # until the probe, while open


class Recovery:
    def __init__(self, agent: Agent, settings: RestartSettings, *, start_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._agent = agent
        self._policy = RestartPolicy(settings)
        self._start_timeout_s = start_timeout_s
        self._clock = clock
        self._timer: threading.Timer | None = None
        self._due: float | None = None  # clock time of the pending restart or probe
        self.restarts = 0

    # The agent's state lock is held around every method below that reads or
    # changes the policy, except the timer callbacks, which take it themselves.

    def next_attempt_in(self) -> float:
        """Seconds until the pending restart or probe (0 when none is pending)."""
        return max(0.0, self._due - self._clock()) if self._due is not None else 0.0

    def breaker(self) -> BreakerView:
        policy = self._policy
        opened_at = None
        if policy.opened_at is not None:
            opened_at = time.time() - (self._clock() - policy.opened_at)
        pending = self.next_attempt_in() if policy.breaker is BreakerState.OPEN else 0.0
        return BreakerView(policy.breaker, opened_at, policy.open_reason, pending)

    def recent_failures(self) -> list[tuple[float, str]]:
        """(clock time, reason) of the failures the breaker still counts."""
        return self._policy.recent_failures

    def started(self) -> None:
        """Workers came up healthy: the start of a healthy run."""
        self._policy.on_start(self._clock())

    def cancel(self) -> None:
        """Drop the pending restart or probe, if any (stop, remove, start)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due = None

    def reset(self) -> None:
        """Operator reset: cancel, close the breaker, backoff from step one."""
        self.cancel()
        self._policy.reset()

    def _schedule(self, delay_s: float, action: Callable[[], None]) -> None:
        self._due = self._clock() + delay_s
        self._timer = threading.Timer(delay_s, action)
        self._timer.daemon = True
        self._timer.start()

    def _taken(self) -> None:
        """A timer fired: its attempt is being taken (caller holds the lock)."""
        self._timer = None
        self._due = None

    # ------------------------------------------------------------ failures

    def worker_failed(self, reason: str) -> None:
        """A worker died, hung, or could not be restarted: ask the policy.
        Messages still queued wait for the restarted worker; when the breaker
        opens they are answered UNAVAILABLE with the reason. Never blocks."""
        agent = self._agent
        survivors: list[WorkerInstance] = []
        with agent.state_lock:
            if agent.state is not AgentState.RUNNING or len(agent.instances) >= agent.replicas:
                return  # draining or stopped on purpose, or already replaced
            if self._timer is not None:
                return  # a restart is already on its way; it tops up all replicas
            verdict = self._policy.on_failure(self._clock(), reason)
            if verdict.decision is Decision.RESTART:
                agent.last_error = reason
                self.restarts += 1
                self._schedule(verdict.delay_s, self._restart)
            else:
                survivors = agent.fail_locked(f"{verdict.reason}; last failure: {reason}")
                if verdict.decision is Decision.OPEN:
                    self._schedule(verdict.delay_s, self._probe)
        if verdict.decision is Decision.RESTART:
            log.warning("[%s] %s", agent.name, verdict.reason)
            agent.publish("restarting", verdict.reason)
            return
        log.error("[%s] circuit breaker open: %s", agent.name, agent.last_error)
        abandon(survivors)
        agent.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, agent.intake.refusal())
        agent.publish("failed", agent.last_error)
        agent.publish("breaker-open", verdict.reason)

    def _restart(self) -> None:
        """Timer: start replacement workers for the same version, limits and
        name, up to the desired replica count."""
        agent = self._agent
        failure = None
        with agent.operation():
            with agent.state_lock:
                self._taken()
                missing = agent.replicas - len(agent.instances)
                if agent.state is not AgentState.RUNNING or missing <= 0:
                    return  # stopped, removed or restarted meanwhile
            try:
                instances = launch_many(agent.launch, agent.version, missing)
            except (InstanceStartError, WorkerStartError) as exc:
                failure = f"restart failed: {exc}"
            else:
                agent.switch_to(instances)
                pids = ", ".join(str(i.pid) for i in instances)
                log.info("[%s v%d] restarted in worker(s) %s", agent.name, agent.version.version, pids)
                agent.publish("restarted", f"restarted in worker(s) {pids}")
        if failure is not None:
            self.worker_failed(failure)

    # ------------------------------------------------------------ the probe

    def _probe(self) -> None:
        """Timer, after the cool-down: half-open the breaker and try one
        worker; if it starts and answers, start the other replicas beside it
        and run again; if not, open the breaker for longer."""
        agent = self._agent
        with agent.operation():
            with agent.state_lock:
                self._taken()
                if agent.state is not AgentState.FAILED or self._policy.breaker is not BreakerState.OPEN:
                    return  # started, stopped or removed meanwhile
                self._policy.half_open()
            agent.publish("breaker-half-open", "starting one probe worker")
            log.info("[%s] circuit breaker half-open: probing", agent.name)
            started: list[WorkerInstance] = []
            try:
                started += launch_many(agent.launch, agent.version, 1)
                prove_ready(started, [], self._start_timeout_s)
                if agent.replicas > 1:
                    started += launch_many(agent.launch, agent.version, agent.replicas - 1)
            except (InstanceStartError, WorkerStartError) as exc:
                discard(started)
                self._probe_failed(str(exc))
                return
            with agent.state_lock:
                self._policy.probe_passed(self._clock())
            agent.resume(started)
        log.info("[%s] circuit breaker closed: the probe passed", agent.name)
        agent.publish("breaker-closed", f"probe passed; running in {len(started)} worker(s)")

    def _probe_failed(self, reason: str) -> None:
        agent = self._agent
        with agent.state_lock:
            verdict = self._policy.probe_failed(self._clock(), reason)
            agent.last_error = verdict.reason
            if verdict.decision is Decision.OPEN:
                self._schedule(verdict.delay_s, self._probe)
        log.error("[%s] circuit breaker open again: %s", agent.name, verdict.reason)
        agent.publish("breaker-open", verdict.reason)
