"""A callback thread: runs notifications one at a time, in the order given,
on a thread of their own.

Whoever notices an event (the launcher thread reaping a worker, say) must
not run the code that reacts to it: that code may block for seconds (an
agent giving up waits for its other workers to exit), and the noticing
thread serves everyone. It queues the call here instead and moves on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("caxton.callbacks")

_STOP = object()


class CallbackThread:
    def __init__(self, name: str):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, callback: Callable[..., Any], *args: Any) -> None:
        """Queue `callback(*args)`; never blocks."""
        self._queue.put((callback, args))

    def close(self, timeout: float) -> None:
        """Run what is queued, then stop; give up waiting after `timeout`
        (the thread is a daemon: a callback stuck for good cannot hold the
        supervisor's exit)."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:
                log.exception("%s: callback %r failed", self.name, callback)
