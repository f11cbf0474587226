"""A batch's replies, delivered in runs.

A worker answers a batch of up to hundreds of messages at once, and the
supervisor used to deliver each message's outcome on its own: a callback
call, a metrics record (a lock and a bucket search), and for a SendStream a
lock of the stream per message. Where consecutive messages of the batch go
to the same `ResultSink` (a stream's results) and were accepted together
into the same metrics series (a stream's frame), `Answers` hands the sink
the whole run in one call and records the run once. Measured streaming to
echo agents (three pairs with the code before, bench/README.md): the
supervisor's CPU per message 8.27-8.45 µs against 8.79-9.28 with 8 agents,
5.32 against 6.08-6.10 with one.

Only OK results go this way; an error, or a reply whose agent sent messages,
is delivered on its own by the caller, after `flush()` so that a sink sees
its messages' outcomes in the batch's order.
"""

from __future__ import annotations

import time

from .mailbox import OutcomeCallback, Pending, ResultSink
from .metrics import Series


class Answers:
    """The OK outcomes of one batch, gathered per run and delivered by
    `flush()`, which the caller must reach (a `finally`): a message claimed
    here is delivered nowhere else."""

    __slots__ = ("_now", "_sink", "_replies", "_series", "_accepted", "_replied", "_no_reply")

    def __init__(self) -> None:
        # One clock reading for the batch: its messages were answered
        # together, microseconds apart.
        self._now = time.monotonic()
        self._sink: ResultSink | None = None
        self._replies: list[tuple[OutcomeCallback, bytes | None]] = []
        self._series: Series | None = None
        self._accepted = 0.0
        self._replied = 0
        self._no_reply = 0

    def add(self, pending: Pending, reply: bytes | None) -> bool:
        """Take `pending`'s OK outcome into the current run; False if its
        callback has no sink (the caller resolves it itself)."""
        callback = pending.callback
        sink: ResultSink | None = getattr(callback, "sink", None)
        if sink is None:
            return False
        if not pending.claim():
            return True  # its caller stopped waiting: nothing to deliver
        series = pending.series
        if series is not None:
            if series is not self._series or pending.accepted != self._accepted:
                self._record()
                self._series, self._accepted = series, pending.accepted
            if reply is None:
                self._no_reply += 1
            else:
                self._replied += 1
        if sink is not self._sink:
            self._deliver()
            self._sink = sink
        self._replies.append((callback, reply))
        return True

    def flush(self) -> None:
        """Deliver and record everything taken so far."""
        self._deliver()
        self._record()

    def _deliver(self) -> None:
        if self._replies:
            assert self._sink is not None
            replies, self._replies = self._replies, []
            self._sink.add_replies(replies)

    def _record(self) -> None:
        if self._series is not None and (self._replied or self._no_reply):
            self._series.record_replies(self._replied, self._no_reply, self._now - self._accepted)
        self._replied = self._no_reply = 0
