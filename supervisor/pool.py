"""The spare pool: a few started-but-empty workers, kept ready so that a
deploy, a restart or a reload does not wait for a process to start.

A spare is an ordinary worker that has started its gRPC server and loaded
nothing, with a channel to it that has already carried one call: the
connection and the worker's first RPC cost milliseconds a deploy would
otherwise wait for. Taking one hands it to exactly one agent instance: a worker loads
one module in its life (the worker refuses a second Load), so two agents
never share a process and a process never serves a second agent. The pool
refills in the background from its own thread, which is the only place that
waits for a spare to become ready; failed refills back off like agent
restarts do, and are retried at once when the launcher can start workers
again.

Where workers get cgroups, each spare is born in a cgroup of its own, with
the CPU and process limits every worker has and no memory limit yet: the
instance that takes it sets its memory limit there (cgroups.py
`Cgroups.limit`) instead of moving the process into a new cgroup, which
costs a deploy an RCU grace period (5-15 ms measured on a 2-core host) on
the kernel's side. Everything the spare allocated is charged to it, as for
a worker started on demand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import grpc

from .backoff import Backoff
from .cgroups import CgroupLimits, Cgroups, WorkerCgroup
from .deadline import Deadline
from .errors import WorkerStartError
from .launcher import ExitStatus, Launcher, WorkerProcess
from .loop_delivery import Connected, connect_ahead
from .restart import RestartSettings
from .worker_client import WorkerCallError, warm_up_channel

log = logging.getLogger("caxton.pool")

# A failed refill is retried after 0.1 s, then slower up to every 10 s: a
# broken host must not turn the refill into a busy loop.
REFILL_RETRY = RestartSettings(initial_delay_s=0.1, max_delay_s=10.0, reset_after_s=30.0,
                               max_failures=5, window_s=60.0)


NO_CGROUP_LIMITS = CgroupLimits(0, 0.0, 0)


@dataclass(frozen=True)
class Spare:
    process: WorkerProcess
    channel: grpc.Channel  # open and used once: hand it to the instance's client
    cgroup: WorkerCgroup | None = None  # the spare's own, without a memory limit yet
    ahead: Connected | None = None  # the API loop's channel to it, connected

    def discard(self, _status: ExitStatus | None = None) -> None:
        """Release what a spare that is not handed out holds (also as its
        exit callback: its cgroup goes once its process has exited)."""
        self.channel.close()
        if self.ahead is not None:
            self.ahead.close()
        if self.cgroup is not None and not self.process.alive:
            self.cgroup.remove()


class SparePool:
    def __init__(self, launcher: Launcher, size: int, start_timeout_s: float,
                 retry: RestartSettings = REFILL_RETRY, *, cgroups: Cgroups | None = None,
                 cgroup_limits: CgroupLimits = NO_CGROUP_LIMITS):
        """`cgroups`: where spares are born (None: no cgroup of their own);
        `cgroup_limits`: what a spare's cgroup holds it to until it is
        taken, but for memory: the taker sets that."""
        self.size = size
        self._launcher = launcher
        self._cgroups = cgroups
        self._cgroup_limits = replace(cgroup_limits, memory_bytes=0)
        self._timeout = start_timeout_s
        self._backoff = Backoff(retry)
        self._spares: deque[Spare] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._retry_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._refill, name="spare-pool", daemon=True)
        if size > 0:
            launcher.on_capacity_change(self._capacity_changed)
            self._thread.start()

    def connect_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Spares started from now on come with a channel from `loop` (the
        API's) already connected: loop_delivery.connect_ahead."""
        self._loop = loop

    def take(self) -> Spare | None:
        """A ready spare, or None if there is none right now (the caller
        then starts a worker itself)."""
        with self._cond:
            while self._spares:
                spare = self._spares.popleft()
                self._cond.notify()
                if spare.process.alive:
                    return spare
                spare.discard()
        return None

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
                while not self._closed and (len(self._spares) >= self.size or time.monotonic() < self._retry_at):
                    timeout = self._retry_at - time.monotonic() if len(self._spares) < self.size else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
            try:
                spare = self._start_spare()
            except WorkerStartError as exc:
                with self._cond:
                    if self._closed:
                        return
                    now = time.monotonic()
                    retry = self._backoff.failed(now, str(exc))
                    self._retry_at = now + retry.delay_s
                log.warning("could not start a spare worker: %s; retrying in %.2fs", exc, retry.delay_s)
                continue
            with self._cond:
                self._backoff.succeeded(time.monotonic())
                if self._closed:
                    spare.process.kill()
                    spare.process.add_exit_callback(spare.discard)
                    return
                self._spares.append(spare)
            spare.process.add_exit_callback(functools.partial(self._spare_exited, spare.process.pid))

    def _start_spare(self) -> Spare:
        cgroup = self._cgroups.create(self._cgroup_limits) if self._cgroups is not None else None
        try:
            process = self._launcher.spawn(self._timeout, cgroup.procs_files if cgroup is not None else [])
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        try:
            channel = warm_up_channel(process.socket_path, Deadline.after(self._timeout))
        except WorkerCallError as exc:
            process.kill()
            if cgroup is not None:
                process.add_exit_callback(lambda _status: cgroup.remove())
            raise WorkerStartError(f"a spare worker did not answer its first call: {exc.details}") from exc
        loop = self._loop
        ahead = connect_ahead(process.socket_path, loop, self._timeout) if loop is not None else None
        return Spare(process, channel, cgroup, ahead)

    def _spare_exited(self, pid: int, _status: ExitStatus) -> None:
        """Exit callback: a spare died while waiting; make room for another.

        It names the spare by pid rather than holding it: the callback lives
        as long as the process, and a spare handed out must not live on in
        it. Its stream on the API loop's channel would then never be freed,
        so that channel's connection stayed open even after the instance let
        it go (a worker parked): one socket and ~50 KiB per agent."""
        with self._cond:
            spare = next((s for s in self._spares if s.process.pid == pid), None)
            if spare is not None:
                self._spares.remove(spare)
                spare.discard()
                self._cond.notify_all()

    def _capacity_changed(self, can_start: bool) -> None:
        if can_start:
            with self._cond:
                self._retry_at = 0.0
                self._cond.notify_all()
