"""A worker process as the supervisor sees it: started, ready, exited.

`WorkerProcess` is what callers hold: they wait for it to be ready or to
exit, kill it, and register exit callbacks. The reaper (reaper.py) is the
only writer of its exit: it attaches the pidfd it watches and, once it has
reaped the process, records the exit and takes the callbacks to run them on
another thread. `ExitStatus` says how the process ended.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import WorkerStartError
from .worker_output import OutputStream

ExitCallback = Callable[["ExitStatus"], None]


@dataclass(frozen=True)
class ExitStatus:
    """How a worker ended, in the words a person wants to read."""

    returncode: int | None  # negative: killed by that signal; None: unknown

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    def describe(self) -> str:
        if self.returncode is None:
            return "exited (status unknown)"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.returncode}"


class WorkerProcess:
    """A running worker, from the supervisor's side."""

    def __init__(self, pid: int, socket_path: str, ready_fd: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen  # set for exec-started workers
        self.socket_path = socket_path
        self.started_at = time.monotonic()
        # The uid (and gid) this worker switches to at Load: its own, from
        # `[sandbox] uid_range` (-1: none of its own; see uids.py).
        self.uid = -1
        # Its stderr as the output reader sees it (None: not read by us).
        self.output: OutputStream | None = None
        self._ready_fd = ready_fd
        self._pidfd: int | None = None
        self.exit_status: ExitStatus | None = None
        self._exited = threading.Event()
        self._on_exit: list[ExitCallback] = []
        # Guards the pidfd against being closed while kill() signals through
        # it, and the callback list against an exit recorded meanwhile.
        self._lock = threading.Lock()

    def wait_ready(self, timeout: float) -> None:
        """Block until the worker reports it is serving, or raise.

        A worker that hangs while starting is killed rather than waited on
        forever; one that dies while starting is reported with its status.
        """
        deadline = time.monotonic() + timeout
        buf = b""
        # poll, not select: a supervisor with hundreds of agents has
        # descriptors numbered past select()'s limit of 1024.
        poller = select.poll()
        poller.register(self._ready_fd, select.POLLIN)
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise WorkerStartError(f"worker {self.pid} did not become ready within {timeout:.1f}s; killed it")
                if not poller.poll(remaining * 1000):
                    continue
                chunk = os.read(self._ready_fd, 64)
                if not chunk:
                    status = self.wait_exit(timeout=max(0.0, deadline - time.monotonic()))
                    reason = status.describe() if status else "closed its ready pipe"
                    raise WorkerStartError(f"worker {self.pid} {reason} before it was ready")
                buf += chunk
        finally:
            os.close(self._ready_fd)

    def serves(self, agent: str) -> None:
        """Name the agent this worker serves in the lines it writes."""
        if self.output is not None:
            self.output.agent = agent

    def add_exit_callback(self, callback: ExitCallback) -> None:
        """Call `callback(status)` once the process has exited: on the
        launcher's exit-callback thread, in the order registered, or at once
        on this thread if it already has. A slow callback delays only the
        callbacks queued behind it, never reaping or starting workers."""
        with self._lock:
            if self.exit_status is None:
                self._on_exit.append(callback)
                return
        callback(self.exit_status)

    def wait_exit(self, timeout: float | None) -> ExitStatus | None:
        """The exit status, or None if it is still running after `timeout`
        (None: wait until it exits)."""
        self._exited.wait(timeout)
        return self.exit_status

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def kill(self) -> None:
        """SIGKILL through the pidfd, so a recycled pid can never be hit."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Signal the worker through its pidfd; nothing if it has exited."""
        with self._lock:
            if self.exit_status is not None or self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------ for the reaper

    def attach_pidfd(self, pidfd: int) -> None:
        """The pidfd the reaper watches; kill() signals through it. The
        process owns it from now on and closes it when its exit is recorded."""
        with self._lock:
            self._pidfd = pidfd

    def record_exit(self, status: ExitStatus) -> list[ExitCallback]:
        """The process has been reaped: close the pidfd, wake wait_exit(),
        and hand back the callbacks for the caller to run on another thread."""
        with self._lock:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self.exit_status = status
            callbacks, self._on_exit = self._on_exit, []
        self._exited.set()
        return callbacks
