"""The request gate: unary requests are read from the network a few at a time.

The asyncio server reads a unary call's request before its handler runs, and
every call arriving at once would be read at once: three hundred 1 MiB Sends,
or eight 60 MiB modules, would sit in memory together before any handler
could refuse them. This server interceptor runs before the read: a call
waits for a slot of its gate, and gives the slot back as soon as its request
has been read (and parsed), so that what is being received at any moment is
bounded by the gates' slots; a call still waiting has cost nothing but its
HTTP/2 stream window (64 KiB, server.py). Once read, a request is the memory
budget's business (mailboxes for messages, api.py for modules).

A large request can keep its slot until its call ends (`hold_from`): large
modules then take turns for the whole of their validation, instead of the
next one being read, and refused, while one is still at work. A gate may
bound the wait for a slot (`wait_s`); a call that waited that long is
answered RESOURCE_EXHAUSTED, its request read but never parsed.

The size of the request as received is kept for the handler
(`request_bytes`), which charges it to the budget without measuring the
parsed message again.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

# A slot comes back at the latest this long after it was taken for a read,
# so that a client that trickles its request cannot hold one forever.
_READ_TIMEOUT_S = 30.0

_request_bytes: contextvars.ContextVar[int] = contextvars.ContextVar("request_bytes", default=-1)


def request_bytes() -> int:
    """The size of the current call's request as it was received; -1 when
    it did not pass through a gate."""
    return _request_bytes.get()


@dataclass
class Gate:
    """`slots` calls read at once, in arrival order. A request of at least
    `hold_from` bytes keeps its slot until its call ends (None: every slot
    comes back once the request is read). A call that waits `wait_s` for a
    slot is refused with `busy` (None: it waits as long as its deadline)."""

    slots: int
    hold_from: int | None = None
    wait_s: float | None = None
    busy: str = ""

    def __post_init__(self) -> None:
        # Created on first use, on the event loop.
        self._semaphore: asyncio.Semaphore | None = None

    async def enter(self) -> Callable[..., None] | None:
        """Wait for a slot; returns the function that gives it back (any
        number of calls, one release), or None after `wait_s`."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        semaphore = self._semaphore
        try:
            async with asyncio.timeout(self.wait_s):
                await semaphore.acquire()
        except TimeoutError:
            return None
        held = True

        def leave(*_: object) -> None:
            nonlocal held
            if held:
                held = False
                semaphore.release()

        return leave


class RequestGate(grpc.aio.ServerInterceptor):
    """Gates unary calls by method (full method names, e.g.
    "/caxton.v1.Messaging/Send"); calls of other methods pass at once."""

    def __init__(self, gates: Mapping[str, Gate]) -> None:
        self._gates = dict(gates)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        gate = self._gates.get(handler_call_details.method)
        if gate is None or handler is None or handler.request_streaming:
            return handler
        leave = await gate.enter()
        if leave is None:
            return _refusal(handler, gate.busy)
        # Interceptors run in the call's own task: whatever becomes of the
        # call (refused, cancelled while reading), its end frees the slot.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(leave)
        read_timer = asyncio.get_running_loop().call_later(_READ_TIMEOUT_S, leave)
        parse = handler.request_deserializer

        def deserialize(raw: bytes) -> Any:
            read_timer.cancel()
            try:
                _request_bytes.set(len(raw))
                return parse(raw) if parse is not None else raw
            finally:
                if gate.hold_from is None or len(raw) < gate.hold_from:
                    leave()

        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        return _handler(handler, behavior, deserialize)


def _refusal(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """`handler` answering RESOURCE_EXHAUSTED; its request is not parsed."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        context.set_details(details)

    return _handler(handler, refuse, None)


def _handler(like: grpc.RpcMethodHandler, behavior: Any, deserialize: Callable[[bytes], Any] | None
             ) -> grpc.RpcMethodHandler:
    """A unary-request handler of the same shape as `like`."""
    make = grpc.unary_stream_rpc_method_handler if like.response_streaming else grpc.unary_unary_rpc_method_handler
    return make(behavior, request_deserializer=deserialize, response_serializer=like.response_serializer)
