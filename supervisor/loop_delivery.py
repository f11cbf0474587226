"""Loop delivery: a worker instance's batches sent from the API's event loop.

A client's message arrives on the API loop (api_server.py). Handed to a
dispatch pool thread for a blocking call, and its answer handed back to the
loop, it costs two thread wake-ups; measured on this 2-core host, about
110 µs of a 1 ms round trip. So when the loop wakes an idle dispatcher
(dispatch.py), the loop takes the batch itself and awaits the worker over a
grpc.aio channel of its own: loop -> worker -> loop.

Only the common case finishes on the loop, because the loop must never
block: a batch whose call failed (telling how the worker died may wait for
its exit) or whose agent sent messages (relaying may reach another host) is
finished on a pool thread, exactly as the thread path would have finished it.

Batches from the loop go over one HandleStream per worker, kept open: a
batch on an open stream costs the worker about 70 µs of CPU against 170 µs
for a call of its own, and answers in 150 µs against 280 µs (measured on
this host with bare grpc servers). The dispatcher sends a batch only once
the previous one is answered, so the stream is a strict conversation. A
failed exchange ends the stream; the next batch opens a new one.

grpc.aio binds a channel to the loop it is opened on, so this channel is
opened on the API loop and closed there. A spare's is opened and connected
while it waits (`connect_ahead`, from the spare pool's thread), so the
first message after a deploy goes from the loop at once; otherwise it is
opened lazily, and until it is connected batches go by the pool thread and
the worker's own warm channel (`ready()`): a message never waits for a
connect.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.internal.v1 import worker_pb2, worker_pb2_grpc

from .dispatch import Delivered
from .handoff import call_soon
from .intake import OutcomeCount
from .mailbox import Pending
from .worker_client import HANDLING, WorkerCallError, handle_request, translated

if TYPE_CHECKING:
    from .instance import WorkerInstance

_READY = grpc.ChannelConnectivity.READY
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Connected:
    """An API-loop channel to a spare, connected, with its HandleStream
    open (the worker's handler waits for the first batch)."""

    channel: grpc.aio.Channel
    stream: grpc.aio.StreamStreamCall
    loop: asyncio.AbstractEventLoop

    def close(self) -> None:
        """From any thread: close it on its loop (a spare discarded)."""
        call_soon(self.loop, _close_channel, self.loop, self.channel)


def connect_ahead(socket_path: str, loop: asyncio.AbstractEventLoop, timeout: float) -> Connected | None:
    """(From a thread other than the loop's; blocks.) The API loop's channel
    to a new worker, connected: the connect and the HTTP/2 handshake, about
    0.7 ms of a deploy's first message, paid while the worker is a spare.
    None if it did not connect within `timeout` or the loop has ended: the
    instance then opens its own when it needs it."""
    try:
        future = asyncio.run_coroutine_threadsafe(_connected(f"unix:{socket_path}"), loop)
    except RuntimeError:
        return None  # the loop is closed
    try:
        channel, stream = future.result(timeout)
    except Exception:
        future.cancel()  # _connected closes what it opened
        return None
    return Connected(channel, stream, loop)


async def _connected(target: str) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
    channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
    try:
        await channel.channel_ready()
        stream = worker_pb2_grpc.WorkerStub(channel).HandleStream()
        # Until the worker has taken the call: a first batch written before
        # would pay for the call's start after all.
        await stream.wait_for_connection()
    except BaseException:
        await channel.close()
        raise
    return channel, stream


def _close_channel(loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
    loop.create_task(channel.close())


class LoopChannel:
    """The API loop's channel to one worker and its open HandleStream
    (opened and used on the loop)."""

    def __init__(self, socket_path: str, loop: asyncio.AbstractEventLoop, ahead: Connected | None = None):
        """`ahead`: a channel to the worker already connected on `loop`,
        with its stream open (a spare's), used until it is let go."""
        self._target = f"unix:{socket_path}"
        self._loop = loop
        self._channel: grpc.aio.Channel | None = None
        self._stub: worker_pb2_grpc.WorkerStub | None = None
        self._stream: grpc.aio.StreamStreamCall | None = None
        self._closed = False
        self._busy = False  # a batch is on the stream
        if ahead is not None and ahead.loop is loop:
            self._channel, self._stream = ahead.channel, ahead.stream
            self._stub = worker_pb2_grpc.WorkerStub(ahead.channel)
        elif ahead is not None:
            ahead.close()

    def ready(self) -> bool:
        """Connected now; if not, start connecting (on the loop)."""
        if self._closed:
            return False
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=_OPTIONS)
            self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        return self._channel.get_state(try_to_connect=True) is _READY

    async def handle(self, request: worker_pb2.HandleRequest, timeout: float | None) -> worker_pb2.HandleResponse:
        """One batch over the stream; raises WorkerCallError (timed_out if
        no answer came within `timeout`), after which the stream is gone."""
        self._busy = True
        try:
            with translated(HANDLING):
                stream = self._stream
                if stream is None:
                    if self._closed:  # the instance is retiring
                        raise WorkerCallError(HANDLING, "the worker's channel is closed", timed_out=False)
                    self.ready()  # opens the channel again if it was let go (rest())
                    assert self._stub is not None
                    stream = self._stream = self._stub.HandleStream()
                async with asyncio.timeout(timeout):
                    await stream.write(request)
                    response = await stream.read()
        except TimeoutError as exc:
            self.end_stream()
            raise WorkerCallError(HANDLING, "no answer in time", timed_out=True) from exc
        except asyncio.InvalidStateError as exc:
            # grpc.aio's refusal to write on a call that has already ended.
            self.end_stream()
            raise WorkerCallError(HANDLING, "the stream to the worker had ended", timed_out=False) from exc
        except BaseException:
            self.end_stream()
            raise
        finally:
            self._busy = False
        if not isinstance(response, worker_pb2.HandleResponse):  # grpc.aio.EOF
            self.end_stream()
            raise WorkerCallError(HANDLING, "the worker ended the stream", timed_out=False)
        return response

    def end_stream(self) -> None:
        """(On the loop.) Cancel the stream; the next batch opens another."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    def rest(self) -> None:
        """From any thread: the worker was parked; let the stream and the
        channel go (together about 57 KiB of the supervisor's memory: at
        2,500 agents, 118 KiB per agent while kept, 69 once let go). The next
        batch opens them again, and goes by a pool thread meanwhile. A batch
        on the stream when this runs keeps them: its worker is awake."""
        call_soon(self._loop, self._rest)

    def _rest(self) -> None:
        if not self._busy:
            self._let_go()

    def close(self) -> None:
        """From any thread: no more batches; the stream ends and the channel
        closes on the loop. Called before the worker is shut down, whose
        server would otherwise wait for the open stream."""
        call_soon(self._loop, self._close)

    def _close(self) -> None:
        self._closed = True
        self._let_go()

    def _let_go(self) -> None:
        self.end_stream()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            _close_channel(self._loop, channel)


class LoopDelivery:
    """dispatch.LoopDelivery for one worker instance."""

    def __init__(self, instance: WorkerInstance, loop: asyncio.AbstractEventLoop, ahead: Connected | None = None):
        self._instance = instance
        self.channel = LoopChannel(instance.process.socket_path, loop, ahead)

    def ready(self) -> bool:
        return self.channel.ready()

    async def deliver(self, batch: list[Pending]) -> Delivered:
        instance = self._instance
        on_result = instance.on_result
        try:
            with instance.running_agent_code():
                request = handle_request([p.message for p in batch], [p.deadline for p in batch])
                response = await self.channel.handle(request, instance.hang_bound(batch).timeout())
        except WorkerCallError as exc:
            return functools.partial(instance.batch_failed, batch, exc, on_result)
        except asyncio.CancelledError:
            # Only when the loop itself ends, with the batch in the worker.
            return functools.partial(instance.batch_failed, batch,
                                     WorkerCallError(HANDLING, "the supervisor is stopping", timed_out=False),
                                     on_result)
        except Exception:
            return instance.internal_error(batch, on_result)
        results = response.results
        try:
            answered = instance.answer(batch, results, on_result, stop_at_sends=True, plain=response.plain)
        except Exception:
            return instance.internal_error(batch, on_result)
        if answered < len(batch):
            return functools.partial(_answer_rest, instance, batch, results, on_result, answered)
        return True


def _answer_rest(instance: WorkerInstance, batch: list[Pending], results: Sequence[worker_pb2.HandleResult],
                 on_result: OutcomeCount, start: int) -> bool:
    """(On a pool thread.) The rest of a batch whose agent sent messages."""
    try:
        instance.answer(batch, results, on_result, start)
    except Exception:
        return instance.internal_error(batch, on_result)
    return True
