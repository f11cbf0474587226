"""The runtime: every agent, the state store and the launcher, behind one API.

This is what the gRPC services call. It raises `CaxtonError`s (never grpc
errors), so it can be driven directly in tests and from other front ends.
"""

from __future__ import annotations

import itertools
import logging
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc

from caxton.v1 import caxton_pb2

from .agent import Agent, restart_from_proto
from .cgroups import Cgroups
from .config import Config
from .errors import (
    AlreadyExists,
    CaxtonError,
    FailedPrecondition,
    InvalidArgument,
    ModuleRejected,
    NotFound,
    ResourceExhausted,
)
from .events import EventBus
from .health import HealthMonitor
from .instance import WorkerEnv
from .launcher import Launcher
from .lifecycle import AgentState
from .mailbox import Pending
from .pool import SparePool
from .policy import Policy
from .store import StateStore
from .validation import Report, validate

log = logging.getLogger("caxton.runtime")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Each replica is a process; this keeps one request from asking for a host's worth.
MAX_REPLICAS = 64


def _worker_identity(user: str) -> tuple[int, int, str]:
    """(uid, gid, name) workers switch to: only when we are root and a user
    is configured; (-1, -1, "") means workers keep our identity."""
    if not user or os.geteuid() != 0:
        return -1, -1, ""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"sandbox.user: no user named {user!r} on this host") from None
    return entry.pw_uid, entry.pw_gid, user


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            f"invalid agent name {name!r}: use 1-63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )


class Runtime:
    def __init__(self, config: Config):
        self.config = config
        self.store = StateStore(config.state_dir)
        self._own_runtime_dir = not config.runtime_dir
        self.runtime_dir = config.runtime_dir or tempfile.mkdtemp(prefix="caxton-", dir="/tmp")
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        self.launcher = Launcher(self.runtime_dir, mode=config.worker_start)
        self.cgroups = Cgroups(enabled=config.sandbox.cgroups == "auto")
        self.pool = SparePool(self.launcher, config.worker_pool, config.worker_start_timeout_s)
        self.env = WorkerEnv(config, self.launcher, self.store, self.cgroups, self.pool,
                             *_worker_identity(config.sandbox.user))
        self._agents: dict[str, Agent] = {}
        self.events = EventBus()
        self._lock = threading.Lock()
        self.health = HealthMonitor(
            self._live_instances,
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
            failures=config.health_failures,
        )
        # Message ids the supervisor assigns: unique per supervisor boot and
        # cheap (no uuid per message on the hot path).
        self._boot = f"{int(time.time() * 1000):x}"
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ startup / shutdown

    def _live_instances(self) -> list:
        return [instance for agent in list(self._agents.values()) for instance in list(agent.instances)]

    def restore(self) -> None:
        """Bring every stored agent back to its desired state, then start
        watching worker health."""
        self._restore()
        self.health.start()

    def _restore(self) -> None:
        to_start = []
        for record in self.store.agents():
            version = self.store.version(record.name, record.current_version)
            state = AgentState.UNLOADED if record.desired_state == "running" else AgentState.STOPPED
            agent = Agent(record.name, record.policy, version, self.config, state=state, restart=record.restart,
                          replicas=record.replicas, events=self.events)
            if record.desired_state == "running":
                to_start.append(agent)
            self._agents[record.name] = agent
        if not to_start:
            return

        def start(agent: Agent) -> None:
            try:
                agent.start(self.env)
            except CaxtonError as exc:
                log.error("could not restore %s: %s", agent.name, exc.message)

        with ThreadPoolExecutor(max_workers=min(8, len(to_start)), thread_name_prefix="restore") as pool:
            list(pool.map(start, to_start))
        log.info("restored %d agents (%d started)", len(self._agents), len(to_start))

    def shutdown(self, timeout: float) -> None:
        """Drain every agent in parallel within `timeout`, then end all workers.
        Desired states are left as they are, so a restart brings agents back."""
        self.health.stop()
        agents = [a for a in self._agents.values() if a.state is AgentState.RUNNING]
        if agents:
            with ThreadPoolExecutor(max_workers=min(32, len(agents)), thread_name_prefix="drain") as pool:
                list(pool.map(lambda a: self._quietly(a.stop, timeout), agents))
        for agent in self._agents.values():
            agent.kill()
        self.events.close()
        self.pool.close()
        self.launcher.close()
        self.cgroups.close()
        self.store.close()
        if self._own_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    @staticmethod
    def _quietly(action: Callable[[float], None], timeout: float) -> None:
        try:
            action(timeout)
        except CaxtonError as exc:
            # e.g. the agent failed while the supervisor was shutting down
            log.warning("drain skipped: %s", exc.message)

    # ------------------------------------------------------------ lookup

    def get(self, name: str) -> Agent:
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {name!r}")
        return agent

    def agents(self) -> list[Agent]:
        return sorted(self._agents.values(), key=lambda a: a.name)

    def policy(self, name: str) -> Policy:
        name = name or self.config.default_policy
        try:
            return self.config.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.config.policies))
            raise InvalidArgument(f"no validation policy named {name!r} (known: {known})") from None

    # ------------------------------------------------------------ lifecycle

    def validate(self, module: bytes, policy_name: str, limits: caxton_pb2.ResourceLimits | None = None) -> Report:
        policy = self.policy(policy_name)
        memory_limit = self.config.limits.overlay(limits).memory_bytes if limits is not None else None
        return validate(module, policy, memory_limit)

    def deploy(self, name: str, module: bytes, limits: caxton_pb2.ResourceLimits, policy_name: str, label: str,
               restart: caxton_pb2.RestartPolicy | None = None, replicas: int = 0) -> tuple[Agent, Report]:
        check_name(name)
        replicas = replicas or 1
        if replicas > MAX_REPLICAS:
            raise InvalidArgument(f"replicas: at most {MAX_REPLICAS}, got {replicas}")
        resolved = self.config.limits.overlay(limits)
        restart_settings = restart_from_proto(self.config.restart, restart or caxton_pb2.RestartPolicy())
        try:
            restart_settings.check()
        except ValueError as exc:
            raise InvalidArgument(f"restart.{exc}") from None
        policy = self.policy(policy_name)
        report = validate(module, policy, resolved.memory_bytes)
        if not report.valid:
            raise ModuleRejected(f"module rejected by policy {policy.name!r}: {report.summary()}", report)
        with self._lock:
            if name in self._agents:
                raise AlreadyExists(f"an agent named {name!r} already exists (remove it first)")
            digest = self.store.put_module(report.wasm)
            version = self.store.create_agent(name, policy.name, digest, resolved, label, restart_settings, replicas)
            agent = Agent(name, policy.name, version, self.config, state=AgentState.UNLOADED, restart=restart_settings,
                          replicas=replicas, events=self.events)
            self._agents[name] = agent
        try:
            agent.start(self.env)
        except CaxtonError:
            # A deploy either runs the agent or leaves nothing behind, so the
            # caller can fix the module and deploy again under the same name.
            with self._lock:
                self._agents.pop(name, None)
                self.store.delete_agent(name)
            raise
        log.info("deployed %s v%d (%s, sha256 %s)", name, version.version, policy.name, digest[:12])
        self.events.publish(name, "deployed", version.version, f"sha256 {digest[:12]}, policy {policy.name}")
        return agent, report

    def hot_reload(self, name: str, module: bytes, limits: caxton_pb2.ResourceLimits, policy_name: str, label: str,
                   warmup: list[bytes], drain_timeout_ms: int) -> tuple[Agent, int, Report, float, float]:
        """Validate and record a new version, then switch to it with no
        downtime (see Agent.reload). The version record stays in history
        even if the switch fails, so the attempt is visible."""
        agent = self.get(name)
        resolved = agent.limits.overlay(limits)
        policy = self.policy(policy_name or agent.policy)
        report = validate(module, policy, resolved.memory_bytes)
        if not report.valid:
            self.events.publish(name, "reload-failed", agent.version.version, f"module rejected: {report.summary()}")
            raise ModuleRejected(
                f"module rejected by policy {policy.name!r}, v{agent.version.version} keeps serving: {report.summary()}",
                report,
            )
        digest = self.store.put_module(report.wasm)
        version = self.store.add_version(name, digest, resolved, label)
        from_version = agent.version.version
        switched, drained = self._switch(agent, version, warmup, drain_timeout_ms)
        return agent, from_version, report, switched, drained

    def rollback(self, name: str, to_version: int, drain_timeout_ms: int) -> tuple[Agent, int, float, float]:
        """Go back to `to_version` (default: the newest version older than
        the current one) through the same zero-downtime path."""
        agent = self.get(name)
        current = agent.version.version
        kept = {v.version: v for v in self.store.versions(name)}
        if to_version:
            if to_version not in kept:
                raise NotFound(f"agent {name!r} has no version {to_version} (kept: {sorted(kept)})")
            if to_version == current:
                raise FailedPrecondition(f"agent {name!r} is already on v{current}")
            target = kept[to_version]
        else:
            older = [v for v in kept if v < current]
            if not older:
                raise FailedPrecondition(f"agent {name!r} has no version older than v{current} to roll back to")
            target = kept[max(older)]
        switched, drained = self._switch(agent, target, [], drain_timeout_ms)
        return agent, current, switched, drained

    def _switch(self, agent: Agent, version, warmup: list[bytes], drain_timeout_ms: int) -> tuple[float, float]:
        def commit(record) -> None:
            self.store.set_current_version(agent.name, record.version)

        drain = drain_timeout_ms / 1000 if drain_timeout_ms else self.config.stop_timeout_s
        switched, drained = agent.reload(self.env, version, warmup, drain, commit)
        self.store.prune_versions(agent.name, self.config.keep_versions, version.version)
        return switched, drained

    def history(self, name: str) -> list:
        return self.store.versions(name)

    def stop(self, name: str, timeout_ms: int) -> Agent:
        agent = self.get(name)
        agent.stop(timeout_ms / 1000 if timeout_ms else self.config.stop_timeout_s)
        self.store.set_desired_state(name, "stopped")
        return agent

    def start(self, name: str) -> Agent:
        agent = self.get(name)
        self.store.set_desired_state(name, "running")
        agent.start(self.env)
        return agent

    def remove(self, name: str, timeout_ms: int) -> None:
        agent = self.get(name)
        if agent.state in (AgentState.RUNNING, AgentState.DRAINING):
            agent.stop(timeout_ms / 1000 if timeout_ms else self.config.stop_timeout_s)
        agent.unload()
        with self._lock:
            self._agents.pop(name, None)
            self.store.delete_agent(name)
        log.info("removed %s", name)
        self.events.publish(name, "removed", agent.version.version)

    # ------------------------------------------------------------ messages

    def submit(
        self,
        message: caxton_pb2.AgentMessage,
        deadline: float | None,
        callback: Callable[[grpc.StatusCode, str, bytes | None], None],
    ) -> Pending:
        """Accept a message for its receiver; the outcome goes to `callback`."""
        agent = self._agents.get(message.receiver)
        if agent is None:
            if not message.receiver:
                raise InvalidArgument("message has no receiver")
            raise NotFound(f"no agent named {message.receiver!r}")
        limit = agent.version.limits.max_message_bytes
        if len(message.content) > limit:
            raise ResourceExhausted(
                f"message of {len(message.content)} bytes exceeds agent {agent.name!r}'s max_message_bytes ({limit})"
            )
        if not message.message_id:
            message.message_id = f"{self._boot}-{next(self._ids)}"
        pending = Pending(message, deadline, callback)
        agent.submit(pending)
        return pending


def reply_envelope(request: caxton_pb2.AgentMessage, content: bytes) -> caxton_pb2.AgentMessage:
    """The FIPA-ACL envelope around an agent's reply."""
    return caxton_pb2.AgentMessage(
        performative=caxton_pb2.PERFORMATIVE_INFORM,
        sender=request.receiver,
        receiver=request.sender,
        conversation_id=request.conversation_id,
        in_reply_to=request.reply_with or request.message_id,
        content=content,
    )
