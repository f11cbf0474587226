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
from typing import Callable

import grpc

from caxton.v1 import caxton_pb2

from .config import Config, Limits
from .errors import FailedPrecondition, Unavailable, WorkerStartError
from .instance import InstanceStartError, WorkerEnv, WorkerInstance
from .launcher import ExitStatus
from .lifecycle import AgentState, Event, IllegalTransition, transition
from .mailbox import Mailbox, Pending
from . import rollout
from .events import EventBus
from .restart import Decision, RestartPolicy, RestartSettings
from .rollout import launch_many
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
                 restart: RestartSettings | None = None, replicas: int = 1, events: EventBus | None = None):
        self.name = name
        self.policy = policy
        self.version = version
        self.replicas = replicas
        self._config = config
        self._events = events or EventBus()
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
        self.messages += 1
        if not ok:
            self.errors += 1

    # ------------------------------------------------------------ lifecycle

    def start(self, env: WorkerEnv) -> None:
        """Load the current version into new workers (one per replica) and
        start serving.

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
                instances = launch_many(env, self.version, self.replicas)
            except InstanceStartError as exc:
                self._fail(f"failed to start: {exc}")
                raise FailedPrecondition(f"agent {self.name!r} failed to start: {exc}") from exc
            except WorkerStartError as exc:
                self._fail(str(exc))
                raise Unavailable(f"agent {self.name!r} could not start a worker: {exc}") from exc
            with self._state_lock:
                self.last_error = ""
                self._set_state(Event.START)
            self._attach(instances)
            pids = ", ".join(str(i.pid) for i in instances)
            log.info("[%s v%d] running in worker(s) %s", self.name, self.version.version, pids)
            self._publish("started", f"running in worker(s) {pids}")

    def _publish(self, kind: str, message: str = "", version: int | None = None) -> None:
        self._events.publish(self.name, kind, self.version.version if version is None else version, message)

    def _attach(self, instances: list[WorkerInstance], *, replacing: VersionRecord | None = None) -> list[WorkerInstance]:
        """Put started instances into service, all in one step under the
        state lock (with `replacing`, in place of the current ones, which are
        returned retired, and with that version becoming the one in service). They are listed before their exit callbacks are
        registered, so that a worker that has already died is handled as a
        failure (and restarted) rather than forgotten."""
        with self._state_lock:
            old: list[WorkerInstance] = []
            if replacing is not None:
                old, self.instances = self.instances, []
                for instance in old:
                    instance.retire(self.mailbox, drain=False)
                self.version = replacing
            self.instances.extend(instances)
            self._restart_policy.on_start(time.monotonic())
        for instance in instances:
            instance.process.add_exit_callback(lambda status, i=instance: self._on_exit(i, status))
            instance.serve(self.mailbox, self._count)
        return old

    def _fail(self, reason: str) -> None:
        with self._state_lock:
            self.last_error = reason
            self._set_state(Event.FAIL)
        self.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, self._refusal())
        log.error("[%s] %s", self.name, reason)
        self._publish("failed", reason)

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
        self._publish("worker-exited", reason, instance.version)
        instance.close()
        self._worker_failed(reason)

    def _worker_failed(self, reason: str) -> None:
        """A worker died, hung, or could not be restarted: ask the restart
        policy. Messages still queued wait for the restarted worker; when the
        policy gives up they are answered UNAVAILABLE with the reason."""
        now = time.monotonic()
        with self._state_lock:
            if self.state is not AgentState.RUNNING or len(self.instances) >= self.replicas:
                return  # draining or stopped on purpose, or already replaced
            if self._restart_timer is not None:
                return  # a restart is already on its way; it tops up all replicas
            verdict = self._restart_policy.on_failure(now, reason)
            survivors: list[WorkerInstance] = []
            if verdict.decision is Decision.GIVE_UP:
                self.last_error = f"{verdict.reason}; last failure: {reason}"
                survivors, self.instances = self.instances, []
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
            rollout.discard(survivors)
            self.mailbox.fail_all(grpc.StatusCode.UNAVAILABLE, self._refusal())
            self._publish("failed", self.last_error)
        else:
            log.warning("[%s] %s", self.name, verdict.reason)
            self._publish("restarting", verdict.reason)

    def _restart(self) -> None:
        """Timer callback: start replacement workers for the same version,
        limits and name, up to the desired replica count."""
        failure = None
        with self._op_lock:
            with self._state_lock:
                self._restart_due = None
                self._restart_timer = None
                missing = self.replicas - len(self.instances)
                if self.state is not AgentState.RUNNING or missing <= 0 or self._env is None:
                    return  # stopped, removed or restarted meanwhile
            try:
                instances = launch_many(self._env, self.version, missing)
            except (InstanceStartError, WorkerStartError) as exc:
                failure = f"restart failed: {exc}"
            else:
                self._attach(instances)
                pids = ", ".join(str(i.pid) for i in instances)
                log.info("[%s v%d] restarted in worker(s) %s", self.name, self.version.version, pids)
                self._publish("restarted", f"restarted in worker(s) {pids}")
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
            self._publish("stopped")

    def reload(self, env: WorkerEnv, version: VersionRecord, warmup: list[bytes], drain_timeout: float,
               commit: Callable[[VersionRecord], None]) -> tuple[float, float]:
        """Switch to `version` without downtime; returns the seconds from the
        call to the traffic switch and to the old workers being gone.

        New workers start beside the old ones and must load, init, answer a
        health check and the warm-up messages. Then, under the state lock,
        the old workers stop taking batches and the new ones start: messages
        queued from that moment go to the new version, and a batch already
        inside an old worker finishes there. `commit(version)` records the
        switch durably before the old workers drain, so a supervisor that dies
        mid-reload comes back with whichever version was last switched to.
        If anything fails before the switch, the new workers are discarded
        and the old version keeps serving untouched.
        """
        started = time.monotonic()
        with self._op_lock:
            if self.state is not AgentState.RUNNING:
                raise FailedPrecondition(f"agent {self.name!r} is {self.state.value}; only a running agent can be reloaded")
            old_version = self.version.version
            self._publish("reload-started", f"v{old_version} -> v{version.version}", version.version)
            try:
                fresh = launch_many(env, version, self.replicas)
            except (InstanceStartError, WorkerStartError) as exc:
                self._publish("reload-failed", str(exc), version.version)
                raise FailedPrecondition(f"reload of {self.name!r} to v{version.version} failed, "
                                         f"v{old_version} keeps serving: {exc}") from exc
            try:
                rollout.prove_ready(fresh, warmup, self._config.worker_start_timeout_s)
            except InstanceStartError as exc:
                rollout.discard(fresh)
                self._publish("reload-failed", str(exc), version.version)
                raise FailedPrecondition(f"reload of {self.name!r} to v{version.version} failed, "
                                         f"v{old_version} keeps serving: {exc}") from exc
            self._publish("reload-ready", f"{len(fresh)} new worker(s) healthy", version.version)
            self._env = env
            old = self._attach(fresh, replacing=version)
            commit(version)
            switched = time.monotonic() - started
            self._publish("reload-switched", f"traffic on v{version.version} after {switched * 1000:.0f} ms",
                          version.version)
            deadline = time.monotonic() + drain_timeout
            for instance in old:
                if not instance.wait_idle(deadline):
                    log.warning("[%s] old worker %d did not finish within the drain timeout", self.name, instance.pid)
            for instance in old:
                instance.shutdown(timeout=max(1.0, deadline - time.monotonic()))
            drained = time.monotonic() - started
            self._publish("reload-drained", f"v{old_version} drained after {drained * 1000:.0f} ms", version.version)
            log.info("[%s] reloaded v%d -> v%d (switch %.0f ms, drained %.0f ms)", self.name, old_version,
                     version.version, switched * 1000, drained * 1000)
            return switched, drained

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
        status.replicas = self.replicas
        for at, reason in failures:
            status.recent_failures.add(at=wall - (now - at), reason=reason)
        by_version: dict[int, caxton_pb2.VersionInService] = {}
        for instance in instances:
            entry = by_version.setdefault(instance.version, caxton_pb2.VersionInService(version=instance.version))
            entry.replicas += 1
            entry.messages += instance.handled
        total = sum(v.messages for v in by_version.values())
        for entry in sorted(by_version.values(), key=lambda v: v.version):
            entry.share = entry.messages / total if total else 1.0 / len(by_version)
            status.versions.append(entry)
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
