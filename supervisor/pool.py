"""A few started-but-empty workers, kept ready so that a deploy, a restart or
a reload does not wait for a process to start.

A spare is an ordinary worker that has started its gRPC server and loaded
nothing. Taking one hands it to exactly one agent instance: a worker loads
one module in its life (the worker refuses a second Load), so two agents
never share a process and a process never serves a second agent. The pool
refills in the background from its own thread, which is the only place that
waits for a spare to become ready.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from .errors import WorkerStartError
from .launcher import Launcher, WorkerProcess

log = logging.getLogger("caxton.pool")

# After a failed start, wait this long before trying again, so a broken
# host does not turn the refill into a busy loop.
_RETRY_DELAY_S = 1.0


class SparePool:
    def __init__(self, launcher: Launcher, size: int, start_timeout_s: float):
        self.size = size
        self._launcher = launcher
        self._timeout = start_timeout_s
        self._spares: deque[WorkerProcess] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._refill, name="spare-pool", daemon=True)
        if size > 0:
            self._thread.start()

    def take(self) -> WorkerProcess | None:
        """A ready spare, or None if there is none right now (the caller
        then starts a worker itself)."""
        with self._cond:
            while self._spares:
                process = self._spares.popleft()
                self._cond.notify()
                if process.alive:
                    return process
        return None

    def spare_pids(self) -> list[int]:
        with self._cond:
            return [p.pid for p in self._spares if p.alive]

    def close(self) -> None:
        """Stop refilling; the launcher kills the spares with every worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout + 1)

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and sum(p.alive for p in self._spares) >= self.size:
                    # Dead spares are dropped lazily by take(); a timed wait
                    # notices one that died while nobody was taking.
                    self._cond.wait(_RETRY_DELAY_S)
                    self._spares = deque(p for p in self._spares if p.alive)
                if self._closed:
                    return
            try:
                process = self._launcher.spawn(self._timeout)
            except WorkerStartError as exc:
                if self._closed:
                    return
                log.warning("could not start a spare worker: %s", exc)
                with self._cond:
                    self._cond.wait(_RETRY_DELAY_S)
                continue
            with self._cond:
                if self._closed:
                    process.kill()
                    return
                self._spares.append(process)
