"""Starting worker processes and noticing, at once, when they exit.

One long-lived thread starts processes and watches them. Starting there
matters: the kernel sends a child its parent-death signal when the *thread*
that forked it exits, so nothing may be forked from short-lived RPC threads.
The same thread watches every worker through a pidfd in one selector, so an
exit is seen the moment it happens (no polling), for a thousand workers
without a thousand waiting threads.

Workers start one of two ways (`worker_start` in the config):
- "fork" (default): forked by the pre-warmed fork server (worker/forkserver.py)
  in tens of milliseconds, sharing its memory pages. The supervisor is a child
  subreaper, so those workers become its children and it reaps them itself.
- "exec": a fresh `python -I -m caxton.worker` each time: hundreds of milliseconds, but
  fresh address-space randomisation per worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from .errors import WorkerStartError
from .forkserver import WORKER_PYTHON_FLAGS, ForkServer

log = logging.getLogger("caxton.launcher")

_PR_SET_CHILD_SUBREAPER = 36

__all__ = ["ExitStatus", "Launcher", "WorkerProcess", "WorkerStartError"]


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
        self._ready_fd = ready_fd
        self.pidfd: int | None = None
        self.exit_status: ExitStatus | None = None
        self._exited = threading.Event()
        self._on_exit: list[Callable[[ExitStatus], None]] = []
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

    def add_exit_callback(self, callback: Callable[[ExitStatus], None]) -> None:
        """Call `callback(status)` once the process has exited (at once if it
        already has). Callbacks run on the launcher thread: keep them short."""
        with self._lock:
            if self.exit_status is None:
                self._on_exit.append(callback)
                return
        callback(self.exit_status)

    def _exited_with(self, status: ExitStatus) -> None:
        with self._lock:
            self.exit_status = status
            callbacks, self._on_exit = self._on_exit, []
        self._exited.set()
        for callback in callbacks:
            try:
                callback(status)
            except Exception:
                log.exception("exit callback for worker %d failed", self.pid)

    def wait_exit(self, timeout: float) -> ExitStatus | None:
        """The exit status, or None if it is still running after `timeout`."""
        self._exited.wait(timeout)
        return self.exit_status

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def kill(self) -> None:
        """SIGKILL through the pidfd, so a recycled pid can never be hit."""
        with self._lock:
            if self.exit_status is not None or self.pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Launcher:
    """Starts workers and reports their exits."""

    def __init__(self, runtime_dir: str, *, mode: str = "fork", python: str = sys.executable):
        if mode not in ("fork", "exec"):
            raise ValueError(f"worker start mode must be 'fork' or 'exec', not {mode!r}")
        self.runtime_dir = runtime_dir
        self.mode = mode
        self._python = python
        self._env = _worker_env()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._requests: deque[tuple[Callable[[], object], Future]] = deque()
        self._workers: dict[int, WorkerProcess] = {}
        self._closing = False
        self._counter = 0
        self._counter_lock = threading.Lock()
        self.fork_server: ForkServer | None = None
        if mode == "fork":
            # Workers forked by the fork server are orphaned on purpose (see
            # worker/forkserver.py); as a subreaper we adopt them.
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
            self.fork_server = ForkServer(python, self._env)
        self._thread = threading.Thread(target=self._loop, name="launcher", daemon=True)
        self._thread.start()
        if self.fork_server is not None:
            self._call(self._start_fork_server)

    # ------------------------------------------------------------ public

    def spawn(self, timeout: float, cgroup_procs: list[str] = ()) -> WorkerProcess:
        """Start a worker and wait until it is ready to take `Load`. The
        worker first joins the cgroups whose `cgroup.procs` files are given."""
        with self._counter_lock:
            self._counter += 1
            socket_path = os.path.join(self.runtime_dir, f"w{self._counter}.sock")
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        if self.fork_server is not None:
            process = self._fork(socket_path, list(cgroup_procs), timeout)
        else:
            process = self._call(lambda: self._exec(socket_path, list(cgroup_procs)))
        try:
            process.wait_ready(timeout)
        except WorkerStartError:
            process.kill()
            raise
        return process

    def workers(self) -> list[WorkerProcess]:
        return list(self._workers.values())

    def close(self, timeout: float = 5.0) -> None:
        """Kill every worker still running and stop the launcher thread."""
        self._closing = True
        if self.fork_server is not None:
            self.fork_server.close()
        for worker in list(self._workers.values()):
            worker.kill()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            worker.wait_exit(max(0.0, deadline - time.monotonic()))
        self._wake()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------ starting

    def _call(self, action: Callable[[], object]):
        """Run `action` on the launcher thread and return its result."""
        future: Future = Future()
        self._requests.append((action, future))
        self._wake()
        return future.result()

    def _exec(self, socket_path: str, cgroup_procs: list[str]) -> WorkerProcess:
        ready_r, ready_w = os.pipe()
        cgroup_args = [arg for path in cgroup_procs for arg in ("--cgroup-procs", path)]
        try:
            popen = subprocess.Popen(
                [self._python, *WORKER_PYTHON_FLAGS, "-m", "caxton.worker", "--socket", socket_path,
                 "--ready-fd", str(ready_w), "--parent-pid", str(os.getpid()), *cgroup_args],
                pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL,
                # Workers share the supervisor's stderr (the journal under
                # systemd); the supervisor's own output stays on stdout.
                stdout=subprocess.DEVNULL,
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
        self._watch(process)
        return process

    def _fork(self, socket_path: str, cgroup_procs: list[str], timeout: float) -> WorkerProcess:
        """Ask the fork server for a worker (from the calling thread: the fork
        server does the forking), then watch it from the launcher thread. If
        the fork server has died, it is restarted and asked once more."""
        for attempt in (1, 2):
            ready_r, ready_w = os.pipe()
            try:
                pid = self.fork_server.spawn(socket_path, cgroup_procs, ready_w, timeout)
            except WorkerStartError:
                os.close(ready_r)
                if attempt == 2 or self._closing:
                    raise
                log.warning("fork server unavailable; restarting it")
                self._call(self._restart_fork_server)
                continue
            finally:
                os.close(ready_w)
            process = WorkerProcess(pid, socket_path, ready_r)
            self._call(lambda: self._watch(process))
            return process
        raise AssertionError("unreachable")

    def _start_fork_server(self) -> None:
        popen = self.fork_server.start()
        pidfd = os.pidfd_open(popen.pid)
        self._selector.register(pidfd, selectors.EVENT_READ, popen)

    def _restart_fork_server(self) -> None:
        """Replace a dead (or unresponsive) fork server. Its workers are not
        its children, so they keep serving."""
        popen = self.fork_server.popen
        if popen is not None and popen.poll() is None:
            popen.kill()
        self.fork_server.forget()
        self._start_fork_server()

    def _watch(self, process: WorkerProcess) -> None:
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            # Gone already and reaped by someone else: nothing to wait for.
            process._exited_with(ExitStatus(None))
            return
        process.pidfd = pidfd
        self._workers[process.pid] = process
        self._selector.register(pidfd, selectors.EVENT_READ, process)

    # ------------------------------------------------------------ launcher thread

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                elif isinstance(key.data, WorkerProcess):
                    self._reap(key.fd, key.data)
                else:
                    self._fork_server_exited(key.fd, key.data)
            while self._requests:
                action, future = self._requests.popleft()
                try:
                    future.set_result(action())
                except BaseException as exc:
                    future.set_exception(exc)
            if self._closing and not self._workers:
                return

    def _fork_server_exited(self, pidfd: int, popen: subprocess.Popen) -> None:
        self._selector.unregister(pidfd)
        os.close(pidfd)
        returncode = popen.wait()
        if popen is self.fork_server.popen:
            self.fork_server.forget()
            if not self._closing:
                log.warning("fork server %d %s; starting a new one", popen.pid, ExitStatus(returncode).describe())
                self._start_fork_server()

    def _reap(self, pidfd: int, process: WorkerProcess) -> None:
        self._selector.unregister(pidfd)
        if process.popen is not None:
            returncode: int | None = process.popen.wait()
        else:
            returncode = _wait_pidfd(pidfd)
        with process._lock:
            process.pidfd = None
            os.close(pidfd)
        del self._workers[process.pid]
        try:
            os.unlink(process.socket_path)
        except FileNotFoundError:
            pass
        process._exited_with(ExitStatus(returncode))


def _wait_pidfd(pidfd: int) -> int | None:
    """Reap a forked worker (our child by adoption) and decode its status."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    except ChildProcessError:
        return None  # not adopted after all: someone else reaps it
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # One malloc arena: grpc under a tight address-space limit behaves, and an
    # idle worker keeps less memory.
    env.setdefault("MALLOC_ARENA_MAX", "1")
    return env
