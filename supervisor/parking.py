"""Parking: an idle worker is frozen, so that it costs no CPU at all.

An idle worker is not quiet on its own. Traced with strace: its gRPC server
wakes about ten times a second (the Python server polls its completion queue
every 200 ms to check for signals; the gRPC core's thread pool wakes about
once a second per thread), 0.05 % of a core per worker, half a core at
1,000 idle agents doing nothing. Those wake-ups are inside grpcio, where no
setting turns them off. So a worker that has had no call for
`park_after_s` is frozen, and the next call to it (a message, a status
probe, its shutdown) thaws it first:

- with the cgroup v2 freezer where the worker has its own cgroup (the
  process cannot tell, and nothing else is signalled);
- with SIGSTOP and SIGCONT otherwise (through the pidfd).

A frozen worker can still be killed (SIGKILL reaches frozen tasks), its
parent-death signal still works, and its exit is still seen through the
pidfd. It is not health-checked while parked: a process that is not running
cannot hang, and it is probed again once it runs.

`Parking` is the policy (when a worker may be parked, counting calls in
progress), with the freezer and the clock passed in.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

log = logging.getLogger("caxton.parking")


class Freezer(Protocol):
    name: str

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


class CgroupFreezer:
    """The cgroup v2 freezer of the worker's own cgroup."""

    name = "cgroup-freeze"

    def __init__(self, directory: Path):
        self._file = directory / "cgroup.freeze"

    def freeze(self) -> None:
        self._file.write_text("1")

    def thaw(self) -> None:
        self._file.write_text("0")


class SignalFreezer:
    """SIGSTOP and SIGCONT, through a function that signals the worker's
    pidfd (so a recycled pid is never hit)."""

    name = "sigstop"

    def __init__(self, send_signal: Callable[[int], None]):
        self._send = send_signal

    def freeze(self) -> None:
        self._send(signal.SIGSTOP)

    def thaw(self) -> None:
        self._send(signal.SIGCONT)


class Parking:
    """When one worker is parked.

    Every call to the worker runs inside `awake()`, which thaws it if it is
    parked; `park_if_idle` parks it once no call has run for `after_s`. A
    freezer that fails is logged once and parking stops for this worker: it
    then only costs what it did before.
    """

    def __init__(self, freezer: Freezer, *, label: str, clock: Callable[[], float] = time.monotonic):
        self._freezer = freezer
        self._label = label
        self._clock = clock
        self._lock = threading.Lock()
        self._calls = 0
        self._quiet_since = clock()
        self._parked = False
        self._broken = False
        self.parked_count = 0  # times parked, for tests and status

    @property
    def parked(self) -> bool:
        return self._parked

    @contextmanager
    def awake(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """A call to the worker begins: thaw it first."""
        with self._lock:
            self._calls += 1
            if self._parked:
                self._parked = False
                self._apply(self._freezer.thaw, "thaw")

    def leave(self) -> None:
        with self._lock:
            self._calls -= 1
            self._quiet_since = self._clock()

    def park_if_idle(self, after_s: float) -> bool:
        """Park the worker if no call has run for `after_s`; True if it was
        parked now."""
        with self._lock:
            if self._parked or self._broken or self._calls or self._clock() - self._quiet_since < after_s:
                return False
            if not self._apply(self._freezer.freeze, "freeze"):
                return False
            self._parked = True
            self.parked_count += 1
            return True

    def _apply(self, step: Callable[[], None], what: str) -> bool:
        try:
            step()
        except OSError as exc:
            if not self._broken:
                log.warning("%s: cannot %s the worker with %s (%s); it will not be parked again",
                            self._label, what, self._freezer.name, exc)
            self._broken = True
            return False
        return True
