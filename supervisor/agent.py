"""One named agent: its lifecycle state, mailbox and worker instances.

Lifecycle operations (start, stop) are serialised by `_op_lock` and may take
seconds; the state itself is guarded by `_state_lock`, held only briefly, so
that status queries and the launcher's exit callbacks never wait behind a
slow start or drain.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import grpc

from caxton.v1 import caxton_pb2

from .config import Config, Limits
from .errors import FailedPrecondition, Unavailable, WorkerStartError
from .instance import InstanceStartError, WorkerEnv, WorkerInstance, launch_instance
from .launcher import ExitStatus
from .lifecycle import AgentState, Event, IllegalTransition, transition
from .mailbox import Mailbox, Pending
from .restart import Decision, RestartPolicy, RestartSettings
from .store import VersionRecord

log = logging.getLogger("caxton.agent")

_PROTO_STATE = {
    AgentState.UNLOADED: caxton_pb2.AGENT_STATE_UNLOADED,
    AgentState.LOADED: caxton_pb2.AGENT_STATE_LOADED,
    AgentState.RUNNING: caxton_pb2.AGENT_STATE_RUNNING,
    AgentState.DRAINING: caxton_pb2.AGENT_STATE_DRAINING,
    AgentState.STOPPED: caxton_pb2.AGENT_STATE_STOPPED,
    AgentState.FAILED: caxton_pb2.AGENT_STATE_FAILED,
}


class Agent:
    def __init__(self, name: str, policy: str, version: VersionRecord, config: Config, *, state: AgentState,
                 restart: RestartSettings | None = None):
        self.name = name
        self.policy = policy
        self.version = version
        self._config = config
        self.restart_settings = restart or config.restart
        self._restart_policy = RestartPolicy(self.restart_settings)
        self._restart_timer: threading.Timer | None = None
        self._restart_due: float | None = None  # monotonic time of the next attempt
        self._env: WorkerEnv | None = None
        self.mailbox = Mailbox(config.queue_limit)
        self.instances: list[WorkerInstance] = []
        self.state = state
        self._state_lock = threading.Lock()
        self._op_lock = threading.Lock()
        self.messages = 0
        self.errors = 0
        self.restarts = 0
        self.last_error = ""
        self._running_since: float | None = None
        if state is not AgentState.RUNNING:
            self.mailbox.close(self._refusal())

    @property
    def limits(self) -> Limits:
        return self.version.limits

    def _set_state(self, event: Event) -> AgentState:
        """Apply a lifecycle event (caller holds _state_lock). An illegal one
        is the caller's mistake (stop a stopped agent, ...): FAILED_PRECONDITION."""
        try:
            self.state = transition(self.state, event)
        except IllegalTransition as exc:
            raise FailedPrecondition(f"agent {self.name!r}: {exc}") from exc
        if self.state is AgentState.RUNNING:
            self._running_since = time.monotonic()
            self.mailbox.reopen()
        else:
            self._running_since = None
            self.mailbox.close(self._refusal())
        return self.state

    def _refusal(self) -> str:
        """Why a message is refused in the current state."""
        if self.state is AgentState.FAILED:
            return f"agent {self.name!r} has failed: {self.last_error}"
        if self.state is AgentState.DRAINING:
            return f"agent {self.name!r} is draining and takes no new messages"
        if self.state is AgentState.STOPPED:
            return f"agent {self.name!r} is stopped"
        return f"agent {self.name!r} is {self.state.value}"

    # ------------------------------------------------------------ messages

    def submit(self, pending: Pending) -> None:
        """Queue a message; raises if the agent cannot take it now."""
        state = self.state
        if state is AgentState.STOPPED:
            raise FailedPrecondition(f"agent {self.name!r} is stopped; start it with StartAgent")
        if state is not AgentState.RUNNING and state is not AgentState.DRAINING:
            raise Unavailable(self._refusal())
        self.mailbox.put(pending)

    def _count(self, ok: bool) -> None:
        if ok:
            self.messages += 1
        else:
            self.messages += 1
            self.errors += 1

    # ------------------------------------------------------------ lifecycle

    def start(self, env: WorkerEnv) -> None:
        """Load the current version into a new worker and start serving.

        Also the operator's reset after a failure: the circuit breaker closes
        and the backoff starts again from its first step. On failure the agent
        is FAILED with the reason, and the error says why: FailedPrecondition
        when the agent itself refused to start (caxton_init), Unavailable when
        no worker could be started.
        """
        with self._op_lock:
            with self._state_lock:
                self._set_state(Event.LOAD)
                self._cancel_restart()
                self._restart_policy.reset()
            self._env = env
            try:
                instance = launch_instance(env, self.version)
            except InstanceStartError as exc:
                self._fail(f"failed to start: {exc}")
                raise FailedPrecondition(f"agent {self.name!r} failed to start: {exc}") from exc
            except WorkerStartError as exc:
                self._fail(str(exc))
                raise Unavailable(f"agent {self.name!r} could not start a worker: {exc}") from exc
            with self._state_lock:
                self.last_error = ""
                self._set_state(Event.START)
            self._attach(instance)
            log.info("[%s v%d] running in worker %d", self.name, self.version.version, instance.pid)

    def _attach(self, instance: WorkerInstance) -> None:
        """Put a started instance into service. It is listed before its exit
        callback is registered, so that a worker that has already died is
        handled as a failure (and restarted) rather than forgotten."""
        with self._state_lock:
            self.instances.append(instance)
            self._restart_policy.on_start(time.monotonic())
        instance.process.add_exit_callback(lambda status: self._on_exit(instance, status))
        instance.serve(self.mailbox, self._count)

    def _fail(self, reason: str) -> None:
        with self._state_lock:
            self.last_error = reason
            self._set_state(Event.FAIL)
        self.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, self._refusal())
        log.error("[%s] %s", self.name, reason)

    def _on_exit(self, instance: WorkerInstance, status: ExitStatus) -> None:
        """Launcher callback: a worker of this agent exited."""
        # Wake the instance's dispatcher if it is waiting for messages.
        self.mailbox.wake_all()
        with self._state_lock:
            if instance not in self.instances:
                return  # retired on purpose; its retirement cleans up
            self.instances.remove(instance)
        reason = f"worker {instance.pid} {instance.describe_exit(status)}"
        log.error("[%s v%d] %s", self.name, instance.version, reason)
        instance.close()
        self._worker_failed(reason)

    def _worker_failed(self, reason: str) -> None:
        """A worker died, hung, or could not be restarted: ask the restart
        policy. Messages still queued wait for the restarted worker; when the
        policy gives up they are answered UNAVAILABLE with the reason."""
        now = time.monotonic()
        with self._state_lock:
            if self.state is not AgentState.RUNNING or self.instances:
                return  # draining or stopped on purpose, or replicas remain
            verdict = self._restart_policy.on_failure(now, reason)
            if verdict.decision is Decision.GIVE_UP:
                self.last_error = f"{verdict.reason}; last failure: {reason}"
                self._set_state(Event.FAIL)
            else:
                self.last_error = reason
                self.restarts += 1
                self._restart_due = now + verdict.delay_s
                self._restart_timer = threading.Timer(verdict.delay_s, self._restart)
                self._restart_timer.daemon = True
                self._restart_timer.start()
        if verdict.decision is Decision.GIVE_UP:
            log.error("[%s] giving up: %s", self.name, self.last_error)
            self.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, self._refusal())
        else:
            log.warning("[%s] %s", self.name, verdict.reason)

    def _restart(self) -> None:
        """Timer callback: start a replacement worker for the same version,
        limits and name."""
        failure = None
        with self._op_lock:
            with self._state_lock:
                self._restart_due = None
                self._restart_timer = None
                if self.state is not AgentState.RUNNING or self.instances or self._env is None:
                    return  # stopped, removed or restarted meanwhile
            try:
                instance = launch_instance(self._env, self.version)
            except (InstanceStartError, WorkerStartError) as exc:
                failure = f"restart failed: {exc}"
            else:
                self._attach(instance)
                log.info("[%s v%d] restarted in worker %d", self.name, self.version.version, instance.pid)
        if failure is not None:
            self._worker_failed(failure)

    def _cancel_restart(self) -> None:
        """Caller holds _state_lock."""
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        self._restart_timer = None
        self._restart_due = None

    def stop(self, timeout: float) -> None:
        """Drain: refuse new messages, let accepted ones finish within
        `timeout`, run caxton_shutdown, end the worker. STOPPED afterwards."""
        with self._op_lock:
            with self._state_lock:
                self._set_state(Event.DRAIN)
                self._cancel_restart()
                instances = list(self.instances)
            deadline = time.monotonic() + timeout
            for instance in instances:
                instance.retire(self.mailbox, drain=True)
            for instance in instances:
                if not instance.wait_idle(deadline):
                    log.warning("[%s] drain timed out after %.1fs", self.name, timeout)
                    instance.retire(self.mailbox, drain=False)
            leftover = self.mailbox.fail_all(
                grpc.StatusCode.UNAVAILABLE, f"agent {self.name!r} was stopped before this message was handled"
            )
            if leftover:
                log.warning("[%s] %d queued messages were not handled before the stop timeout", self.name, leftover)
            with self._state_lock:
                self.instances = [i for i in self.instances if i not in instances]
            for instance in instances:
                instance.shutdown(timeout=max(1.0, deadline - time.monotonic()))
            with self._state_lock:
                self._set_state(Event.STOPPED)
            log.info("[%s] stopped", self.name)

    def kill(self) -> None:
        """Kill every worker at once (supervisor exit after its drain timeout)."""
        with self._state_lock:
            instances, self.instances = list(self.instances), []
        for instance in instances:
            instance.kill()

    def unload(self) -> None:
        with self._state_lock:
            self._set_state(Event.UNLOAD)

    # ------------------------------------------------------------ status

    def status(self) -> caxton_pb2.AgentStatus:
        with self._state_lock:
            instances = list(self.instances)
            state = self.state
            running_since = self._running_since
            restart_due = self._restart_due
            failures = self._restart_policy.recent_failures
        now = time.monotonic()
        wall = time.time()
        status = caxton_pb2.AgentStatus(
            name=self.name,
            state=_PROTO_STATE[state],
            version=self.version.version,
            label=self.version.label,
            module_sha256=self.version.module_sha256,
            uptime_s=(now - running_since) if running_since is not None else 0.0,
            messages=self.messages,
            errors=self.errors,
            restarts=self.restarts,
            limits=self.limits.to_proto(),
            restart=restart_to_proto(self.restart_settings),
            next_restart_in_s=max(0.0, restart_due - now) if restart_due is not None else 0.0,
            last_error=self.last_error,
            deployed_at=self.version.deployed_at,
            policy=self.policy,
        )
        for at, reason in failures:
            status.recent_failures.add(at=wall - (now - at), reason=reason)
        for instance in instances:
            stats = instance.stats()
            entry = status.instances.add(
                pid=instance.pid,
                version=instance.version,
                uptime_s=now - instance.started_at,
                rss_bytes=_rss(instance.pid),
                enforcement=instance.enforcement,
            )
            if stats is not None:
                entry.memory_bytes = stats.memory_bytes
                entry.messages = stats.messages
                entry.errors = stats.errors
                entry.resets = stats.resets
                status.memory_bytes += stats.memory_bytes
        return status


def restart_to_proto(settings: RestartSettings) -> caxton_pb2.RestartPolicy:
    return caxton_pb2.RestartPolicy(
        initial_delay_ms=round(settings.initial_delay_s * 1000),
        factor=settings.factor,
        max_delay_ms=round(settings.max_delay_s * 1000),
        reset_after_s=round(settings.reset_after_s),
        max_failures=settings.max_failures,
        window_s=round(settings.window_s),
    )


def restart_from_proto(base: RestartSettings, request: caxton_pb2.RestartPolicy) -> RestartSettings:
    """`base` with every non-zero field of the request taking over."""
    return dataclasses.replace(
        base,
        initial_delay_s=request.initial_delay_ms / 1000 if request.initial_delay_ms else base.initial_delay_s,
        factor=request.factor or base.factor,
        max_delay_s=request.max_delay_ms / 1000 if request.max_delay_ms else base.max_delay_s,
        reset_after_s=float(request.reset_after_s or base.reset_after_s),
        max_failures=request.max_failures or base.max_failures,
        window_s=float(request.window_s or base.window_s),
    )


def _rss(pid: int) -> int:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
