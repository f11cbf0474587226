"""The launcher thread: one long-lived thread that starts processes and
watches descriptors, timers and requests in a single selector.

Starting processes here matters: the kernel sends a child its parent-death
signal when the *thread* that forked it exits, so nothing may be forked from
short-lived RPC threads; other threads hand the start over with `call`.
Exits are watched through pidfds registered here (`add_reader`), so an exit
is seen the moment it happens, for a thousand workers without a thousand
waiting threads. Timers (`call_later`) let a restart wait without sleeping.

Everything that runs on this thread must be quick: reaping, a fork, a
bookkeeping step. Anything that may block goes to a CallbackThread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

log = logging.getLogger("caxton.launcher")

T = TypeVar("T")


class Timer:
    """A pending `call_later`; cancel() before it is due and it never runs."""

    def __init__(self, when: float, action: Callable[[], None]):
        self.when = when
        self.action = action
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LauncherThread:
    def __init__(self, name: str = "launcher"):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._readers: dict[int, Callable[[], None]] = {}
        self._requests: deque[tuple[Callable[[], object], Future | None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ any thread

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, action: Callable[[], T], timeout: float) -> T:
        """Run `action` on the launcher thread and return its result (or
        raise its exception). Raises TimeoutError if that takes longer than
        `timeout`. Called on the launcher thread, it runs at once."""
        if self.on_thread():
            return action()
        future: Future = Future()
        self._requests.append((action, future))
        self._wake()
        try:
            return future.result(timeout)
        except FutureTimeout:
            # Not run yet: it never will be. Already running: it ends on the
            # launcher thread, and whatever it made is watched there.
            future.cancel()
            raise TimeoutError(f"the launcher thread did not run the request within {timeout:.1f}s") from None

    def call_soon(self, action: Callable[[], None]) -> None:
        """Run `action` on the launcher thread without waiting for it."""
        self._requests.append((action, None))
        self._wake()

    def stop(self, timeout: float) -> None:
        """End the loop after the requests already queued; wait up to `timeout`."""
        self._stopping = True
        self._wake()
        if not self.on_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------ launcher thread only

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever `fd` is readable, until remove_reader."""
        self._check_thread()
        self._selector.register(fd, selectors.EVENT_READ, callback)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        """Stop watching `fd` (a no-op if it is not watched). Do this before
        closing it: the selector must never hold a closed descriptor."""
        self._check_thread()
        if self._readers.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def call_later(self, delay_s: float, action: Callable[[], None]) -> Timer:
        """Run `action` on this thread after `delay_s` seconds."""
        self._check_thread()
        timer = Timer(time.monotonic() + delay_s, action)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    # ------------------------------------------------------------ the loop

    def _check_thread(self) -> None:
        if not self.on_thread():
            raise RuntimeError("only the launcher thread may do this")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _loop(self) -> None:
        while not self._stopping:
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            for key, _ in self._selector.select(timeout):
                if key.fd == self._wake_r:
                    self._drain_wake_pipe()
                    continue
                # An earlier callback of this same round may have stopped
                # watching this descriptor (a fork server's pidfd and control
                # socket become readable together when it dies), and even
                # reused its number for a new one that is not readable yet.
                callback = self._readers.get(key.fd)
                if callback is not None and callback is key.data:
                    self._run(callback)
            while self._timers and self._timers[0][0] <= time.monotonic():
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    self._run(timer.action)
            while self._requests:
                action, future = self._requests.popleft()
                if future is None:
                    self._run(action)
                    continue
                if not future.set_running_or_notify_cancel():
                    continue  # its caller stopped waiting
                try:
                    future.set_result(action())
                except BaseException as exc:
                    future.set_exception(exc)
        while self._requests:
            _, future = self._requests.popleft()
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the launcher thread has stopped"))

    def _drain_wake_pipe(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    @staticmethod
    def _run(action: Callable[[], object]) -> None:
        # This thread serves every worker: one failing step must not end it.
        try:
            action()
        except Exception:
            log.exception("launcher thread: %r failed", action)
