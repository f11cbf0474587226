"""An agent's status as plain data: what `GetAgentStatus` and `ListAgents` report.

A snapshot is taken from the agent's own view (read under its state lock,
no I/O) plus what only the workers and the kernel know (linear memory,
per-worker counters, RSS). The worker figures are asked of every instance at
once (non-blocking probes) with one deadline, so a status call costs one round trip however many
replicas an agent has, and a hung worker costs at most the deadline. Only
`api.py` turns a snapshot into protobuf.

What a snapshot shows a client names no host path (redact.py), and a label
stored before labels were capped is shown cut to the most a listing of
every agent can carry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import psutil

from .caps import MOST_LABEL_LENGTH
from .config import Limits
from .deadline import Deadline
from .lifecycle import AgentState
from .recovery import BreakerView
from .redact import without_paths
from .restart import RestartSettings
from .rollout_status import RolloutRecord, RolloutState
from .store import VersionRecord
from .worker_client import WorkerCallError

# How long a status call waits for a worker's own figures before reporting
# the instance without them.
STATS_DEADLINE_S = 1.0


@dataclass(frozen=True)
class InstanceSnapshot:
    pid: int
    version: int
    uptime_s: float
    rss_bytes: int
    enforcement: tuple[str, ...]
    # The worker's own figures; zero when it did not answer in time.
    memory_bytes: int = 0
    messages: int = 0
    errors: int = 0
    resets: int = 0


@dataclass(frozen=True)
class VersionShare:
    """One version with workers serving it, and its share of their traffic."""

    version: int
    replicas: int
    messages: int
    share: float


@dataclass(frozen=True)
class FailureRecord:
    at: float  # Unix seconds
    reason: str


@dataclass(frozen=True)
class AgentFacts:
    """What a view and a snapshot share."""

    name: str
    state: AgentState
    version: VersionRecord
    policy: str
    replicas: int
    restart: RestartSettings
    uptime_s: float
    messages: int
    errors: int
    restarts: int
    last_error: str
    next_restart_in_s: float
    breaker: BreakerView
    recent_failures: tuple[FailureRecord, ...]


@dataclass(frozen=True)
class AgentView(AgentFacts):
    """What the agent itself knows, read in one step under its state lock."""

    instances: tuple  # WorkerInstance, in service now


@dataclass(frozen=True)
class AgentSnapshot(AgentFacts):
    """The status as callers see it: no host paths, each worker's figures."""

    instances: tuple[InstanceSnapshot, ...]
    versions: tuple[VersionShare, ...]
    history: tuple[VersionRecord, ...]
    rollout: RolloutRecord | None = None  # in flight, else the latest
    health: str = "healthy"  # healthy, degraded or unhealthy
    health_reason: str = ""

    @property
    def limits(self) -> Limits:
        return self.version.limits

    @property
    def memory_bytes(self) -> int:
        return sum(i.memory_bytes for i in self.instances)


def version_shares(instances, handled: dict[int, int] | None = None) -> tuple[VersionShare, ...]:
    """How the current workers' messages split between versions (more than
    one version serves only during a rollout). `handled`: each version's
    messages since the rollout began, when one is in flight (the workers'
    own counts go back to their start, long before the split)."""
    replicas: dict[int, int] = {}
    messages: dict[int, int] = {}
    for instance in instances:
        replicas[instance.version] = replicas.get(instance.version, 0) + 1
        messages[instance.version] = messages.get(instance.version, 0) + instance.handled
    if handled is not None:
        messages = {version: handled.get(version, 0) for version in replicas}
    total = sum(messages.values())
    return tuple(
        VersionShare(v, replicas[v], messages[v], messages[v] / total if total else 1.0 / len(replicas))
        for v in sorted(replicas)
    )


def health(view: AgentView, rollout: RolloutRecord | None) -> tuple[str, str]:
    """Healthy, degraded or unhealthy, and why: what a dashboard or a load
    balancer wants in one word."""
    if view.state is AgentState.FAILED:
        return "unhealthy", view.last_error or "failed"
    if view.state is not AgentState.RUNNING:
        return "unhealthy", f"not running ({view.state.value})"
    serving = sum(1 for instance in view.instances if instance.version == view.version.version)
    if serving < view.replicas:
        return "degraded", f"{serving} of {view.replicas} replicas of v{view.version.version} running"
    if view.recent_failures:
        return "degraded", (f"{len(view.recent_failures)} worker failure(s) in the last "
                            f"{view.restart.window_s:g} s; latest: {view.recent_failures[-1].reason}")
    if rollout is not None and rollout.state is RolloutState.ROLLED_BACK and rollout.ended_at > time.time() - 300:
        return "degraded", f"v{rollout.candidate_version} was rolled back: {rollout.reason}"
    return "healthy", ""


def snapshot(view: AgentView, history: list[VersionRecord], rollout: RolloutRecord | None = None,
             handled: dict[int, int] | None = None, retake: Callable[[], AgentView] | None = None) -> AgentSnapshot:
    """The full status: `view` plus each instance's own figures (and, during
    a rollout, each version's messages since it began: `handled`).

    A worker that left service while it was asked (a rollout retired it and
    is ending it) has no figures to give, and the view that listed it is out
    of date: with `retake`, the status is made once more from a new view,
    so that it shows the workers in service at the time of their figures."""
    deadline = Deadline.after(STATS_DEADLINE_S)
    probes = [(instance, instance.figures(deadline)) for instance in view.instances]
    instances = []
    for instance, probe in probes:
        figures = {}
        try:
            stats = probe.result()
        except WorkerCallError:
            if retake is not None and instance.retired:
                return snapshot(retake(), history, rollout, handled)
            # Reported without the worker's own figures.
        else:
            figures = dict(memory_bytes=stats.memory_bytes, messages=stats.messages, errors=stats.errors,
                           resets=stats.resets)
        instances.append(InstanceSnapshot(
            pid=instance.pid, version=instance.version, uptime_s=time.monotonic() - instance.started_at,
            rss_bytes=_rss(instance.pid), enforcement=tuple(instance.enforcement), **figures,
        ))
    facts = {field.name: getattr(view, field.name) for field in fields(AgentFacts)}
    facts.update(
        version=_shown(view.version), last_error=without_paths(view.last_error),
        breaker=replace(view.breaker, reason=without_paths(view.breaker.reason)),
        recent_failures=tuple(FailureRecord(f.at, without_paths(f.reason)) for f in view.recent_failures),
    )
    status, reason = health(view, rollout)
    return AgentSnapshot(**facts, instances=tuple(instances), versions=version_shares(view.instances, handled),
                         history=tuple(_shown(record) for record in history), rollout=rollout,
                         health=status, health_reason=without_paths(reason))


def _shown(record: VersionRecord) -> VersionRecord:
    """`record` with its label cut to MOST_LABEL_LENGTH characters."""
    if len(record.label) <= MOST_LABEL_LENGTH:
        return record
    return replace(record, label=record.label[:MOST_LABEL_LENGTH - 3] + "...")


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
