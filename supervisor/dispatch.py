"""Dispatch: carrying messages from a mailbox to the worker instances that serve it.

A thread per worker instance, blocked on its mailbox, cost the supervisor a
thread (and its stack) for every idle agent: 1,000 idle agents, 1,000
threads. Here an instance's `Dispatcher` holds no thread. It is run by the
supervisor's one `DispatchPool` only while its mailbox holds messages: it
takes batches until the mailbox is empty, then registers with the mailbox as
idle and gives its thread back. The next message put wakes it, which submits
it to the pool again. So threads follow the agents that are busy right now,
and an idle pool thread retires after `idle_timeout_s`.

At most one drain of a dispatcher runs at a time, which keeps a worker's
batches in order: a drain is submitted once by `serve`, and after that only
by the mailbox, when it hands back a dispatcher that the previous drain
registered as idle (Mailbox.take). A drain that must stop (the instance is
retiring or dead) says so once, through `wait_stopped`.

A drain can also run on the API's event loop (`DispatchPool.serve_loop`):
when a message put on the loop (a client's Send) wakes an idle dispatcher
whose instance can call its worker from the loop (`LoopDelivery`), the loop
takes the batch itself, awaits the worker and answers the caller, with no
thread in between. Measured on this 2-core host, the two thread wake-ups it
spares (loop -> pool thread -> loop) were about 110 µs of a 1 ms round trip
(bench/README.md). The rules are the same: one drain at a time, taking until
the mailbox is empty. A batch the loop cannot finish without blocking (its
worker failed, or its agent sent messages that must be relayed) is finished
on a pool thread, which goes on with the drain there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from .deadline import Deadline
from .mailbox import Mailbox, Pending

log = logging.getLogger("caxton.dispatch")

# An idle pool thread lives this long before it ends: long enough to carry
# a steady trickle of messages without a thread start each time, short
# enough that a burst's threads are gone soon after it.
POOL_IDLE_TIMEOUT_S = 10.0

# What delivering a batch came to: True (go on), False (the worker is gone),
# or, from the loop, the rest of the work to finish on a pool thread (which
# then answers True or False).
Delivered = bool | Callable[[], bool]


class LoopDelivery(Protocol):
    """An instance's way to deliver a batch from the API loop."""

    def ready(self) -> bool:
        """Whether a batch can go from the loop now (its channel is up);
        if not, the channel is being made ready and the batch goes by a
        pool thread meanwhile. Called on the loop."""
        ...

    def deliver(self, batch: list[Pending]) -> Awaitable[Delivered]:
        """Send the batch to the worker and answer each message."""
        ...


class DispatchPool:
    """An elastic thread pool: a task runs at once, on an idle thread if one
    is waiting or on a new one otherwise, and threads end after idling
    `idle_timeout_s`. Unbounded on purpose: a task is one instance's drain,
    which may wait on its worker for as long as its messages' timeouts
    allow, so a bound would let slow agents hold up fast ones."""

    def __init__(self, idle_timeout_s: float = POOL_IDLE_TIMEOUT_S, name: str = "dispatch"):
        self._idle_timeout_s = idle_timeout_s
        self._name = name
        self._cond = threading.Condition()
        self._tasks: deque[Callable[[], None]] = deque()
        self._idle = 0  # threads waiting for a task
        self._threads = 0
        self._started = 0  # threads ever started, to name them
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # The loop keeps only weak references to its tasks (on the loop only).
        self._loop_drains: set[asyncio.Task[None]] = set()

    def serve_loop(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        """Drains woken on `loop` (run by thread `thread_id`) may run there."""
        self.loop, self._loop_thread = loop, thread_id

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop given to serve_loop."""
        return self._loop_thread is not None and threading.get_ident() == self._loop_thread

    def run_on_loop(self, drain: Coroutine[Any, Any, None]) -> None:
        """Run a drain on the loop (called on the loop)."""
        assert self.loop is not None
        task = self.loop.create_task(drain)
        self._loop_drains.add(task)
        task.add_done_callback(self._loop_drain_ended)

    def _loop_drain_ended(self, task: asyncio.Task[None]) -> None:
        self._loop_drains.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a dispatch task failed", exc_info=task.exception())

    @property
    def threads(self) -> int:
        """Threads alive now (busy or idle)."""
        with self._cond:
            return self._threads

    def submit(self, task: Callable[[], None]) -> None:
        with self._cond:
            self._tasks.append(task)
            if self._idle >= len(self._tasks):
                self._cond.notify()
                return
            self._threads += 1
            self._started += 1
            number = self._started
        threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._tasks:
                    self._idle += 1
                    woken = self._cond.wait(self._idle_timeout_s)
                    self._idle -= 1
                    # A wake-up can race the timeout: a queued task is
                    # taken either way.
                    if not woken and not self._tasks:
                        self._threads -= 1
                        return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:
                log.exception("a dispatch task failed")


class Dispatcher:
    """Feeds one worker instance from a mailbox, in batches.

    `deliver(batch)` sends a batch to the worker and answers each message;
    it returns False when the instance should take no more (its worker is
    gone). `alive()` says whether the worker can still take batches.
    """

    def __init__(self, pool: DispatchPool, deliver: Callable[[list[Pending]], bool], alive: Callable[[], bool], *,
                 batch_max_messages: int, batch_max_bytes: int, on_loop: LoopDelivery | None = None):
        self._pool = pool
        self._deliver = deliver
        self._on_loop = on_loop
        self._alive = alive
        self._max_messages = batch_max_messages
        self._max_bytes = batch_max_bytes
        self._lock = threading.Lock()
        self._mailbox: Mailbox | None = None
        self._active = False  # a drain is queued, running, or registered idle with the mailbox
        self._retiring = False
        # While draining, the dispatcher keeps taking until the mailbox is
        # empty: messages already accepted are still handled.
        self._draining = False
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def mailbox(self) -> Mailbox | None:
        return self._mailbox

    @property
    def retiring(self) -> bool:
        """retire() was called (and not undone)."""
        return self._retiring

    def serve(self, mailbox: Mailbox) -> None:
        """Take batches from `mailbox` from now on."""
        with self._lock:
            self._mailbox = mailbox
            if self._active:
                mailbox.wake_all()
                return
            self._active = True
            self._stopped.clear()
        self._pool.submit(self._drain)

    def move_to(self, mailbox: Mailbox) -> None:
        """Take from `mailbox` instead; the batch in hand finishes first."""
        old, self._mailbox = self._mailbox, mailbox
        if old is not None:
            old.wake_all()

    def retire(self, *, drain: bool) -> None:
        """Stop taking batches: at once (drain=False; the batch in hand still
        finishes), or once the mailbox is empty (drain=True)."""
        self._draining = drain
        self._retiring = True
        if self._mailbox is not None:
            self._mailbox.wake_all()

    def reinstate(self) -> None:
        """Undo retire(), before serve() is called again."""
        self._retiring = False
        self._draining = False

    def wait_stopped(self, deadline: Deadline) -> bool:
        """Wait until the batch in hand is finished and no more will be taken
        (after retire(), or once the worker is gone)."""
        return self._stopped.wait(deadline.timeout())

    # ------------------------------------------------------------ for the mailbox

    def keep_taking(self) -> bool:
        """Called by the mailbox under its lock: no blocking here."""
        mailbox = self._mailbox
        if mailbox is None or not self._alive():
            return False
        if not self._retiring:
            return True
        return self._draining and len(mailbox) > 0

    def wake(self) -> None:
        """The mailbox hands back a dispatcher registered as idle: messages
        came (or it must notice it is retiring). On the API loop, the loop
        drains it (see the module docstring); elsewhere a pool thread."""
        if self._on_loop is not None and self._pool.on_loop() and self._on_loop.ready():
            self._pool.run_on_loop(self._drain_on_loop(self._on_loop))
        else:
            self._pool.submit(self._drain)

    # ------------------------------------------------------------ the drain

    def _drain(self, finish_first: Callable[[], bool] | None = None) -> None:
        """On a pool thread. `finish_first`: a batch the loop handed over."""
        if finish_first is not None and not finish_first() and self._finish():
            return
        while (batch := self._next_batch()) is not None:
            if not self._deliver(batch) and self._finish():
                return

    async def _drain_on_loop(self, on_loop: LoopDelivery) -> None:
        """The same drain as `_drain`, on the API loop."""
        # Once round the loop first: a stream reading its client's frame
        # puts the rest of the frame meanwhile, so the first batch carries
        # it. Measured with 8 agents on one stream: batches grew and the
        # supervisor's CPU per message fell by about a tenth; a lone Send
        # pays nothing that shows (865-877 µs p50 against 850-893 µs).
        await asyncio.sleep(0)
        while (batch := self._next_batch()) is not None:
            delivered = await on_loop.deliver(batch)
            if not isinstance(delivered, bool):
                self._pool.submit(functools.partial(self._drain, delivered))
                return
            if not delivered and self._finish():
                return

    def _next_batch(self) -> list[Pending] | None:
        """The next batch for this drain, or None when the drain ends: it
        must stop, or the mailbox was empty and keeps it as idle (the next
        put wakes it)."""
        while True:
            mailbox = self._mailbox
            batch = mailbox.take(self._max_messages, self._max_bytes, self) if mailbox is not None else None
            if batch is not None:
                return batch or None
            # Told to stop, unless moved (move_to) or served again meanwhile.
            if self._finish():
                return None

    def _finish(self) -> bool:
        """Stop, unless serve()/move_to() gave this dispatcher more to take
        meanwhile (then False: the drain goes on)."""
        with self._lock:
            if self.keep_taking():
                return False
            self._active = False
            self._stopped.set()
            return True
