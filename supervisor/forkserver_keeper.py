"""The fork server keeper: one fork server running at a time, replaced
with backoff when it dies, and a fast answer while there is none.

A fork server that dies is restarted after the delay the restart policy
gives (a timer on the launcher thread, never a sleep there); one that keeps
dying opens the breaker: it is then retried at the longest delay for as long
as the supervisor runs, and capacity reports that workers cannot be started
until it comes up again. Callers never restart it themselves: they wait for
a server that is starting or due shortly, and are told at once when none is
(`ready_server`). A caller that finds the server hung or broken reports it
(`failed`), and the keeper kills and replaces it.

State changes happen on the launcher thread, under `_cond`; callers only
read it and wait on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .backoff import Backoff
from .capacity import Capacity
from .errors import WorkerStartError
from .forkserver import ForkServer, ForkServerFailed, ForkServerGone
from .launcher_thread import LauncherThread, Timer
from .process import ExitStatus
from .restart import RestartSettings

log = logging.getLogger("caxton.launcher")


class ForkServerKeeper:
    def __init__(self, python: str, env: dict[str, str], thread: LauncherThread, capacity: Capacity,
                 restart: RestartSettings, merge_pages: bool = False):
        self._python = python
        self._env = env
        self._merge_pages = merge_pages
        self._thread = thread
        self._capacity = capacity
        self._backoff = Backoff(restart)
        self._cond = threading.Condition()
        self._server: ForkServer | None = None  # starting, ready, or on its way out
        self._ready = False  # _server answered ready and nobody found it broken
        self._retry_at = 0.0  # when there is no server: the next attempt
        self._down_because = ""
        self._timer: Timer | None = None
        self._closing = False

    def start(self, timeout: float) -> None:
        """Start the first fork server (without waiting for it to be ready)."""
        self._thread.call(self._start, timeout)

    def ready_server(self, deadline: float) -> ForkServer:
        """The ready fork server, waiting for one that is starting or due
        before `deadline`. Raises WorkerStartError at once when there is
        none and the next attempt is later or the breaker is open."""
        with self._cond:
            while True:
                if self._closing:
                    raise WorkerStartError("the launcher is closing")
                if self._server is not None and self._ready:
                    return self._server
                now = time.monotonic()
                if self._server is None and (self._backoff.gave_up or self._retry_at > deadline):
                    raise WorkerStartError(
                        f"cannot start a worker: the fork server is restarting (last one: {self._down_because}); "
                        f"next attempt in {max(0.0, self._retry_at - now):.1f}s")
                if now >= deadline:
                    if self._server is not None:
                        # Starting for a whole start timeout: hung in its imports.
                        self.failed(self._server, "not ready within the start timeout")
                    raise WorkerStartError("cannot start a worker: the fork server did not become ready in time")
                self._cond.wait(deadline - now)

    def failed(self, server: ForkServer, reason: str) -> None:
        """A caller found `server` hung or broken: nobody uses it again, and
        the keeper kills it (its exit then starts a replacement)."""
        with self._cond:
            if server is self._server:
                self._ready = False
        self._thread.call_soon(lambda: server.kill(reason))

    def worker_started(self, server: ForkServer) -> None:
        """A worker `server` forked became ready: the server is proven, so
        an open breaker closes and workers can be started."""
        with self._cond:
            if server is self._server:
                self._backoff.succeeded(time.monotonic())
                self._capacity.set(True)

    def close(self, deadline: float) -> None:
        """Stop restarting, kill the fork server (it holds no state; its
        workers are not its children) and wait until it is reaped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.call(self._close, max(0.0, deadline - time.monotonic()))
        with self._cond:
            while self._server is not None and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    # ------------------------------------------------------------ launcher thread

    def _start(self) -> None:
        self._timer = None
        if self._closing:
            return
        try:
            server = ForkServer.start(self._python, self._env, self._merge_pages)
        except OSError as exc:
            self._down(f"could not be started: {exc}")
            return
        pidfd = os.pidfd_open(server.popen.pid)  # our child, not yet reaped: it exists
        control_fd = server.control_fd
        self._thread.add_reader(pidfd, lambda: self._exited(server, pidfd, control_fd))
        self._thread.add_reader(control_fd, lambda: self._control_readable(server, control_fd))
        with self._cond:
            self._server, self._ready = server, False
            self._cond.notify_all()

    def _control_readable(self, server: ForkServer, control_fd: int) -> None:
        try:
            if not server.read_ready():
                return
        except ForkServerGone:
            self._thread.remove_reader(control_fd)
            return  # it is exiting; its pidfd reports that
        except ForkServerFailed as exc:
            self._thread.remove_reader(control_fd)
            server.kill(str(exc))  # its exit, seen through the pidfd, replaces it
            return
        # From now on only callers read the channel, under the server's lock.
        self._thread.remove_reader(control_fd)
        with self._cond:
            if server is self._server:
                self._ready = True
                self._backoff.started(time.monotonic())
                self._capacity.set(True)
                self._cond.notify_all()
        log.info("fork server %d is ready", server.popen.pid)

    def _exited(self, server: ForkServer, pidfd: int, control_fd: int) -> None:
        self._thread.remove_reader(pidfd)
        self._thread.remove_reader(control_fd)
        os.close(pidfd)
        returncode = server.popen.wait()  # the pidfd is readable: it has exited
        server.close()
        if server.killed_because is not None:
            self._down(f"was killed ({server.killed_because})", server)
        else:
            self._down(ExitStatus(returncode).describe(), server)

    def _down(self, reason: str, server: ForkServer | None = None) -> None:
        """The fork server is gone (or never started): schedule the next one."""
        with self._cond:
            self._server, self._ready = None, False
            self._cond.notify_all()
            if self._closing:
                return
            now = time.monotonic()
            retry = self._backoff.failed(now, reason)
            self._retry_at = now + retry.delay_s
            self._down_because = f"{reason}; {retry.reason}" if retry.gave_up else reason
            if retry.gave_up:
                self._capacity.set(False)
        pid = f" {server.popen.pid}" if server is not None else ""
        (log.error if retry.gave_up else log.warning)(
            "fork server%s %s; %s", pid, reason, retry.reason)
        self._timer = self._thread.call_later(retry.delay_s, self._start)

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._server is not None:
            self._server.kill("the launcher is closing")
