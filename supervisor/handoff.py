"""Handoff from threads to coroutines: how something that happens on a
supervisor thread (a dispatcher answering a message, an event published, a
mailbox making room) reaches a coroutine waiting on the API's event loop.

A waiting coroutine holds no thread: it awaits a future that the thread
settles through `loop.call_soon_threadsafe`. Once the loop has closed (the
server has stopped) there is nobody left to tell, and the handoff is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """Run `callback(*args)` on `loop`, from any thread."""
    if asyncio._get_running_loop() is loop:
        # Already on it (a batch delivered from the loop, dispatch.py): no
        # need to write to the loop's self-pipe to wake it.
        loop.call_soon(callback, *args)
        return
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass  # the loop is closed


def _settle(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: object) -> None:
    """Give `future` its result, from any thread (a no-op if it is done or
    cancelled: its waiter gave up)."""
    call_soon(loop, _settle, future, value)


class Wakeup:
    """A one-shot signal from any thread to one coroutine: call it to wake
    the coroutine awaiting `wait()`. Calls after the first do nothing."""

    __slots__ = ("_loop", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()

    def __call__(self) -> None:
        resolve(self._loop, self._future, None)

    async def wait(self) -> None:
        """Until woken (or cancelled)."""
        await self._future
