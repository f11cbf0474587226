"""One named agent: its lifecycle state, its mailbox and the workers serving it.

Lifecycle operations (start, stop, a rollout) are serialised by the
operation lock and may take seconds; the state itself is guarded by the
state lock, held only briefly, so that status queries and worker-exit
callbacks never wait behind a slow start or drain. Restart supervision and
the circuit breaker live in recovery.py, rollouts in rollout.py, status
snapshots in status.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc

from .config import Config, Limits
from .deadline import Deadline
from .errors import FailedPrecondition, Unavailable, WorkerStartError
from .events import EventBus
from .instance import InstanceStartError, WorkerInstance
from .intake import Intake
from .launcher import ExitStatus
from .lifecycle import AgentState, Event, IllegalTransition, transition
from .recovery import Recovery
from .restart import RestartSettings
from .rollout import Launch, drain, launch_many
from .status import AgentView, FailureRecord
from .store import VersionRecord

if TYPE_CHECKING:
    from .candidate import Candidate
    from .replacement import Standby

log = logging.getLogger("caxton.agent")


def _forget(desired: str) -> None:
    """Default for agents whose desired state is not persisted."""


# Each change of any agent's version takes the next number here.
_version_changes = itertools.count(1)


class Agent:
    # The number of the latest change of any agent's version (0: none yet),
    # so that a figure summed over every agent's version (the quotas'
    # total, admission.py) can be kept rather than summed again per deploy.
    # Taken after the change is made: whoever reads it before summing sees
    # a different number afterwards if a change came meanwhile.
    version_changed = 0

    def __init__(self, name: str, policy: str, version: VersionRecord, config: Config, *, state: AgentState,
                 launch: Launch, restart: RestartSettings | None = None, replicas: int = 1,
                 events: EventBus | None = None, remember: Callable[[str], None] = _forget):
        self.name = name
        self.policy = policy
        self._version = version  # not a change: a new agent is counted as it joins the registry
        self.replicas = replicas
        self.launch = launch
        self._events = events or EventBus()
        # Persists the desired state ("running"/"stopped"); called under the
        # operation lock, so the last operation wins both in memory and on disk.
        self._remember = remember
        self.recovery = Recovery(self, restart or config.restart, start_timeout_s=config.worker_start_timeout_s)
        self.intake = Intake(self, config.queue_limit)
        self.mailbox = self.intake.mailbox
        self.instances: list[WorkerInstance] = []
        # A judged rollout's version on trial, beside the stable one
        # (candidate.py), and blue-green's old set kept warm (replacement.py).
        self.candidate: Candidate | None = None
        self.standby: Standby | None = None
        self.state = state
        self.state_lock = threading.Lock()
        self._op_lock = threading.Lock()
        self.last_error = ""
        self._running_since: float | None = None
        if state is not AgentState.RUNNING:
            self.intake.closed()

    @property
    def version(self) -> VersionRecord:
        """The version in service (set by a switch, a promotion, a rollback)."""
        return self._version

    @version.setter
    def version(self, version: VersionRecord) -> None:
        self._version = version
        Agent.version_changed = next(_version_changes)

    @property
    def limits(self) -> Limits:
        return self._version.limits

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """Hold the operation lock: no start, stop or rollout runs meanwhile."""
        with self._op_lock:
            yield

    def _set_state(self, event: Event) -> AgentState:
        """Apply a lifecycle event (caller holds _state_lock). An illegal one
        is the caller's mistake (stop a stopped agent, ...): FAILED_PRECONDITION."""
        try:
            self.state = transition(self.state, event)
        except IllegalTransition as exc:
            raise FailedPrecondition(f"agent {self.name!r}: {exc}") from exc
        if self.state is AgentState.RUNNING:
            self._running_since = time.monotonic()
            self.intake.opened()
        else:
            self._running_since = None
            self.intake.closed()
        return self.state

    def publish(self, kind: str, message: str = "", version: int | None = None) -> None:
        self._events.publish(self.name, kind, self.version.version if version is None else version, message)

    # ------------------------------------------------------------ lifecycle

    def start(self, *, remember: bool = True) -> None:
        """Load the current version into new workers (one per replica) and
        start serving.

        Also the operator's reset after a failure: the circuit breaker closes
        and the backoff starts again from its first step. On failure the agent
        is FAILED with the reason, and the error says why: FailedPrecondition
        when the agent itself refused to start (caxton_init), Unavailable when
        no worker could be started.
        """
        with self._op_lock:
            with self.state_lock:
                self._set_state(Event.LOAD)
                self.recovery.reset()
            if remember:
                self._remember("running")
            try:
                instances = launch_many(self.launch, self.version, self.replicas)
            except InstanceStartError as exc:
                self._fail(f"failed to start: {exc}")
                raise FailedPrecondition(f"agent {self.name!r} failed to start: {exc}") from exc
            except WorkerStartError as exc:
                self._fail(str(exc))
                raise Unavailable(f"agent {self.name!r} could not start a worker: {exc}") from exc
            except Exception as exc:
                # A defect, not the agent's doing: FAILED says so, where LOADED
                # would leave an agent that can neither start nor stop.
                self._fail(f"failed to start: internal error ({type(exc).__name__})")
                raise
            self._enter_running(instances)
            pids = ", ".join(str(i.pid) for i in instances)
            log.info("[%s v%d] running in worker(s) %s", self.name, self.version.version, pids)
            self.publish("started", f"running in worker(s) {pids}")

    def _enter_running(self, instances: list[WorkerInstance]) -> None:
        with self.state_lock:
            self.last_error = ""
            self._set_state(Event.START)
        self.switch_to(instances)

    def resume(self, instances: list[WorkerInstance]) -> None:
        """FAILED to RUNNING on proven workers (the breaker's probe passed;
        the caller holds the operation lock)."""
        with self.state_lock:
            self._set_state(Event.LOAD)
        self._enter_running(instances)

    def switch_to(self, instances: list[WorkerInstance], version: VersionRecord | None = None) -> list[WorkerInstance]:
        """Put started instances into service, all in one step under the
        state lock (with `version`, in place of the current ones, which are
        returned retired, and with that version becoming the one in service).
        They are listed before their exit callbacks are registered, so that a
        worker that has already died is handled as a failure (and restarted)
        rather than forgotten."""
        with self.state_lock:
            old: list[WorkerInstance] = []
            if version is not None:
                old, self.instances = self.instances, []
                for instance in old:
                    instance.retire(self.mailbox, drain=False)
                self.version = version
            self.instances.extend(instances)
            self.recovery.started()
        for instance in instances:
            instance.process.add_exit_callback(functools.partial(self.on_exit, instance))
            instance.serve(self.mailbox, self.intake.count)
        return old

    def _fail(self, reason: str) -> None:
        with self.state_lock:
            self.last_error = reason
            self._set_state(Event.FAIL)
        self.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, self.intake.refusal())
        log.error("[%s] %s", self.name, reason)
        self.publish("failed", reason)

    def on_exit(self, instance: WorkerInstance, status: ExitStatus) -> None:
        """A worker of this agent exited. Never blocks: it runs on the
        launcher's exit-callback thread, which serves every agent."""
        # Wake the instance's dispatcher if it is waiting for messages.
        self.mailbox.wake_all()
        candidate = standby = None
        with self.state_lock:
            if instance in self.instances:
                self.instances.remove(instance)
            elif self.candidate is not None and instance in self.candidate.instances:
                candidate = self.candidate
                candidate.instances.remove(instance)
            elif self.standby is not None and instance in self.standby.instances:
                standby = self.standby
                standby.instances.remove(instance)
            else:
                return  # retired on purpose; its retirement cleans up
        reason = f"worker {instance.pid} {instance.describe_exit(status)}"
        if candidate is not None or standby is not None:
            # Not in service: the rollout that owns it decides what follows.
            log.warning("[%s v%d] %s", self.name, instance.version, reason)
            instance.close()
            if candidate is not None:
                candidate.worker_failed(reason)
            return
        log.error("[%s v%d] %s", self.name, instance.version, reason)
        self.publish("worker-exited", reason, instance.version)
        instance.close()
        self.recovery.worker_failed(reason)

    def fail_locked(self, reason: str) -> list[WorkerInstance]:
        """FAILED with `reason` (caller holds the state lock); returns the
        workers still in service, for the caller to end."""
        self.last_error = reason
        survivors, self.instances = self.instances, []
        self._set_state(Event.FAIL)
        return survivors

    def stop(self, timeout: float, *, remember: bool = True) -> None:
        """Drain: refuse new messages, let accepted ones finish within
        `timeout`, run caxton_shutdown, end the worker. STOPPED afterwards.
        `remember=False` (supervisor shutdown) keeps the desired state."""
        with self._op_lock:
            with self.state_lock:
                if self.state is AgentState.FAILED:
                    # Nothing to drain: this only calls off the breaker's probes.
                    self.recovery.cancel()
                    self._set_state(Event.STOPPED)
                    instances = None
                else:
                    self._set_state(Event.DRAIN)
                    self.recovery.cancel()
                    instances = list(self.instances)
            if instances is None:
                if remember:
                    self._remember("stopped")
                self.publish("stopped", "was failed; retries called off")
                return
            if remember:
                self._remember("stopped")
            for instance in instances:
                instance.retire(self.mailbox, drain=True)
            with self.state_lock:
                self.instances = [i for i in self.instances if i not in instances]
            drain(instances, self.mailbox, Deadline.after(timeout), agent=self.name)
            leftover = self.mailbox.fail_all(
                grpc.StatusCode.UNAVAILABLE, f"agent {self.name!r} was stopped before this message was handled"
            )
            if leftover:
                log.warning("[%s] %d queued messages were not handled before the stop timeout", self.name, leftover)
            with self.state_lock:
                self._set_state(Event.STOPPED)
            log.info("[%s] stopped", self.name)
            self.publish("stopped")

    def kill(self) -> None:
        """Kill every worker at once (supervisor exit after its drain timeout)."""
        with self.state_lock:
            self.recovery.cancel()
            instances, self.instances = list(self.instances), []
        for instance in instances:
            instance.kill()

    def unload(self) -> None:
        with self.state_lock:
            self._set_state(Event.UNLOAD)
            self.recovery.cancel()

    # ------------------------------------------------------------ status

    def view(self) -> AgentView:
        """What the agent knows of itself, in one consistent read."""
        now, wall = time.monotonic(), time.time()
        messages, errors = self.intake.tally()
        with self.state_lock:
            return AgentView(
                name=self.name, state=self.state, version=self.version, policy=self.policy,
                replicas=self.replicas, restart=self.recovery.settings,
                uptime_s=(now - self._running_since) if self._running_since is not None else 0.0,
                messages=messages, errors=errors, restarts=self.recovery.restarts,
                last_error=self.last_error, next_restart_in_s=self.recovery.next_attempt_in(),
                breaker=self.recovery.breaker(),
                recent_failures=tuple(FailureRecord(wall - (now - at), reason)
                                      for at, reason in self.recovery.recent_failures()),
                instances=tuple(self.instances) + (tuple(self.candidate.instances) if self.candidate else ()),
            )
