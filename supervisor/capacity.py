"""Start capacity: whether the launcher can start workers right now, as an
observable value.

It turns False when starting workers has failed so often that the restart
policy's breaker opened (the fork server keeps dying, or exec starts keep
failing) and True again at the next sign of health. The server reports it as
the supervisor's gRPC health; listeners are told on their own thread, so a
slow one delays nobody.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .callbacks import CallbackThread

CapacityListener = Callable[[bool], None]


class Capacity:
    def __init__(self, notify: CallbackThread):
        self._notify = notify
        self._lock = threading.Lock()
        self._up = True
        self._listeners: list[CapacityListener] = []

    @property
    def up(self) -> bool:
        return self._up

    def set(self, up: bool) -> None:
        """Record the current value; listeners hear of changes only. Never
        blocks, so it may be called with other locks held."""
        with self._lock:
            if up == self._up:
                return
            self._up = up
            # Queued under the lock: listeners hear the changes in the order
            # they happened.
            for listener in self._listeners:
                self._notify.submit(listener, up)

    def subscribe(self, listener: CapacityListener) -> None:
        """Call `listener(up)` once with the current value, then on every change."""
        with self._lock:
            self._listeners.append(listener)
            self._notify.submit(listener, self._up)
