"""Liveness checks for running workers.

A worker can hang without exiting: stopped by a signal, deadlocked, stuck in
host code. Exits are seen at once through pidfds; hangs only by asking. Every
interval this thread probes every live worker (WorkerClient.probe), all at
once and under one deadline, and kills a worker that misses `failures`
checks in a row. The kill then goes through the normal exit path, so the
agent is restarted by its policy and the reason names the hang.

The probe is answered by the worker's second RPC thread, so a worker
busy with a long message still answers: wasm runs without holding the GIL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from .deadline import Deadline
from .instance import WorkerInstance
from .worker_client import WorkerCallError

log = logging.getLogger("caxton.health")


class HealthMonitor:
    def __init__(self, instances: Callable[[], Iterable[WorkerInstance]], *, interval_s: float, timeout_s: float,
                 failures: int):
        self._instances = instances
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._failures = failures
        self._missed: dict[WorkerInstance, int] = {}
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
        """One sweep: ask every live worker, wait for all answers (bounded by
        the timeout), count the misses."""
        deadline = Deadline.after(self._timeout_s)
        probes = [(instance, instance.client.probe(deadline)) for instance in self._instances() if instance.alive]
        missed: dict[WorkerInstance, int] = {}
        for instance, probe in probes:
            try:
                probe.result()
            except WorkerCallError:
                if not instance.alive:
                    continue  # it exited meanwhile: the exit path handles it
                count = self._missed.get(instance, 0) + 1
                if count >= self._failures:
                    reason = f"did not answer {count} health checks in a row ({self._timeout_s:g}s deadline each)"
                    log.error("[%s v%d] worker %d %s; killing it",
                              instance.agent, instance.version, instance.pid, reason)
                    instance.kill(reason)
                else:
                    missed[instance] = count
        # Only workers that are still missing checks are remembered, so the
        # map never outgrows the set of live workers.
        self._missed = missed
