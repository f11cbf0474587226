"""What a worker last said of itself, kept while it stays true.

A worker's figures (linear memory, messages, errors, resets) change only
while agent code runs in it. So the figures it gave are still its figures
as long as no agent code has run since it was asked: status and metrics
can answer from them instead of calling the worker, which matters for a
parked worker (asking would wake it) and for a deploy's reply (the worker
has just said them, at Load). An answer that was asked for before, or
while, agent code ran is never kept: it may already be out of date.

Pure bookkeeping under a lock; the caller does the asking.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .worker_client import WorkerStats


class KnownFigures:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures: WorkerStats | None = None
        self._generation = 0  # moves on whenever agent code starts or stops running
        self._running = 0  # calls running agent code now

    def known(self) -> WorkerStats | None:
        """The worker's figures, if they are still true."""
        return self._figures

    def ticket(self) -> int:
        """Taken just before asking the worker; `record` needs it."""
        with self._lock:
            return self._generation

    def record(self, ticket: int, figures: WorkerStats) -> None:
        """Keep an answer asked for with `ticket`, unless agent code has run
        (or is running) since."""
        with self._lock:
            if ticket == self._generation and not self._running:
                self._figures = figures

    @contextmanager
    def agent_code_runs(self) -> Iterator[None]:
        """Around every call that runs agent code: the figures change."""
        with self._lock:
            self._running += 1
            self._generation += 1
            self._figures = None
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._generation += 1
                self._figures = None
