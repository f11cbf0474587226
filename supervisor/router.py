"""Message routing: from a receiver's name to the agent whose intake takes it.

Every message, whoever sends it, goes through `Router.submit`: the receiver
is looked up, the size checked against its limit, the message given an id,
and handed to the agent's intake. In a cluster ([cluster]), a receiver that
is not local but runs on another host goes to `remote` (remote.py) instead,
with the same envelope and the same errors; a local agent never does.

The envelope stays the protobuf message it arrived as: it goes to the worker
untouched, and converting it on the way would cost more per message than
everything else the supervisor does.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .errors import CaxtonError, InvalidArgument, NotFound, ResourceExhausted
from .mailbox import OutcomeCallback, Pending
from .memory_budget import MemoryBudget, RoomCallback
from .metrics import MessageTally, Series

if TYPE_CHECKING:
    from .agent import Agent
    from .candidate import Candidate
    from .remote import Remote


class Router:
    def __init__(self, lookup: Callable[[str], Agent | None], budget: MemoryBudget | None = None) -> None:
        self._lookup = lookup
        # What queued messages are charged to (None: mailboxes are bounded
        # in messages only). The composition root (server.py) sets it.
        self.budget = budget
        # Where each message's outcome and latency are counted (metrics.py);
        # None: not counted. The composition root sets it.
        self.tally: MessageTally | None = None
        self._series: dict[tuple[str, int], Series] = {}
        # Message ids the supervisor assigns: unique per supervisor boot and
        # cheap (no uuid per message on the hot path).
        self._boot = f"{int(time.time() * 1000):x}"
        self._ids = itertools.count(1)
        # Delivery to agents of other hosts (None: standalone). The
        # composition root sets it when [cluster] is configured.
        self.remote: Remote | None = None

    def submit(self, message: caxton_pb2.AgentMessage, deadline: Deadline, callback: OutcomeCallback,
               retained: int = 0, held_by_caller: bool = False, forward: bool = True) -> Pending:
        """Accept a message for its receiver; the outcome goes to `callback`.
        Raises ResourceExhausted at once when there is no room for it.
        `retained`: bytes the caller keeps alive beside the message (charged
        with it); `held_by_caller`: the charge lasts until the caller calls
        the Pending's release(), not only while the message is queued.
        `forward`: a receiver on another host may be reached (False for a
        message that came from another host: it is for this one)."""
        if forward and self.remote is not None:
            remote = self._to_remote(message, deadline, callback)
            if remote is not None:
                return remote
        agent = self._receiver(message)
        candidate = agent.candidate
        if candidate is not None:
            pending = self._to_lanes(agent, candidate, message, deadline, callback, retained, held_by_caller, None)
            assert pending is not None  # without on_room, a refusal raises
            return pending
        pending = self._pending(agent, agent.version.version, message, deadline, callback, retained, held_by_caller)
        agent.intake.submit(pending, self.budget)
        return pending

    def offer(self, message: caxton_pb2.AgentMessage, deadline: Deadline, callback: OutcomeCallback,
              on_room: RoomCallback) -> Pending | None:
        """As submit, for a caller that waits rather than fail when the
        receiver's mailbox or the memory budget is full: then nothing is
        accepted, None is returned, and `on_room` is called once (from
        another thread) when room may have appeared; the caller offers the
        same message again. A receiver on another host takes it or refuses
        it at once (its host's mailbox is not waited for)."""
        if self.remote is not None:
            remote = self._to_remote(message, deadline, callback)
            if remote is not None:
                return remote
        agent = self._receiver(message)
        candidate = agent.candidate
        if candidate is not None:
            return self._to_lanes(agent, candidate, message, deadline, callback, 0, False, on_room)
        pending = self._pending(agent, agent.version.version, message, deadline, callback)
        return pending if agent.intake.submit(pending, self.budget, on_room) else None

    def offer_many(self, messages: Sequence[caxton_pb2.AgentMessage], deadline: Deadline,
                   callbacks: Sequence[OutcomeCallback]) -> int:
        """Accept the longest prefix of `messages`, all to one receiver, that
        goes in at once in the common case: a local agent with no rollout
        under way, with room for all of them. Returns its length (maybe 0).
        Nothing is refused or waited for here: the caller offers the first
        message not taken by `offer`, which takes it, refuses it with the
        reason, or waits for room, and then the rest here again. (One
        lookup, one mailbox lock and one budget charge for a stream's frame
        instead of one each per message: about a micro-second a message.)"""
        agent = self._lookup(messages[0].receiver) if messages else None
        if agent is None or agent.candidate is not None:
            return 0  # another host's, unknown, or a rollout's: offer() says which
        record = agent.version
        limit = record.limits.max_message_bytes
        series = self._series_of(agent, record.version)
        accepted = time.monotonic()
        pendings = []
        for message, callback in zip(messages, callbacks, strict=True):
            if len(message.content) > limit:
                break
            if not message.message_id:
                message.message_id = self.new_id()
            pending = Pending(message, deadline, callback)
            if series is not None:
                pending.timed(series, accepted)
            pendings.append(pending)
        return agent.intake.submit_many(pendings, self.budget)

    def _to_lanes(self, agent: Agent, candidate: Candidate, message: caxton_pb2.AgentMessage, deadline: Deadline,
                  callback: OutcomeCallback, retained: int, held_by_caller: bool,
                  on_room: RoomCallback | None) -> Pending | None:
        """During a judged rollout: the candidate's share goes to its own
        mailbox (sticky per conversation); shadowing, the stable version
        answers and the candidate gets a copy, whose fate never reaches the
        caller (a full candidate mailbox drops the copy, not the message)."""
        if not candidate.shadow:
            if candidate.split.to_candidate(message.conversation_id):
                version, mailbox = candidate.version.version, candidate.mailbox
            else:
                version, mailbox = agent.version.version, agent.mailbox
            pending = self._pending(agent, version, message, deadline, callback, retained, held_by_caller)
            return pending if agent.intake.submit(pending, self.budget, on_room, mailbox) else None
        answer, compare = candidate.tap(callback)
        pending = self._pending(agent, agent.version.version, message, deadline, answer, retained, held_by_caller)
        if not agent.intake.submit(pending, self.budget, on_room):
            return None
        copy = caxton_pb2.AgentMessage()
        copy.CopyFrom(message)
        shadow = self._pending(agent, candidate.version.version, copy, deadline, compare)
        shadow.shadow = True
        try:
            candidate.mailbox.put(shadow)
        except CaxtonError:
            candidate.shadow_dropped()
        return pending

    def _to_remote(self, message: caxton_pb2.AgentMessage, deadline: Deadline,
                   callback: OutcomeCallback) -> Pending | None:
        """The message sent to the host running its receiver, or None when
        the receiver is local or no host runs it."""
        assert self.remote is not None
        if self._lookup(message.receiver) is not None:
            return None
        host = self.remote.host_for(message.receiver)
        if host is None:
            return None
        if not message.message_id:
            message.message_id = self.new_id()
        return self.remote.submit(message, host, deadline, callback)

    def new_id(self) -> str:
        """A message id unique for this supervisor's life."""
        return f"{self._boot}-{next(self._ids)}"

    def removed(self, agent: str) -> None:
        """The agent was removed: its metrics series go with it (a new
        agent of the same name starts from zero)."""
        for key in [key for key in self._series if key[0] == agent]:
            self._series.pop(key, None)
        if self.tally is not None:
            self.tally.forget(agent)

    def forget(self, message: caxton_pb2.AgentMessage, on_room: RoomCallback) -> None:
        """Withdraw a wake-up given to offer (its caller stopped waiting)."""
        agent = self._lookup(message.receiver)
        if agent is not None:
            agent.mailbox.forget(on_room)
        if self.budget is not None:
            self.budget.forget(on_room)

    def _pending(self, agent: Agent, version: int, message: caxton_pb2.AgentMessage, deadline: Deadline,
                 callback: OutcomeCallback, retained: int = 0, held_by_caller: bool = False) -> Pending:
        if not message.message_id:
            message.message_id = self.new_id()
        pending = Pending(message, deadline, callback, retained, held_by_caller)
        series = self._series_of(agent, version)
        if series is not None:
            pending.timed(series, time.monotonic())
        return pending

    def _series_of(self, agent: Agent, version: int) -> Series | None:
        """Where the messages of `agent`'s `version` are counted (None: not
        counted)."""
        if self.tally is None:
            return None
        key = (agent.name, version)
        # A plain dict read is atomic: no lock per message on the hot path.
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self.tally.series(*key)
        return series

    def _receiver(self, message: caxton_pb2.AgentMessage) -> Agent:
        """The message's receiver, if the message may go to it."""
        agent = self._lookup(message.receiver)
        if agent is None:
            if not message.receiver:
                raise InvalidArgument("message has no receiver")
            raise NotFound(f"no agent named {message.receiver!r}")
        limit = agent.version.limits.max_message_bytes
        if len(message.content) > limit:
            raise ResourceExhausted(
                f"message of {len(message.content)} bytes exceeds agent {agent.name!r}'s max_message_bytes ({limit})"
            )
        return agent
