"""Liveness checks for running workers.

A worker can hang without exiting: stopped by a signal, deadlocked, stuck in
host code. Exits are seen at once through pidfds; hangs only by asking. Every
interval this thread probes the live workers that are due (WorkerClient.probe),
all at once and under one deadline, and kills a worker that misses `failures`
checks in a row. The kill then goes through the normal exit path, so the
agent is restarted by its policy and the reason names the hang.

Asking costs both sides CPU (a Stats call wakes half a dozen gRPC threads in
the worker and the supervisor): sweeping every worker every interval was a
third of what an idle fleet burnt (measured at 100 and 300 agents). So a worker is asked only when nothing else
has shown it alive (ProbeSchedule): one that completed a batch since the last
sweep has just answered an RPC and is not asked; the first sweep after it
stops completing batches asks it once, since it may be stuck inside the next
one; after that, one that shows nothing is asked once every `idle_sweeps`
intervals; one that missed a check is asked every interval until it answers
or is killed. A worker stuck inside a batch is also bounded by the
dispatcher's hang bound (instance.py), which kills it without a probe.

The same sweep parks workers that have had no call for `park_after_s`
(parking.py); a parked worker is not asked, since it is not running.

The probe is answered by the worker's second RPC thread, so a worker
busy with a long message still answers: wasm runs without holding the GIL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from .deadline import Deadline
from .instance import WorkerInstance
from .worker_client import WorkerCallError

log = logging.getLogger("caxton.health")

# A worker that shows no other sign of life is asked every this many
# intervals (a minute at the default 5 s): a hang in an idle worker harms no
# one until a message arrives, and then the dispatcher's hang bound and the
# busy worker's own silence catch it.
IDLE_SWEEPS = 12


@dataclass
class _Seen:
    handled: int  # the worker's handled count at the last sweep
    proven_at: float  # when it last showed it was alive (monotonic seconds)
    missed: int = 0  # checks missed in a row
    active: bool = False  # it completed a batch between the last two sweeps


class ProbeSchedule:
    """Which workers a sweep asks (pure policy: no I/O, the clock is passed
    in). A worker is known by any hashable key."""

    def __init__(self, interval_s: float, idle_sweeps: int = IDLE_SWEEPS):
        # A sweep runs a little after a whole number of intervals; half an
        # interval of slack keeps "every idle_sweeps-th sweep" from slipping
        # to the next one.
        self._idle_after_s = interval_s * (idle_sweeps - 0.5)
        self._seen: dict[Hashable, _Seen] = {}

    def due(self, worker: Hashable, handled: int, now: float) -> bool:
        """Whether this sweep should ask `worker`, which has completed
        `handled` messages so far."""
        seen = self._seen.get(worker)
        if seen is None:
            # First sight: it has just loaded its module, which is an answer.
            self._seen[worker] = _Seen(handled, now)
            return False
        if handled != seen.handled:
            # It completed a batch since the last sweep: that was an answer.
            seen.handled, seen.proven_at, seen.missed, seen.active = handled, now, 0, True
            return False
        if seen.active:
            # It went quiet: idle, or stuck in the batch it took next.
            seen.active = False
            return True
        return seen.missed > 0 or now - seen.proven_at >= self._idle_after_s

    def answered(self, worker: Hashable, now: float) -> None:
        seen = self._seen.get(worker)
        if seen is not None:
            seen.proven_at, seen.missed = now, 0

    def missed(self, worker: Hashable) -> int:
        """Count a missed check; returns how many were missed in a row."""
        seen = self._seen.get(worker)
        if seen is None:
            return 1
        seen.missed += 1
        return seen.missed

    def keep_only(self, workers: Iterable[Hashable]) -> None:
        """Forget workers that are gone, so the map never outgrows the set
        of live workers."""
        live = set(workers)
        self._seen = {worker: seen for worker, seen in self._seen.items() if worker in live}


class HealthMonitor:
    def __init__(self, instances: Callable[[], Iterable[WorkerInstance]], *, interval_s: float, timeout_s: float,
                 failures: int, park_after_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self._instances = instances
        self._park_after_s = park_after_s
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._failures = failures
        self._clock = clock
        self._schedule = ProbeSchedule(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check_once()
            except Exception:
                log.exception("health check sweep failed")

    def check_once(self) -> None:
        """One sweep: ask every live worker that is due, wait for all
        answers (bounded by the timeout), count the misses."""
        now = self._clock()
        # Parked workers are not running, so they cannot hang; the schedule
        # meets them afresh once they run again.
        live = [instance for instance in self._instances() if instance.alive and not instance.parked]
        self._schedule.keep_only(live)
        due = [instance for instance in live if self._schedule.due(instance, instance.handled, now)]
        if self._park_after_s:
            asked = {id(instance) for instance in due}
            for instance in live:
                if id(instance) not in asked:
                    instance.park_if_idle(self._park_after_s)
        if not due:
            return
        deadline = Deadline.after(self._timeout_s)
        probes = [(instance, instance.probe(deadline)) for instance in due]
        for instance, probe in probes:
            try:
                probe.result()
            except WorkerCallError:
                if not instance.alive:
                    continue  # it exited meanwhile: the exit path handles it
                count = self._schedule.missed(instance)
                if count >= self._failures:
                    reason = f"did not answer {count} health checks in a row ({self._timeout_s:g}s deadline each)"
                    log.error("[%s v%d] worker %d %s; killing it",
                              instance.agent, instance.version, instance.pid, reason)
                    instance.kill(reason)
            else:
                self._schedule.answered(instance, self._clock())
