"""Restore: what each stored agent comes back as when the supervisor starts.

Each stored agent is judged (`stored_agents`), and those that were running
are started again (`start_restored`).

A supervisor that cannot start serves nobody, so a restore never fails as a
whole: each stored agent is judged on its own. One that cannot be started at
all (a record that cannot be read, values no worker can carry, a missing
module file) comes back FAILED with the reason, which names the problem and
no host path; it can be removed and deployed again. Every other agent comes
back as it was. A corrupt compiled module is not damage: the worker checks
it against its recorded digest and compiles the module again.

Today's caps are not applied here. An agent stored under looser caps (or
before there were caps) was accepted by the operator then, and a cap lowered
later must not take it down at the next restart: it is restored and runs,
and a warning names each value above its cap. The caps bound what clients
ask for from now on, and the host-wide quotas count a restored agent like
any other.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .caps import Caps, over_caps, unrunnable
from .config import Limits
from .errors import CaxtonError, InvalidArgument
from .specs import check_name
from .store import AgentRecord, StateDamage, StateStore, VersionRecord

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("caxton.restore")


@dataclass(frozen=True)
class Restorable:
    """A stored agent that can come back as it was."""

    record: AgentRecord
    version: VersionRecord


@dataclass(frozen=True)
class Damaged:
    """A stored agent that cannot be started: it comes back FAILED."""

    name: str
    reason: str
    # The current version if it could be read, else a stand-in with the
    # default limits (the only other figures a status could show).
    version: VersionRecord
    policy: str = ""


def stored_agents(store: StateStore, caps: Caps, defaults: Limits) -> list[Restorable | Damaged]:
    """Every stored agent, judged; `defaults` stand in for limits that
    cannot be read."""
    judged = []
    for name in store.agent_names():
        try:
            verdict = _judge(store, caps, defaults, name)
        except Exception as exc:
            # Restore must bring the supervisor up whatever one record holds:
            # a failure nobody foresaw costs this agent, not all of them.
            log.exception("restoring %s failed", name)
            verdict = Damaged(name, f"internal error ({type(exc).__name__})",
                              VersionRecord(name, 0, "", "", defaults, 0.0))
        if isinstance(verdict, Damaged):
            log.error("[%s] cannot be restored: %s", name, verdict.reason)
        judged.append(verdict)
    return judged


def start_restored(agents: list[Agent]) -> None:
    """Start restored agents, eight at a time. One that fails to start is
    FAILED with the reason (Agent.start) and the others start regardless."""
    if not agents:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(agents)), thread_name_prefix="restore") as pool:
        list(pool.map(_start, agents))


def _start(agent: Agent) -> None:
    try:
        agent.start(remember=False)
    except CaxtonError as exc:
        log.error("could not restore %s: %s", agent.name, exc.message)
    except Exception:
        log.exception("could not restore %s", agent.name)


def _judge(store: StateStore, caps: Caps, defaults: Limits, name: str) -> Restorable | Damaged:
    def stand_in(number: int) -> VersionRecord:
        return VersionRecord(name, number, "", "", defaults, 0.0)

    try:
        check_name(name)
    except InvalidArgument:
        return Damaged(name, "its stored name is not a valid agent name", stand_in(0))
    try:
        record = store.agent(name)
    except StateDamage as exc:
        return Damaged(name, str(exc), stand_in(0))
    try:
        version = store.version(name, record.current_version)
    except StateDamage as exc:
        return Damaged(name, str(exc), stand_in(record.current_version), record.policy)
    except KeyError:
        return Damaged(name, f"its current version v{record.current_version} is missing from the history",
                       stand_in(record.current_version), record.policy)
    problem = unrunnable(version.limits, record.replicas, record.restart)
    if problem:
        # Limits the status could not even report are shown as the defaults.
        return Damaged(name, problem, replace(version, limits=defaults), record.policy)
    problem = store.modules.problem(version.module_sha256)
    if problem:
        return Damaged(name, problem, version, record.policy)
    over = over_caps(caps, version.limits, record.replicas)
    if over:
        log.warning("restoring %s above today's caps (it was deployed under looser ones): %s", name, "; ".join(over))
    return Restorable(record, version)
