"""The reaper: watches every worker through a pidfd on the launcher thread,
reaps it the moment it exits, and hands its exit callbacks to another thread.

Reaping and the exit callbacks are kept apart on purpose: `wait_exit()`
returns as soon as the process is reaped, while the callbacks, which may
block, run on the exit-callback thread, so a slow one can never delay the
reaping of other workers or the start of new ones.
"""

from __future__ import annotations

import os
import threading
import time

from .callbacks import CallbackThread
from .launcher_thread import LauncherThread
from .process import ExitCallback, ExitStatus, WorkerProcess


class Reaper:
    def __init__(self, thread: LauncherThread, callbacks: CallbackThread):
        self._thread = thread
        self._callbacks = callbacks
        self._workers: dict[int, WorkerProcess] = {}
        self._lock = threading.Lock()

    def watch(self, process: WorkerProcess) -> None:
        """Watch a started process until it exits. Any thread; returns at
        once (the pidfd is attached here, so kill() works straight away)."""
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            # Gone already and reaped by someone else: nothing to wait for.
            self._dispatch(process, process.record_exit(ExitStatus(None)))
            return
        process.attach_pidfd(pidfd)
        with self._lock:
            self._workers[process.pid] = process
        self._thread.call_soon(lambda: self._thread.add_reader(pidfd, lambda: self._reap(pidfd, process)))

    def kill_all(self) -> list[WorkerProcess]:
        """SIGKILL every worker still running; returns them."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill()
        return workers

    def wait_all(self, workers: list[WorkerProcess], deadline: float) -> None:
        for worker in workers:
            worker.wait_exit(max(0.0, deadline - time.monotonic()))

    def _reap(self, pidfd: int, process: WorkerProcess) -> None:
        """Launcher thread: the pidfd is readable, so the process has exited."""
        self._thread.remove_reader(pidfd)
        if process.popen is not None:
            returncode: int | None = process.popen.wait()
        else:
            returncode = _wait_pidfd(pidfd)
        with self._lock:
            del self._workers[process.pid]
        try:
            os.unlink(process.socket_path)
        except FileNotFoundError:
            pass
        self._dispatch(process, process.record_exit(ExitStatus(returncode)))

    def _dispatch(self, process: WorkerProcess, callbacks: list[ExitCallback]) -> None:
        for callback in callbacks:
            self._callbacks.submit(callback, process.exit_status)


def _wait_pidfd(pidfd: int) -> int | None:
    """Reap a forked worker (our child by adoption) and decode its status."""
    try:
        # WNOHANG: the pidfd said it exited, and the launcher thread must
        # never block here if it somehow has not.
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None  # not adopted after all: someone else reaps it
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status
