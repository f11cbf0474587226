"""The runtime: the registry of agents and the use cases callers drive.

It takes and returns domain types (specs.py, status.py, validation reports),
never protobuf, and raises `CaxtonError`s, never grpc errors, so it can be
driven in-process by tests and other front ends. What it is built from (the
store, the way workers are launched, the event bus) is assembled by
server.py and handed in.

Deploys and reloads are admitted first (admission.py: caps, validation
slots, quotas). A deploy of a new name either runs the agent or leaves no
trace; a deploy repeated with the same module, limits, policy, replicas,
restart policy and label changes nothing and succeeds, so a client that lost
its connection may retry.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from . import strategy
from .admission import Admission, Wanted
from .agent import Agent
from .analysis import Counts
from .caps import Usage
from .config import Config
from .errors import CaxtonError, FailedPrecondition, ModuleRejected, NotFound
from .events import EventBus
from .lifecycle import AgentState
from .metrics import BUCKETS, Deployments
from .restore import Damaged, start_restored, stored_agents
from .rollout import Launch, Rollout, RolloutResult
from .rollout_status import RolloutRecord
from .rollouts import Rollouts
from .router import Router
from .specs import DeploySpec, LimitOverrides, ReloadSpec, quoted
from .status import AgentSnapshot, snapshot
from .store import StateDamage, StateStore, VersionRecord
from .strategies import RolloutDeps, run_rollout
from .validation import Report

log = logging.getLogger("caxton.runtime")


@dataclass(frozen=True)
class Deployed:
    status: AgentSnapshot
    report: Report


@dataclass(frozen=True)
class Reloaded:
    status: AgentSnapshot
    rollout: RolloutResult
    report: Report | None  # None for a rollback: nothing new was validated
    record: RolloutRecord | None = None


class Runtime:
    def __init__(self, config: Config, store: StateStore, launch: Launch, events: EventBus):
        self.config = config
        self.store = store
        self.events = events
        self._launch = launch
        self._agents: dict[str, Agent] = {}
        # Restored agents that cannot be started, and why (restore.py).
        self._damaged: dict[str, str] = {}
        self._lock = threading.Lock()
        self.admission = Admission(config, self._agents, self._lock)
        self.router = Router(self._agents.get)
        # Where deployments and rollbacks are counted (metrics.py); None: not
        # counted. The composition root sets it.
        self.deployments: Deployments | None = None
        self.rollouts = Rollouts(store, events, self._rolled_back)

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
        """Bring every stored agent back to its desired state. One that cannot
        be started comes back FAILED with the reason (restore.py); it runs
        nothing (no replicas, no share of the quotas) and can be removed."""
        to_start = []
        for stored in stored_agents(self.store, self.config.caps, self.config.limits):
            if isinstance(stored, Damaged):
                agent = self._agent(stored.name, stored.policy, stored.version, AgentState.FAILED, replicas=0)
                agent.last_error = f"cannot be restored: {stored.reason}"
                self._damaged[stored.name] = stored.reason
                self.events.publish(stored.name, "failed", stored.version.version, agent.last_error)
            else:
                record = stored.record
                running = record.desired_state == "running"
                agent = self._agent(record.name, record.policy, stored.version,
                                    AgentState.UNLOADED if running else AgentState.STOPPED, record.replicas,
                                    record.restart)
                if running:
                    to_start.append(agent)
            self._agents[agent.name] = agent
        self.rollouts.restore()
        saved, _ = self.store.saved_counters()
        for name, (messages, errors, restarts) in saved.items():
            if name in self._agents:
                self._agents[name].intake.messages = messages
                self._agents[name].intake.errors = errors
                self._agents[name].recovery.restarts = restarts
        start_restored(to_start)
        log.info("restored %d agents (%d started, %d damaged)", len(self._agents), len(to_start), len(self._damaged))

    def reconfigure(self, config: Config) -> None:
        """A config reload (SIGHUP): what callers may ask for changes for
        requests from now on (default limits, validation policies, caps, the
        default restart policy); running agents keep what they were deployed
        with, and settings of the process itself (listen, state_dir, the
        sandbox, the memory budget) need a restart."""
        self.config = replace(self.config, limits=config.limits, default_policy=config.default_policy,
                              policies=config.policies, caps=config.caps, restart=config.restart)
        self.admission.reconfigure(self.config)

    def save_counters(self) -> None:
        """Persist message, error and restart counts (and the metrics'
        per-outcome counts): periodically, and at shutdown."""
        agents = []
        for agent in list(self._agents.values()):
            messages, errors = agent.intake.tally()
            agents.append((agent.name, messages, errors, agent.recovery.restarts))
        tally = self.router.tally
        self.store.save_counters(agents, tally.snapshot() if tally is not None else [])

    def shutdown(self, timeout: float) -> None:
        """Drain every agent in parallel within `timeout`, then end all workers.
        Desired states are left as they are, so a restart brings agents back."""
        self.rollouts.cancel_all()
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

    def exists(self, name: str) -> bool:
        return name in self._agents

    def get(self, name: str) -> Agent:
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"no agent named {quoted(name)}")
        return agent

    def _startable(self, name: str) -> Agent:
        """The agent, unless it is one that cannot be started (FailedPrecondition)."""
        agent = self.get(name)
        damage = self._damaged.get(name)
        if damage is not None:
            raise FailedPrecondition(f"agent {name!r} cannot be started: {damage}; remove it and deploy it again")
        return agent

    def status(self, name: str) -> AgentSnapshot:
        return self._snapshot(self.get(name))

    def states(self) -> list[str]:
        """Each agent's state, without asking any worker: for the status
        line systemd shows, written every few seconds, which must not wake
        parked workers."""
        return [agent.view().state.value for agent in list(self._agents.values())]

    def list(self) -> list[AgentSnapshot]:
        return [self._snapshot(agent) for agent in sorted(self._agents.values(), key=lambda a: a.name)]

    def _snapshot(self, agent: Agent) -> AgentSnapshot:
        baseline = self.rollouts.baseline(agent.name)
        handled = None
        if baseline is not None:
            handled = {version: sum(self._counts(agent.name, version)[0].values()) - before
                       for version, before in baseline.items()}
        return snapshot(agent.view(), self.store.versions(agent.name), self.rollouts.record(agent.name), handled,
                        retake=agent.view)

    def validate(self, module: bytes, policy_name: str, limits: LimitOverrides | None = None) -> Report:
        return self.admission.dry_run(module, policy_name, limits)

    # ------------------------------------------------------------ lifecycle

    def deploy(self, spec: DeploySpec) -> Deployed:
        """Validate, record and start a new agent. Repeating a deploy that
        exists already as asked changes nothing and returns its status."""
        if spec.rollout is not None and spec.name in self._agents:
            reloaded = self.hot_reload(ReloadSpec(name=spec.name, module=spec.module, limits=spec.limits,
                                                  policy=spec.policy, label=spec.label, rollout=spec.rollout))
            assert reloaded.report is not None
            return Deployed(reloaded.status, reloaded.report)
        replicas = self.admission.check_deploy(spec)
        limits = spec.limits.apply(self.config.limits)
        restart = spec.restart.apply(self.config.restart)
        policy = self.admission.policy(spec.policy)
        report, wasm = self.admission.validated(spec.module, policy, limits)
        wanted = Wanted(report.module_sha256, limits, policy.name, replicas, restart, spec.label)
        if self.admission.claim(spec.name, wanted):
            log.info("deploy of %s repeated as it exists: nothing to do", spec.name)
            return Deployed(self.status(spec.name), report)
        try:
            version = self._create(spec.name, policy.name, wasm, wanted)
        finally:
            self.admission.settle(spec.name)
        log.info("deployed %s v%d (%s, sha256 %s)", spec.name, version.version, policy.name,
                 version.module_sha256[:12])
        self.events.publish(spec.name, "deployed", version.version,
                            f"sha256 {version.module_sha256[:12]}, policy {policy.name}")
        return Deployed(self.status(spec.name), report)

    def _create(self, name: str, policy: str, wasm: bytes, wanted: Wanted) -> VersionRecord:
        """Record and start a new agent: it runs, or nothing of it is left, so
        the caller can fix what was wrong and deploy again under the name."""
        with self._lock:
            digest = self.store.modules.put(wasm)
            try:
                version = self.store.create_agent(name, policy, digest, wanted.limits, wanted.label, wanted.restart,
                                                  wanted.replicas)
            except BaseException:
                self.store.discard_module(digest)
                raise
            agent = self._agent(name, policy, version, AgentState.UNLOADED, wanted.replicas, wanted.restart)
            self._agents[name] = agent
            self.admission.joined(agent)
        try:
            agent.start(remember=False)
            self.store.mark_stable(name, version.version)
        except BaseException:
            agent.kill()
            with self._lock:
                self._unregister(name)
                self.store.delete_agent(name)
            raise
        return version

    def _unregister(self, name: str) -> None:
        """Take `name` out of the registry (caller holds the lock)."""
        agent = self._agents.pop(name, None)
        if agent is not None:
            self.admission.left(agent)

    def hot_reload(self, spec: ReloadSpec) -> Reloaded:
        """Validate and record a new version, then switch to it with no
        downtime (rollout.py). The version record stays in history even if
        the switch fails, so the attempt is visible."""
        agent = self._startable(spec.name)
        plan = strategy.plan(spec.rollout, self.config.rollout, replicas=agent.replicas)
        self.rollouts.check_idle(spec.name)
        self.admission.check_reload(spec.limits, spec.label)
        limits = spec.limits.apply(agent.limits)
        policy = self.admission.policy(spec.policy or agent.policy)
        try:
            report, wasm = self.admission.validated(spec.module, policy, limits,
                                                    f", v{agent.version.version} keeps serving")
        except ModuleRejected as exc:
            self.events.publish(spec.name, "reload-failed", agent.version.version,
                                f"module rejected: {exc.report.summary()}")
            raise
        growth = Usage(memory_bytes=(limits.memory_bytes - agent.limits.memory_bytes) * agent.replicas)
        with self._lock:
            self.admission.check_growth(growth)
            digest = self.store.modules.put(wasm)
            version = self.store.add_version(spec.name, digest, limits, spec.label)
            self.admission.hold(growth)
        try:
            result, record = run_rollout(self._rollout_deps(), agent, version, plan, warmup=list(spec.warmup),
                                         drain_timeout_s=self._drain_timeout(spec.drain_timeout_s))
        finally:
            self.admission.release(growth)
        with self._lock:
            self.store.prune_versions(agent.name, self.config.keep_versions, version.version)
        return Reloaded(self.status(spec.name), result, report, record)

    def _drain_timeout(self, asked: float | None) -> float:
        return self.config.stop_timeout_s if asked is None else asked

    def _rollout_deps(self) -> RolloutDeps:
        return RolloutDeps(
            rollouts=self.rollouts, counts=self._counts, set_current=self._set_current,
            finished=self._deployment_finished, rolled_back=self._rolled_back,
            queue_limit=self.config.queue_limit, start_timeout_s=self.config.worker_start_timeout_s,
        )

    def _counts(self, agent: str, version: int) -> Counts:
        tally = self.router.tally
        if tally is None:
            return {}, [0] * (len(BUCKETS) + 1), 0.0
        return tally.series(agent, version).counts()

    def _set_current(self, agent: str, version: VersionRecord) -> None:
        self.store.set_current_version(agent, version.version)
        self.store.mark_stable(agent, version.version)

    def _deployment_finished(self, strategy_name: str, outcome: str, seconds: float) -> None:
        if self.deployments is not None:
            self.deployments.finished(strategy_name, outcome, seconds)

    def _rolled_back(self, agent: str, reason: str) -> None:
        if self.deployments is not None:
            self.deployments.rolled_back(agent, reason)

    def control_rollout(self, name: str, action: str) -> RolloutRecord:
        """An operator's promote, abort, pause or resume of the agent's rollout."""
        self.get(name)
        return self.rollouts.control(name, action)

    def rollback(self, name: str, to_version: int | None, drain_timeout_s: float | None) -> Reloaded:
        """Go back to `to_version` (default: the newest older version that
        was ever stable) through the same zero-downtime path. No quota is
        checked: going back to what served before must always be possible."""
        agent = self._startable(name)
        if self.rollouts.in_flight(name):
            # Going back during a rollout is its abort: the stable version
            # serves again (blue-green: at once, on its warm old set).
            before = agent.version.version
            record = self.rollouts.control(name, "abort")
            return Reloaded(self.status(name), RolloutResult(before, agent.version.version, 0.0, 0.0), None, record)
        current = agent.version.version
        if to_version:
            kept = {v.version: v for v in self.store.versions(name)}
            if to_version not in kept:
                raise NotFound(f"agent {name!r} has no version {to_version} (kept: {sorted(kept)})")
            if to_version == current:
                raise FailedPrecondition(f"agent {name!r} is already on v{current}")
            target = kept[to_version]
        else:
            try:
                found = self.store.rollback_target(name, current)
            except StateDamage as exc:
                raise FailedPrecondition(f"agent {name!r} cannot roll back: {exc}") from exc
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
        # Under the lock: a module pruned here may be one a deploy is storing.
        with self._lock:
            self.store.prune_versions(agent.name, self.config.keep_versions, version.version)
        return result

    def stop(self, name: str, timeout_s: float | None) -> AgentSnapshot:
        self.rollouts.cancel(name, "stopped")
        self.get(name).stop(self.config.stop_timeout_s if timeout_s is None else timeout_s)
        return self.status(name)

    def start(self, name: str) -> AgentSnapshot:
        self._startable(name).start()
        return self.status(name)

    def remove(self, name: str, timeout_s: float | None) -> None:
        agent = self.get(name)
        self.rollouts.cancel(name, "removed")
        if agent.state in (AgentState.RUNNING, AgentState.DRAINING):
            agent.stop(self.config.stop_timeout_s if timeout_s is None else timeout_s)
        agent.unload()
        with self._lock:
            self._unregister(name)
            self._damaged.pop(name, None)
            self.store.delete_agent(name)
        log.info("removed %s", name)
        self.router.removed(name)
        self.rollouts.forget(name)
        self.events.publish(name, "removed", agent.version.version)
