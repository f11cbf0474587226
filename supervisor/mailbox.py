"""Per-agent message queue: bounded, ordered, taken in batches.

Every message for an agent waits here until one of the agent's worker
instances takes it. Instances pull batches (whatever has queued up, up to a
bound), so one supervisor-to-worker round trip carries one message when the
agent is idle and hundreds under load. Pulling also spreads work across
replicas by itself: an idle instance takes the next batch.

A message that has not been taken yet survives its worker's death: it stays
here for the next instance.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import grpc

from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .errors import ResourceExhausted, Unavailable

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED

# How a message's outcome is delivered, exactly once: OK with the reply
# content (None for "no reply"), or an error code with its message.
OutcomeCallback = Callable[[grpc.StatusCode, str, bytes | None], None]


class Pending:
    """One accepted message waiting for its outcome.

    `callback` (an OutcomeCallback) runs exactly once. `deadline` is the
    caller's (Deadline.never() if it set none): it goes with the message to
    the worker, which stops the agent when it passes.
    """

    __slots__ = ("message", "deadline", "callback", "size", "_done")

    def __init__(self, message: caxton_pb2.AgentMessage, deadline: Deadline, callback: OutcomeCallback):
        self.message = message
        self.deadline = deadline
        self.callback = callback
        self.size = len(message.content)
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def resolve(self, code: grpc.StatusCode, error: str = "", reply: bytes | None = None) -> bool:
        """Deliver the outcome; False if one was already delivered."""
        if self._done:
            return False
        self._done = True
        self.callback(code, error, reply)
        return True

    def cancel(self) -> None:
        """The caller stopped waiting (deadline, cancelled RPC): never deliver."""
        self._done = True


class Mailbox:
    def __init__(self, limit: int):
        self.limit = limit
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._closed_reason: str | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, pending: Pending) -> None:
        with self._cond:
            if self._closed_reason is not None:
                raise Unavailable(self._closed_reason)
            if len(self._queue) >= self.limit:
                raise ResourceExhausted(f"queue full: {self.limit} messages already waiting for this agent")
            self._queue.append(pending)
            self._cond.notify()

    def close(self, reason: str) -> None:
        """Refuse new messages (with `reason`); queued ones stay to be taken."""
        with self._cond:
            self._closed_reason = reason

    def reopen(self) -> None:
        with self._cond:
            self._closed_reason = None

    def wake_all(self) -> None:
        """Wake every waiting taker, so that retiring ones can notice."""
        with self._cond:
            self._cond.notify_all()

    def take_batch(self, max_messages: int, max_bytes: int, keep_waiting: Callable[[], bool]) -> list[Pending]:
        """Wait for at least one live message, then take what is queued.

        Returns an empty list once `keep_waiting()` turns false. Messages
        whose caller already gave up are dropped here, and ones whose deadline
        has passed are answered DEADLINE_EXCEEDED without reaching the agent.
        """
        with self._cond:
            while True:
                while not self._queue:
                    if not keep_waiting():
                        return []
                    self._cond.wait()
                if not keep_waiting():
                    # We may have consumed the notify meant for a message
                    # that another (live) taker should now take: pass it on.
                    self._cond.notify()
                    return []
                batch: list[Pending] = []
                size = 0
                queue = self._queue
                while queue and len(batch) < max_messages:
                    pending = queue[0]
                    if batch and size + pending.size > max_bytes:
                        break
                    queue.popleft()
                    if pending.done:
                        continue
                    if pending.deadline.expired():
                        pending.resolve(DEADLINE_EXCEEDED, "deadline passed while the message was queued")
                        continue
                    batch.append(pending)
                    size += pending.size
                if batch:
                    return batch

    def fail_all(self, code: grpc.StatusCode, reason: str) -> int:
        """Answer every queued message with an error; returns how many."""
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
        failed = 0
        for pending in queued:
            failed += pending.resolve(code, reason)
        return failed
