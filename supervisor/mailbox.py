"""Per-agent message queue: bounded, ordered, taken in batches.

Every message for an agent waits here until one of the agent's worker
instances takes it. Instances pull batches (whatever has queued up, up to a
bound), so one supervisor-to-worker round trip carries one message when the
agent is idle and hundreds under load. Pulling also spreads work across
replicas by itself: an idle instance takes the next batch.

A taker (dispatch.py's Dispatcher) never blocks here: `take` gives it a
batch, or, when there is nothing to take, keeps it as idle and wakes it
(`Taker.wake`) when the next message arrives. So an idle agent holds no
thread.

A message that has not been taken yet survives its worker's death: it stays
here for the next instance.

A mailbox is bounded in messages and, with a memory budget, in bytes: what
waits here is charged to the budget until a worker takes it (or longer, for a
caller that holds the message's bytes longer: Pending.release). A full mailbox
refuses a message, or, for a caller that would rather wait (a stream under
flow control), takes a wake-up to call when room appears.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .errors import ResourceExhausted, Unavailable
from .memory_budget import MESSAGE_OVERHEAD_BYTES, MemoryBudget, RoomCallback, mib
from .metrics import Series

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED

# How a message's outcome is delivered, exactly once: OK with the reply
# content (None for "no reply"), or an error code with its message.
OutcomeCallback = Callable[[grpc.StatusCode, str, bytes | None], None]


class ResultSink(Protocol):
    """Where the outcomes of many messages can go in one call: a callback
    with a `sink` attribute belongs to one, and a batch's replies for it are
    delivered by answers.Answers as (callback, reply) runs, in order, instead
    of calling each callback."""

    def add_replies(self, replies: Sequence[tuple[OutcomeCallback, bytes | None]]) -> None:
        ...


class Pending:
    """One accepted message waiting for its outcome.

    `callback` (an OutcomeCallback) runs exactly once. `deadline` is the
    caller's (Deadline.never() if it set none): it goes with the message to
    the worker, which stops the agent when it passes.
    """

    __slots__ = ("message", "deadline", "callback", "size", "cost", "budget", "held_by_caller", "shadow", "series",
                 "accepted", "_done")

    def __init__(self, message: caxton_pb2.AgentMessage, deadline: Deadline, callback: OutcomeCallback,
                 retained: int = 0, held_by_caller: bool = False):
        self.message = message
        self.deadline = deadline
        self.callback = callback
        self.size = len(message.content)
        # What the message is charged: its content and envelope, and what
        # its caller keeps alive beside it (`retained`).
        self.cost = self.size + retained + MESSAGE_OVERHEAD_BYTES
        # The budget it is charged to, from the mailbox's put until a worker
        # takes it; or, `held_by_caller`, until the caller calls release()
        # (a unary call holds its request until its response is sent).
        self.budget: MemoryBudget | None = None
        self.held_by_caller = held_by_caller
        # A parallel rollout's copy: what the agent sends is not delivered.
        self.shadow = False
        # Where the outcome and the time since `accepted` are counted
        # (metrics.py); None: not counted. Set by the router (timed()).
        self.series: Series | None = None
        self.accepted = 0.0
        self._done = False

    def timed(self, series: Series, accepted: float) -> None:
        """Count the outcome in `series`, timed from `accepted` (the
        monotonic clock). (Here, not in a wrapper around the callback: that
        cost another 0.2 µs a message.)"""
        self.series = series
        self.accepted = accepted

    def release(self) -> None:
        """Give the message's charge back to its budget (once)."""
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.release(self.cost)

    @property
    def done(self) -> bool:
        return self._done

    def claim(self) -> bool:
        """Take the one right to deliver the outcome: False if it was
        delivered already, or the caller stopped waiting. Whoever claims
        must deliver it (resolve() does; answers.Answers delivers many)."""
        if self._done:
            return False
        self._done = True
        return True

    def resolve(self, code: grpc.StatusCode, error: str = "", reply: bytes | None = None) -> bool:
        """Deliver the outcome; False if one was already delivered."""
        if not self.claim():
            return False
        series = self.series
        if series is not None:
            series.record(code, reply is not None, time.monotonic() - self.accepted)
        self.callback(code, error, reply)
        return True

    def cancel(self) -> None:
        """The caller stopped waiting (deadline, cancelled RPC): never deliver."""
        self._done = True


class Taker(Protocol):
    """What takes batches from a mailbox (dispatch.Dispatcher)."""

    def keep_taking(self) -> bool:
        """Whether it still takes batches; called under the mailbox's lock,
        so it must not block."""
        ...

    def wake(self) -> None:
        """It was idle and there is something to take (or to notice): run
        it again. Called without the mailbox's lock."""
        ...


class Mailbox:
    def __init__(self, limit: int):
        self.limit = limit
        self._queue: deque[Pending] = deque()
        self._lock = threading.Lock()
        self._closed_reason: str | None = None
        self._bytes = 0  # what the queued messages cost (Pending.cost), with or without a budget
        self._waiting: list[RoomCallback] = []  # wake-ups for callers waiting for room
        self._idle: deque[Taker] = deque()  # takers that found nothing to take, first come first woken
        # Set once this mailbox's lane has ended (a rollout's candidate
        # promoted or withdrawn): what it held and whatever still arrives
        # goes there, so no accepted message is stranded.
        self._forward: Mailbox | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, pending: Pending, budget: MemoryBudget | None = None, on_room: RoomCallback | None = None) -> bool:
        """Queue a message; with a budget, charge it there (and keep this
        mailbox under the budget's `queue_bytes`).

        When there is no room, raise ResourceExhausted; or, given `on_room`,
        return False and call `on_room` once (from another thread) when room
        may have appeared. A closed mailbox, and a message that could never
        fit, always raise.
        """
        with self._lock:
            forward = self._forward
            if forward is None:
                queued = self._put(pending, budget, on_room)
                taker = self._idle.popleft() if queued and self._idle else None
        if forward is not None:
            return forward.put(pending, budget, on_room)
        if taker is not None:
            taker.wake()
        return queued

    def put_many(self, pendings: list[Pending], budget: MemoryBudget | None = None) -> int:
        """Queue the longest prefix of `pendings` that fits at once (one lock
        and one budget charge for all); returns its length, maybe 0. Refuses
        nothing and registers no wake-up: whatever does not fit is for put(),
        which says why or waits."""
        with self._lock:
            if self._forward is not None or self._closed_reason is not None:
                return 0
            count = min(len(pendings), self.limit - len(self._queue))
            if count <= 0:
                return 0
            if budget is None:
                total = sum(pending.cost for pending in pendings[:count])
            else:
                # As in _put: an empty mailbox takes any message, the rest
                # stay within queue_bytes.
                room = budget.queue_bytes - self._bytes
                total = 0
                for index in range(count):
                    cost = pendings[index].cost
                    if cost > budget.limit or (total + cost > room and (index or self._queue)):
                        count = index
                        break
                    total += cost
                if count == 0 or not budget.try_charge(total):
                    return 0
                for pending in pendings[:count]:
                    pending.budget = budget
            self._bytes += total
            self._queue.extend(pendings[:count])
            # As put() would: a taker woken per message, while any is idle.
            takers = [self._idle.popleft() for _ in range(min(count, len(self._idle)))]
        for taker in takers:
            taker.wake()
        return count

    def _put(self, pending: Pending, budget: MemoryBudget | None, on_room: RoomCallback | None) -> bool:
        """put (caller holds the lock)."""
        if self._closed_reason is not None:
            raise Unavailable(self._closed_reason)
        cost = pending.cost
        if budget is not None and cost > budget.limit:
            raise ResourceExhausted(budget.exhausted_message(cost))
        if len(self._queue) >= self.limit:
            return self._no_room(f"queue full: {self.limit} messages already waiting for this agent", on_room)
        # An empty mailbox takes any message, so one bigger than
        # queue_bytes can still get through.
        if budget is not None and self._queue and self._bytes + cost > budget.queue_bytes:
            return self._no_room(f"queue full: {mib(self._bytes)} already waiting for this agent "
                                 f"(queue_bytes = {mib(budget.queue_bytes)})", on_room)
        if budget is not None:
            if not budget.try_charge(cost, on_room):
                if on_room is None:
                    raise ResourceExhausted(budget.exhausted_message(cost))
                return False
            pending.budget = budget
        self._bytes += cost
        self._queue.append(pending)
        return True

    def _no_room(self, reason: str, on_room: RoomCallback | None) -> bool:
        """(Caller holds the lock.)"""
        if on_room is None:
            raise ResourceExhausted(reason)
        self._waiting.append(on_room)
        return False

    def forget(self, on_room: RoomCallback) -> None:
        """Withdraw a wake-up registered by put (its waiter gave up)."""
        with self._lock:
            if on_room in self._waiting:
                self._waiting.remove(on_room)

    def _removed(self, taken: list[Pending] | deque[Pending]) -> None:
        """Messages have left the queue (caller holds the lock): their bytes
        go back to the budget (one for all: the router's) and waiting callers
        get their wake-ups, which only schedule work elsewhere."""
        removed = freed = 0
        budget = None
        for pending in taken:
            cost = pending.cost
            removed += cost
            if pending.budget is not None and not pending.held_by_caller:
                budget, pending.budget = pending.budget, None
                freed += cost
        self._bytes -= removed
        if budget is not None:
            budget.release(freed)
        if self._waiting:
            self._wake_waiting()

    def _wake_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for on_room in waiting:
            on_room()

    def close(self, reason: str) -> None:
        """Refuse new messages (with `reason`); queued ones stay to be taken."""
        with self._lock:
            self._closed_reason = reason
            # Waiting callers try again and learn the reason.
            self._wake_waiting()

    def reopen(self) -> None:
        with self._lock:
            self._closed_reason = None

    def forward_to(self, other: Mailbox) -> None:
        """Move every queued message to `other`, in order, and send whatever
        is put here from now on there too. Messages keep their budget charge."""
        with self._lock:
            self._forward = other
            moved = list(self._queue)
            self._queue.clear()
            self._bytes = 0
            waiting, self._waiting = self._waiting, []
            takers = self._take_idle()
        other.adopt(moved)
        for on_room in waiting:
            on_room()
        for taker in takers:
            taker.wake()

    def adopt(self, moved: list[Pending]) -> None:
        """Queue messages another mailbox had already accepted: no bound is
        checked (they were admitted once and must not be lost)."""
        if not moved:
            return
        with self._lock:
            self._queue.extend(moved)
            self._bytes += sum(p.cost for p in moved)
            takers = self._take_idle()
        for taker in takers:
            taker.wake()

    def wake_all(self) -> None:
        """Wake every idle taker, so that retiring or moved ones can notice."""
        with self._lock:
            takers = self._take_idle()
        for taker in takers:
            taker.wake()

    def _take_idle(self) -> list[Taker]:
        """(Caller holds the lock.)"""
        takers = list(self._idle)
        self._idle.clear()
        return takers

    def take(self, max_messages: int, max_bytes: int, taker: Taker) -> list[Pending] | None:
        """Take what is queued, up to the bounds, without waiting.

        Returns None if `taker.keep_taking()` is false (it must stop), or a
        batch of live messages, or an empty list after keeping `taker` as
        idle: it is woken when the next message arrives. Messages whose
        caller already gave up are dropped here, and ones whose deadline has
        passed are answered DEADLINE_EXCEEDED without reaching the agent.
        """
        handed_on: Taker | None = None
        with self._lock:
            if not taker.keep_taking():
                # It may have been woken for a message that another (live)
                # taker should now take: pass the wake-up on.
                if self._queue and self._idle:
                    handed_on = self._idle.popleft()
                batch = None
            else:
                batch = self._take_live(max_messages, max_bytes)
                if not batch:
                    self._idle.append(taker)
        if handed_on is not None:
            handed_on.wake()
        return batch

    def _take_live(self, max_messages: int, max_bytes: int) -> list[Pending]:
        """(Caller holds the lock.)"""
        batch: list[Pending] = []
        removed: list[Pending] = []
        size = 0
        queue = self._queue
        while queue and len(batch) < max_messages:
            pending = queue[0]
            if batch and size + pending.size > max_bytes:
                break
            queue.popleft()
            removed.append(pending)
            if pending.done:
                continue
            if pending.deadline.expired():
                pending.resolve(DEADLINE_EXCEEDED, "deadline passed while the message was queued")
                continue
            batch.append(pending)
            size += pending.size
        if removed:
            self._removed(removed)
        return batch

    def fail_all(self, code: grpc.StatusCode, reason: str) -> int:
        """Answer every queued message with an error; returns how many."""
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            self._removed(queued)
        failed = 0
        for pending in queued:
            failed += pending.resolve(code, reason)
        return failed
