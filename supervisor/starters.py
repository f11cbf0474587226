"""Worker start strategies: how a worker process comes to exist and be ready.

Two ways (`worker_start` in the config):
- "fork" (default, `ForkStarter`): forked by the pre-warmed fork server
  (worker/forkserver.py) in tens of milliseconds, sharing its memory pages.
  The supervisor is a child subreaper, so those workers become its children
  and it reaps them itself.
- "exec" (`ExecStarter`): a fresh `python -I -m caxton.worker` each time:
  hundreds of milliseconds, but fresh address-space randomisation per worker.

Either returns a worker that is watched by the reaper and ready to take
`Load`, or raises WorkerStartError and leaves no process behind; either
keeps the launcher's capacity up to date. Either starts the worker clean:
the environment it is given, working directory `/`, umask 077, stdin
/dev/null, stdout discarded, stderr the pipe it is given, and no other
descriptor but its ready pipe.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from typing import Protocol

from .backoff import Backoff
from .capacity import Capacity
from .errors import WorkerStartError
from .forkserver import WORKER_PYTHON_FLAGS, WORKER_UMASK, ForkServerFailed
from .forkserver_keeper import ForkServerKeeper
from .launcher_thread import LauncherThread
from .process import WorkerProcess
from .reaper import Reaper
from .restart import RestartSettings

_PR_SET_CHILD_SUBREAPER = 36

# How long the launcher thread may take to start the first fork server
# process (a fork and exec; its imports are not waited for).
_FIRST_FORK_SERVER_TIMEOUT_S = 10.0


class Starter(Protocol):
    """`start` returns a worker that is watched and ready, or raises
    WorkerStartError; `close` ends whatever the strategy itself runs. The
    worker's stderr is `output_fd` (a copy: the caller still closes it)."""

    def start(self, socket_path: str, cgroup_procs: list[str], timeout: float, output_fd: int,
              gid: int = -1) -> WorkerProcess:
        """A ready worker serving on `socket_path`, which has taken group
        `gid` (and no other) while it was still one thread (-1: ours)."""

    def close(self, deadline: float) -> None: ...


def _ready(process: WorkerProcess, timeout: float) -> WorkerProcess:
    try:
        process.wait_ready(timeout)
    except WorkerStartError:
        process.kill()
        raise
    return process


class ExecStarter:
    """Starts each worker with exec, on the launcher thread. Consecutive
    failures open a breaker that only reports (capacity False); every start
    is still tried, and the first worker that becomes ready closes it."""

    def __init__(self, python: str, env: dict[str, str], thread: LauncherThread, reaper: Reaper,
                 capacity: Capacity, restart: RestartSettings):
        self._python = python
        self._env = env
        self._thread = thread
        self._reaper = reaper
        self._capacity = capacity
        self._backoff = Backoff(restart)
        self._lock = threading.Lock()

    def start(self, socket_path: str, cgroup_procs: list[str], timeout: float, output_fd: int,
              gid: int = -1) -> WorkerProcess:
        # The launcher thread gets a copy of its own: the call may still run
        # after it timed out here, when the caller has closed `output_fd`
        # (and the number may name something else). Whoever claims the copy
        # first closes it: the exec, or this thread if the exec never ran.
        output_copy = os.dup(output_fd)
        claim = threading.Lock()

        def exec_worker() -> WorkerProcess:
            if not claim.acquire(blocking=False):
                raise WorkerStartError("the start was given up before the launcher thread got to it")
            try:
                return self._exec(socket_path, cgroup_procs, output_copy, gid)
            finally:
                os.close(output_copy)

        try:
            try:
                process = self._thread.call(exec_worker, timeout)
            finally:
                if claim.acquire(blocking=False):
                    os.close(output_copy)
            _ready(process, timeout)
        except (WorkerStartError, TimeoutError) as exc:
            with self._lock:
                if self._backoff.failed(time.monotonic(), str(exc)).gave_up:
                    self._capacity.set(False)
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(f"cannot start a worker: {exc}") from exc
            raise
        with self._lock:
            self._backoff.succeeded(time.monotonic())
            self._capacity.set(True)
        return process

    def close(self, deadline: float) -> None:
        """Nothing of its own to end: its workers are the reaper's."""

    def _exec(self, socket_path: str, cgroup_procs: list[str], output_fd: int, gid: int) -> WorkerProcess:
        ready_r, ready_w = os.pipe()
        cgroup_args = [arg for path in cgroup_procs for arg in ("--cgroup-procs", path)]
        gid_args = ["--gid", str(gid)] if gid >= 0 else []
        try:
            popen = subprocess.Popen(
                [self._python, *WORKER_PYTHON_FLAGS, "-m", "caxton.worker", "--socket", socket_path,
                 "--ready-fd", str(ready_w), "--parent-pid", str(os.getpid()), *cgroup_args, *gid_args],
                close_fds=True,
                pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own pipe, read and logged as its lines by the
                # supervisor: never the supervisor's log itself.
                stderr=output_fd,
                cwd="/",
                umask=WORKER_UMASK,
                # Own session: a Ctrl-C or SIGTERM aimed at the supervisor's
                # process group must reach the supervisor only, which then
                # drains its workers; the parent-death signal still ends them
                # if the supervisor dies.
                start_new_session=True,
                env=self._env,
            )
        except OSError as exc:
            os.close(ready_r)
            raise WorkerStartError(f"cannot start worker: {exc}") from exc
        finally:
            os.close(ready_w)
        process = WorkerProcess(popen.pid, socket_path, ready_r, popen)
        self._reaper.watch(process)
        return process


class ForkStarter:
    """Asks the fork server for each worker, from the calling thread (the
    fork server does the forking). A server found hung or dead is reported
    to the keeper, and the start is tried once more with its replacement if
    one is coming."""

    def __init__(self, python: str, env: dict[str, str], thread: LauncherThread, reaper: Reaper,
                 capacity: Capacity, restart: RestartSettings, merge_pages: bool = False):
        # Workers forked by the fork server are orphaned on purpose (see
        # worker/forkserver.py); as a subreaper we adopt them.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        self._reaper = reaper
        self._keeper = ForkServerKeeper(python, env, thread, capacity, restart, merge_pages)
        self._keeper.start(timeout=_FIRST_FORK_SERVER_TIMEOUT_S)

    def start(self, socket_path: str, cgroup_procs: list[str], timeout: float, output_fd: int,
              gid: int = -1) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        for attempt in (1, 2):
            server = self._keeper.ready_server(deadline)
            ready_r, ready_w = os.pipe()
            try:
                pid = server.spawn(socket_path, cgroup_procs, ready_w, output_fd, deadline, gid)
            except ForkServerFailed as exc:
                os.close(ready_r)
                self._keeper.failed(server, str(exc))
                if attempt == 2:
                    raise
                # The replacement gets the same budget as the first server:
                # a hung one may have used all of it.
                deadline = time.monotonic() + timeout
                continue
            except BaseException:
                os.close(ready_r)
                raise
            finally:
                os.close(ready_w)
            process = WorkerProcess(pid, socket_path, ready_r)
            self._reaper.watch(process)
            _ready(process, timeout)
            self._keeper.worker_started(server)
            return process
        raise AssertionError("unreachable")

    def close(self, deadline: float) -> None:
        self._keeper.close(deadline)
