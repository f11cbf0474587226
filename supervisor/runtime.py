"""The runtime: the registry of agents and the use cases callers drive.

It takes and returns domain types (specs.py, status.py, validation reports),
never protobuf, and raises `CaxtonError`s, never grpc errors, so it can be
driven in-process by tests and other front ends. What it is built from (the
store, the way workers are launched, the event bus) is assembled by
server.py and handed in.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .agent import Agent
from .config import Config, Limits
from .errors import (
    AlreadyExists,
    CaxtonError,
    FailedPrecondition,
    InvalidArgument,
    ModuleRejected,
    NotFound,
)
from .events import EventBus
from .lifecycle import AgentState
from .policy import Policy
from .rollout import Launch, Rollout, RolloutResult
from .router import Router
from .specs import DeploySpec, LimitOverrides, ReloadSpec, check_name
from .status import AgentSnapshot, snapshot
from .store import StateStore, VersionRecord
from .validation import Report, validate

log = logging.getLogger("caxton.runtime")

# Each replica is a process; this keeps one request from asking for a host's worth.
MAX_REPLICAS = 64


@dataclass(frozen=True)
class Deployed:
    status: AgentSnapshot
    report: Report


@dataclass(frozen=True)
class Reloaded:
    status: AgentSnapshot
    rollout: RolloutResult
    report: Report | None  # None for a rollback: nothing new was validated


class Runtime:
    def __init__(self, config: Config, store: StateStore, launch: Launch, events: EventBus):
        self.config = config
        self.store = store
        self.events = events
        self._launch = launch
        self._agents: dict[str, Agent] = {}
        self._lock = threading.Lock()
        self.router = Router(self._agents.get)

    def _agent(self, name: str, policy: str, version: VersionRecord, state: AgentState, replicas: int,
               restart=None) -> Agent:
        return Agent(name, policy, version, self.config, state=state, launch=self._launch, restart=restart,
                     replicas=replicas, events=self.events,
                     remember=lambda desired: self.store.set_desired_state(name, desired))

    # ------------------------------------------------------------ startup / shutdown

    def live_instances(self) -> list:
        """Every worker instance in service now (for the health sweep)."""
        return [instance for agent in list(self._agents.values()) for instance in list(agent.instances)]

    def restore(self) -> None:
        """Bring every stored agent back to its desired state."""
        to_start = []
        for record in self.store.agents():
            version = self.store.version(record.name, record.current_version)
            state = AgentState.UNLOADED if record.desired_state == "running" else AgentState.STOPPED
            agent = self._agent(record.name, record.policy, version, state, record.replicas, record.restart)
            if record.desired_state == "running":
                to_start.append(agent)
            self._agents[record.name] = agent
        if not to_start:
            return

        def start(agent: Agent) -> None:
            try:
                agent.start(remember=False)
            except CaxtonError as exc:
                log.error("could not restore %s: %s", agent.name, exc.message)

        with ThreadPoolExecutor(max_workers=min(8, len(to_start)), thread_name_prefix="restore") as pool:
            list(pool.map(start, to_start))
        log.info("restored %d agents (%d started)", len(self._agents), len(to_start))

    def shutdown(self, timeout: float) -> None:
        """Drain every agent in parallel within `timeout`, then end all workers.
        Desired states are left as they are, so a restart brings agents back."""
        agents = [a for a in self._agents.values() if a.state is AgentState.RUNNING]
        if agents:
            with ThreadPoolExecutor(max_workers=min(32, len(agents)), thread_name_prefix="drain") as pool:
                list(pool.map(lambda a: self._quietly(lambda t: a.stop(t, remember=False), timeout), agents))
        for agent in self._agents.values():
            agent.kill()

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

    def status(self, name: str) -> AgentSnapshot:
        return snapshot(self.get(name).view(), self.store.versions(name))

    def list(self) -> list[AgentSnapshot]:
        return [snapshot(agent.view(), self.store.versions(agent.name))
                for agent in sorted(self._agents.values(), key=lambda a: a.name)]

    def policy(self, name: str) -> Policy:
        name = name or self.config.default_policy
        try:
            return self.config.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.config.policies))
            raise InvalidArgument(f"no validation policy named {name!r} (known: {known})") from None

    # ------------------------------------------------------------ lifecycle

    def validate(self, module: bytes, policy_name: str, limits: LimitOverrides | None = None) -> Report:
        memory_limit = limits.apply(self.config.limits).memory_bytes if limits is not None else None
        return validate(module, self.policy(policy_name), memory_limit)

    def _checked(self, module: bytes, policy: Policy, limits: Limits,
                 keeps_serving: str = "") -> tuple[Report, bytes]:
        """The report on a module that passed, and the binary to store (a
        module that could not be read never passes)."""
        report = validate(module, policy, limits.memory_bytes)
        if not report.valid or report.wasm is None:
            raise ModuleRejected(f"module rejected by policy {policy.name!r}{keeps_serving}: {report.summary()}",
                                 report)
        return report, report.wasm

    def deploy(self, spec: DeploySpec) -> Deployed:
        check_name(spec.name)
        replicas = spec.replicas or 1
        if replicas > MAX_REPLICAS:
            raise InvalidArgument(f"replicas: at most {MAX_REPLICAS}, got {replicas}")
        limits = spec.limits.apply(self.config.limits)
        restart = spec.restart.apply(self.config.restart)
        policy = self.policy(spec.policy)
        report, wasm = self._checked(spec.module, policy, limits)
        with self._lock:
            if spec.name in self._agents:
                raise AlreadyExists(f"an agent named {spec.name!r} already exists (remove it first)")
            digest = self.store.put_module(wasm)
            version = self.store.create_agent(spec.name, policy.name, digest, limits, spec.label, restart, replicas)
            agent = self._agent(spec.name, policy.name, version, AgentState.UNLOADED, replicas, restart)
            self._agents[spec.name] = agent
        try:
            agent.start(remember=False)
        except CaxtonError:
            # A deploy either runs the agent or leaves nothing behind, so the
            # caller can fix the module and deploy again under the same name.
            with self._lock:
                self._agents.pop(spec.name, None)
                self.store.delete_agent(spec.name)
            raise
        self.store.mark_stable(spec.name, version.version)
        log.info("deployed %s v%d (%s, sha256 %s)", spec.name, version.version, policy.name, digest[:12])
        self.events.publish(spec.name, "deployed", version.version, f"sha256 {digest[:12]}, policy {policy.name}")
        return Deployed(self.status(spec.name), report)

    def hot_reload(self, spec: ReloadSpec) -> Reloaded:
        """Validate and record a new version, then switch to it with no
        downtime (rollout.py). The version record stays in history even if
        the switch fails, so the attempt is visible."""
        agent = self.get(spec.name)
        limits = spec.limits.apply(agent.limits)
        policy = self.policy(spec.policy or agent.policy)
        try:
            report, wasm = self._checked(spec.module, policy, limits, f", v{agent.version.version} keeps serving")
        except ModuleRejected as exc:
            self.events.publish(spec.name, "reload-failed", agent.version.version,
                                f"module rejected: {exc.report.summary()}")
            raise
        digest = self.store.put_module(wasm)
        version = self.store.add_version(spec.name, digest, limits, spec.label)
        result = self._roll(agent, version, list(spec.warmup), spec.drain_timeout_s)
        return Reloaded(self.status(spec.name), result, report)

    def rollback(self, name: str, to_version: int | None, drain_timeout_s: float | None) -> Reloaded:
        """Go back to `to_version` (default: the newest older version that
        was ever stable) through the same zero-downtime path."""
        agent = self.get(name)
        current = agent.version.version
        if to_version:
            kept = {v.version: v for v in self.store.versions(name)}
            if to_version not in kept:
                raise NotFound(f"agent {name!r} has no version {to_version} (kept: {sorted(kept)})")
            if to_version == current:
                raise FailedPrecondition(f"agent {name!r} is already on v{current}")
            target = kept[to_version]
        else:
            found = self.store.rollback_target(name, current)
            if found is None:
                raise FailedPrecondition(
                    f"agent {name!r} has no version older than v{current} that ever served all traffic")
            target = found
        result = self._roll(agent, target, [], drain_timeout_s)
        return Reloaded(self.status(name), result, None)

    # `builtins.list`: in this class, plain `list` is the method above.
    def _roll(self, agent: Agent, version: VersionRecord, warmup: builtins.list[bytes],
              drain_timeout_s: float | None) -> RolloutResult:
        rollout = Rollout(
            agent, version, warmup=warmup,
            drain_timeout_s=self.config.stop_timeout_s if drain_timeout_s is None else drain_timeout_s,
            start_timeout_s=self.config.worker_start_timeout_s,
            on_switched=lambda v: self.store.set_current_version(agent.name, v.version),
            on_stable=lambda v: self.store.mark_stable(agent.name, v.version),
        )
        result = rollout.run()
        self.store.prune_versions(agent.name, self.config.keep_versions, version.version)
        return result

    def stop(self, name: str, timeout_s: float | None) -> AgentSnapshot:
        self.get(name).stop(self.config.stop_timeout_s if timeout_s is None else timeout_s)
        return self.status(name)

    def start(self, name: str) -> AgentSnapshot:
        self.get(name).start()
        return self.status(name)

    def remove(self, name: str, timeout_s: float | None) -> None:
        agent = self.get(name)
        if agent.state in (AgentState.RUNNING, AgentState.DRAINING):
            agent.stop(self.config.stop_timeout_s if timeout_s is None else timeout_s)
        agent.unload()
        with self._lock:
            self._agents.pop(name, None)
            self.store.delete_agent(name)
        log.info("removed %s", name)
        self.events.publish(name, "removed", agent.version.version)
