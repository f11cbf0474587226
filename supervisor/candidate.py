"""The version on trial: its workers, its mailbox, and its part of the traffic.

During a judged rollout (canary, traffic-split, parallel) the new version
serves beside the stable one as a `Candidate`, a lane of its own: its
workers take batches from its own mailbox, so the router decides per message
which version handles it (split.py: a share, sticky per conversation) or,
shadowing, gives the candidate a copy of every message and compares the two
replies (the caller only ever gets the stable one).

The lane ends in one of two ways, both without losing a message: promoted,
its workers move to the agent's own mailbox and take over (`promote`), or
withdrawn, its workers stop (`withdraw`); either way whatever waits in its
mailbox, and whatever is still put there by a router that read the lane a
moment earlier, goes to the agent's mailbox.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from .analysis import agree
from .instance import WorkerInstance
from .mailbox import Mailbox, OutcomeCallback
from .split import Split
from .store import VersionRecord

if TYPE_CHECKING:
    from .agent import Agent


def _ignore(reason: str) -> None:
    """Default for a candidate nobody watches."""


class Candidate:
    def __init__(self, version: VersionRecord, queue_limit: int, *, shadow: bool = False,
                 compare: str = "exact") -> None:
        self.version = version
        self.mailbox = Mailbox(queue_limit)
        self.split = Split()
        self.shadow = shadow
        self.compare = compare
        self.instances: list[WorkerInstance] = []
        # Called (never blocking: from the launcher's exit-callback thread)
        # when one of its workers exits unexpectedly.
        self.on_failure: Callable[[str], None] = _ignore
        self._lock = threading.Lock()
        self.agreed = 0
        self.disagreed = 0
        self.dropped = 0  # shadow copies its full mailbox could not take
        self.last_mismatch = ""

    def worker_failed(self, reason: str) -> None:
        self.on_failure(reason)

    # ------------------------------------------------------------ shadowing

    def tap(self, callback: OutcomeCallback) -> tuple[OutcomeCallback, OutcomeCallback]:
        """The callbacks for one shadowed message: the stable copy's (which
        answers the caller through `callback`) and the candidate's (which
        answers nobody); once both are in, the replies are compared."""
        pair = _Pair(self, callback)
        return pair.stable, pair.candidate

    def shadow_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def comparisons(self) -> tuple[int, int]:
        """(agreed, disagreed) so far."""
        with self._lock:
            return self.agreed, self.disagreed

    def _compared(self, stable: tuple[grpc.StatusCode, bytes | None],
                  candidate: tuple[grpc.StatusCode, bytes | None]) -> None:
        same = agree(self.compare, stable, candidate)
        with self._lock:
            if same:
                self.agreed += 1
            else:
                self.disagreed += 1
                self.last_mismatch = (f"stable answered {_said(*stable)}, v{self.version.version} "
                                      f"answered {_said(*candidate)}")


def _said(code: grpc.StatusCode, reply: bytes | None) -> str:
    if code is not grpc.StatusCode.OK:
        return code.name
    return "no reply" if reply is None else f"{len(reply)} bytes"


class _Pair:
    """One message and its shadow copy, waiting for both outcomes."""

    __slots__ = ("_candidate", "_callback", "_first", "_lock")

    def __init__(self, candidate: Candidate, callback: OutcomeCallback) -> None:
        self._candidate = candidate
        self._callback = callback
        self._first: tuple[bool, grpc.StatusCode, bytes | None] | None = None
        self._lock = threading.Lock()

    def stable(self, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        self._callback(code, error, reply)
        self._arrived(True, code, reply)

    def candidate(self, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        self._arrived(False, code, reply)

    def _arrived(self, stable: bool, code: grpc.StatusCode, reply: bytes | None) -> None:
        with self._lock:
            first, self._first = self._first, (stable, code, reply)
        if first is None:
            return
        mine, theirs = (code, reply), (first[1], first[2])
        self._candidate._compared(*((mine, theirs) if stable else (theirs, mine)))


# ------------------------------------------------------------ the lane's ends


def admit(agent: Agent, candidate: Candidate, instances: list[WorkerInstance], *, count: bool) -> None:
    """Put the candidate's started workers behind its mailbox and the lane
    beside the agent's own (share 0 until the rollout sets one). `count`:
    their outcomes count in the agent's tally (not for shadow copies)."""
    on_result = agent.intake.count if count else _uncounted
    with agent.state_lock:
        candidate.instances.extend(instances)
        agent.candidate = candidate
    for instance in instances:
        instance.process.add_exit_callback(functools.partial(agent.on_exit, instance))
        instance.serve(candidate.mailbox, on_result)


def _uncounted(messages: int, errors: int) -> None:
    """Shadow copies answer nobody: they are not the agent's messages."""


def promote(agent: Agent, candidate: Candidate, more: list[WorkerInstance]) -> list[WorkerInstance]:
    """The candidate takes all traffic: its workers (and `more` of its
    version) become the agent's, its version the agent's version; returns
    the stable workers, retired, for the caller to drain."""
    with agent.state_lock:
        old, agent.instances = agent.instances, []
        for instance in old:
            instance.retire(agent.mailbox, drain=False)
        agent.version = candidate.version
        agent.candidate = None
        agent.instances.extend(candidate.instances)
        moved, candidate.instances = candidate.instances, []
    for instance in moved:
        instance.move_to(agent.mailbox, agent.intake.count)
    candidate.mailbox.forward_to(agent.mailbox)
    if more:
        agent.switch_to(more)
    return old


def withdraw(agent: Agent, candidate: Candidate) -> list[WorkerInstance]:
    """Traffic back to the stable version at once: the lane is gone, what
    waits in it goes to the agent's mailbox; returns the candidate's workers,
    retired, for the caller to end."""
    with agent.state_lock:
        if agent.candidate is candidate:
            agent.candidate = None
        retired, candidate.instances = candidate.instances, []
    candidate.split.set_share(0.0)
    for instance in retired:
        instance.retire(candidate.mailbox, drain=False)
    candidate.mailbox.forward_to(agent.mailbox)
    return retired
