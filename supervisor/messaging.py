"""The Messaging service (caxton.v1): Send and SendStream onto the Router.

No thread waits for a message: Send submits through the Router and awaits a
future that the dispatcher thread settles (handoff.py). Unary Send fails fast
with RESOURCE_EXHAUSTED when the receiver's mailbox or the memory budget is
full; a stream waits instead, which is flow control end to end:

- a stream reads its client's requests only while it has room: fewer than
  WINDOW_MESSAGES messages without a written result, and fewer than
  WINDOW_BYTES held for it (requests not yet answered, results not yet
  written). A client that stops reading its results is not read from either:
  backpressure, not buffering.
- a frame's messages go to their mailboxes a receiver at a time, each
  receiver's in the frame's order, in one step where they fit (one lookup,
  one lock, one budget charge: Router.offer_many); the order between
  different receivers is not kept, as it never was once they ran.
- when a receiver's mailbox or the memory budget is full, the stream waits
  for room and reads nothing meanwhile; HTTP/2 flow control then slows the
  client's writes.
- results are written as they come, whatever has accumulated as one frame
  (up to FRAME_BYTES), so frames grow with load exactly like the batches do;
  a write waits while the client is not reading.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc

from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .api import deadline_of, translate_errors
from .auth import Authorizer, Principal, bound_sender, sender_name
from .deadline import Deadline
from .errors import CaxtonError, MessageFailed
from .handoff import call_soon, resolve
from .mailbox import OutcomeCallback
from .memory_budget import MESSAGE_OVERHEAD_BYTES, MemoryBudget
from .request_gate import request_bytes
from .router import Router

_OK = grpc.StatusCode.OK

# A stream's room (see the module docstring). 4096 messages keep 16 full
# batches per stream on their way; 16 MiB keeps a stream of 1 MiB messages
# as busy as its agent can be, and bounds what a client that never reads
# can make the supervisor hold.
WINDOW_MESSAGES = 4096
WINDOW_BYTES = 16 << 20
# Results per response frame, by size (a frame must stay far below the
# gRPC message limit).
FRAME_BYTES = 4 << 20
# Results waiting to be written are charged to the budget in steps of this
# much, not one by one (a lock per message): what a stream holds uncharged
# stays under it.
CHARGE_STEP_BYTES = 64 << 10
# What a unary call costs while it waits, beside its message: its state in
# grpc.aio and here (measured: 15 KB each with 8,000 Sends queued).
UNARY_CALL_BYTES = 16 << 10
# A stream waiting for room looks again this often even without a wake-up,
# so a wake-up lost in a race costs at most this, never a stuck stream.
ROOM_RECHECK_S = 1.0


def fill_reply_envelope(envelope: caxton_pb2.AgentMessage, request: caxton_pb2.AgentMessage, content: bytes) -> None:
    """The FIPA-ACL envelope around an agent's reply to `request`, written
    into a message already in its place in the response: building it apart
    and passing it in would copy it."""
    envelope.performative = caxton_pb2.PERFORMATIVE_INFORM
    envelope.sender = request.receiver
    envelope.receiver = request.sender
    envelope.conversation_id = request.conversation_id
    envelope.in_reply_to = request.reply_with or request.message_id
    envelope.content = content


# A frame's messages by receiver: (messages, their outcome callbacks).
_Groups = dict[str, tuple[list[caxton_pb2.AgentMessage], list[OutcomeCallback]]]


class _Frame:
    """A response frame being filled with results, and what they cost."""

    __slots__ = ("response", "add", "cost", "charged", "count")

    def __init__(self) -> None:
        self.response = caxton_pb2.SendStreamResponse()
        self.add = self.response.results.add
        self.cost = 0
        self.charged = 0  # of `cost`, what is charged to the budget
        self.count = 0


def _settle_outcome(loop: asyncio.AbstractEventLoop, future: asyncio.Future,
                    code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
    resolve(loop, future, (code, error, reply))


class MessagingService(caxton_pb2_grpc.MessagingServicer):
    def __init__(self, router: Router, authorizer: Authorizer):
        self._router = router
        self._authorizer = authorizer

    def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """Who calls (the interceptor has already let the call in): the
        messages' sender is bound to it (auth.bound_sender)."""
        return self._authorizer.authenticate(context.invocation_metadata() or ())

    @translate_errors
    async def Send(self, request, context):
        message = request.message
        message.sender = bound_sender(self._principal(context), message.sender)
        if message.hops:
            message.hops = 0  # set by the supervisor: an outside message starts a chain
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()
        # The call holds its request (as received and as parsed) until its
        # response has been sent, and the reply from then on: both stay
        # charged to the budget until the call has ended.
        pending = self._router.submit(message, deadline_of(context), functools.partial(_settle_outcome, loop, outcome),
                                      retained=max(request_bytes(), 0) + UNARY_CALL_BYTES, held_by_caller=True)
        budget = self._router.budget
        reply_cost = 0

        def ended(_: object) -> None:
            pending.release()
            if reply_cost and budget is not None:
                budget.release(reply_cost)

        # The call's own task ends once the response is sent. (Not
        # context.add_done_callback: its callback list would tie the call's
        # state, and the request with it, into a cycle only the garbage
        # collector frees.)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(ended)
        try:
            code, error, reply = await outcome
        except asyncio.CancelledError:
            # The caller's deadline passed or it went away: gRPC cancels us.
            pending.cancel()
            raise
        if code is not _OK:
            raise MessageFailed(code, error)
        if reply is None:
            return caxton_pb2.SendResponse(has_reply=False)
        if budget is not None:
            reply_cost = 2 * len(reply)  # the response, and its serialized bytes
            budget.charge(reply_cost)
        response = caxton_pb2.SendResponse(has_reply=True)
        fill_reply_envelope(response.reply, message, reply)
        return response

    @translate_errors
    async def SendStream(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        stream = SendStreamFlow(self._router, loop, deadline_of(context), self._principal(context))
        reader = loop.create_task(stream.read(request_iterator))
        try:
            await stream.write(context)
            await reader  # a reader that failed fails the call, once every accepted message is answered
        finally:
            reader.cancel()


class _StreamItem:
    """One message of a stream, as its OutcomeCallback: the result's id,
    the message (for the reply's envelope) and what it held. `sink` makes a
    batch's replies go to the stream in runs (answers.py)."""

    __slots__ = ("sink", "item_id", "message", "size")

    def __init__(self, sink: SendStreamFlow, item_id: int, message: caxton_pb2.AgentMessage, size: int):
        self.sink = sink
        self.item_id = item_id
        self.message = message
        self.size = size

    def __call__(self, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        self.sink._add_results(((self, code, error, reply),))


class SendStreamFlow:
    """One SendStream call: a reader coroutine that accepts the client's
    messages while the stream has room, and the writer (the call's own
    coroutine) that writes results as they come. Results are added by the
    dispatcher threads, under the lock; everything else runs on the loop."""

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, deadline: Deadline,
                 principal: Principal):
        self._router = router
        self._sender = sender_name(principal)  # every message's sender (None: as the message says)
        self._budget: MemoryBudget | None = router.budget
        self._loop = loop
        self._deadline = deadline
        self._lock = threading.Lock()
        # Results not written yet, in frames of up to FRAME_BYTES, each
        # result built in place in its frame (under the lock).
        self._frames: deque[_Frame] = deque()
        self._writer_waiting: asyncio.Future | None = None  # (under the lock)
        # What the stream holds, in two halves so that neither side locks per
        # message: bytes of messages read minus results written (loop only),
        # and results' costs minus their messages' (under the lock).
        self._held_by_reading = 0
        self._held_by_results = 0
        self._open = 0  # messages read whose result is not written yet (loop only)
        self._reading = True  # (loop only)
        self._reader_waiting: asyncio.Future | None = None  # (loop only)

    # ------------------------------------------------------------ reading

    async def read(self, requests: AsyncIterator[caxton_pb2.SendStreamRequest]) -> None:
        try:
            async for request in requests:
                items = request.items
                start = 0
                while start < len(items):
                    while not self._has_room():
                        await self._reader_wait()
                    start, groups = self._take_in(items, start)
                    for messages, callbacks in groups.values():
                        await self._offer_group(messages, callbacks)
        finally:
            self._reading = False
            self._wake_writer()

    def _take_in(self, items: Sequence[caxton_pb2.StreamItem], start: int) -> tuple[int, _Groups]:
        """Count the frame's messages from `start` into the stream's window,
        while it has room, grouped by receiver (each group in the frame's
        order: a receiver's messages keep theirs). Returns where it stopped
        and the groups."""
        groups: _Groups = {}
        sender = self._sender
        opened, held = self._open, self._held_by_reading
        # What results already hold is read once a frame: it only grows
        # meanwhile, on other threads, and the window is no exact bound.
        room_bytes = WINDOW_BYTES - self._held_by_results
        index = start
        while index < len(items):
            item = items[index]
            index += 1
            message = item.message
            if sender is not None:
                message.sender = sender
            if message.hops:
                message.hops = 0  # set by the supervisor: an outside message starts a chain
            size = len(message.content)
            opened += 1
            held += size
            receiver = message.receiver
            group = groups.get(receiver)
            if group is None:
                group = groups[receiver] = ([], [])
            group[0].append(message)
            group[1].append(_StreamItem(self, item.id, message, size))
            if opened >= WINDOW_MESSAGES or held >= room_bytes:
                break
        self._open, self._held_by_reading = opened, held
        return index, groups

    async def _offer_group(self, messages: list[caxton_pb2.AgentMessage], callbacks: list[OutcomeCallback]) -> None:
        """Offer one receiver's messages, in order: as many as go in at once
        together (Router.offer_many), the next one alone (which says why it
        did not, or waits for room), and so on."""
        done = 0
        while done < len(messages):
            done += self._router.offer_many(messages[done:], self._deadline, callbacks[done:])
            if done == len(messages):
                return
            message = messages[done]
            while not self._offer(message, callbacks[done]):
                try:
                    await self._reader_wait(ROOM_RECHECK_S)
                except asyncio.CancelledError:
                    self._router.forget(message, self._room)
                    raise
            done += 1

    def _has_room(self) -> bool:
        return self._open < WINDOW_MESSAGES and self._held_by_reading + self._held_by_results < WINDOW_BYTES

    def _offer(self, message: caxton_pb2.AgentMessage, on_result: OutcomeCallback) -> bool:
        """False when there is no room for the message yet (a wake-up is
        registered); True when it was accepted, or refused with its result."""
        try:
            return self._router.offer(message, self._deadline, on_result, self._room) is not None
        except CaxtonError as exc:
            on_result(exc.code, exc.message, None)
            return True

    def _room(self) -> None:
        """A mailbox or the budget has room again (any thread)."""
        call_soon(self._loop, self._wake_reader)

    def _wake_reader(self) -> None:
        waiting, self._reader_waiting = self._reader_waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _reader_wait(self, recheck_s: float | None = None) -> None:
        waiting = self._reader_waiting = self._loop.create_future()
        timer = self._loop.call_later(recheck_s, self._wake_reader) if recheck_s is not None else None
        try:
            await waiting
        finally:
            if timer is not None:
                timer.cancel()

    # ------------------------------------------------------------ results

    def add_replies(self, replies: Sequence[tuple[OutcomeCallback, bytes | None]]) -> None:
        """OK outcomes of many of this stream's messages (any thread), as
        its ResultSink: added under one lock (answers.py)."""
        items = cast("Sequence[tuple[_StreamItem, bytes | None]]", replies)  # this stream's, by the sink's contract
        self._add_results([(item, _OK, "", reply) for item, reply in items])

    def _add_results(self, outcomes: Sequence[tuple[_StreamItem, grpc.StatusCode, str, bytes | None]]) -> None:
        """Messages' outcomes (any thread), each built in place in the
        frame being filled."""
        charge = 0
        with self._lock:
            frames = self._frames
            for item, code, error, reply in outcomes:
                cost = len(reply or error) + MESSAGE_OVERHEAD_BYTES
                frame = frames[-1] if frames and frames[-1].cost < FRAME_BYTES else None
                if frame is None:
                    frame = _Frame()
                    frames.append(frame)
                result = frame.add(id=item.item_id)
                if code is not _OK:
                    result.code = code.value[0]
                    result.error = error
                elif reply is not None:
                    fill_reply_envelope(result.reply, item.message, reply)
                    result.has_reply = True
                frame.cost += cost
                frame.count += 1
                # Held already, so never refused; charged, it holds back new
                # charges (this stream's and everyone's) until it is written.
                if frame.cost - frame.charged >= CHARGE_STEP_BYTES:
                    charge += frame.cost - frame.charged
                    frame.charged = frame.cost
                self._held_by_results += cost - item.size
            waiting, self._writer_waiting = self._writer_waiting, None
        if charge and self._budget is not None:
            self._budget.charge(charge)
        if waiting is not None:
            resolve(self._loop, waiting, None)

    def _wake_writer(self) -> None:
        """(On the loop.)"""
        with self._lock:
            waiting, self._writer_waiting = self._writer_waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def write(self, context: grpc.aio.ServicerContext) -> None:
        """Write results until the client has finished sending and every
        message it sent has its result written."""
        while True:
            waiting = None
            with self._lock:
                frame = self._frames.popleft() if self._frames else None
                if frame is None:
                    if not self._reading and self._open == 0:
                        return
                    waiting = self._writer_waiting = self._loop.create_future()
            if frame is None:
                assert waiting is not None
                await waiting
                continue
            await context.write(frame.response)
            self._open -= frame.count
            self._held_by_reading -= frame.cost
            if self._budget is not None and frame.charged:
                self._budget.release(frame.charged)
            self._wake_reader()
