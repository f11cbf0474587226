"""Starting worker processes and noticing, at once, when they exit.

One long-lived thread does both. Spawning there matters: the kernel sends a
worker its parent-death signal when the *thread* that forked it exits, so
workers must never be forked from short-lived RPC threads. The same thread
watches every worker through a pidfd in one selector, so an exit is seen the
moment it happens (no polling), for a thousand workers without a thousand
waiting threads.
"""

from __future__ import annotations

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

log = logging.getLogger("caxton.launcher")


class WorkerStartError(Exception):
    pass


@dataclass(frozen=True)
class ExitStatus:
    """How a worker ended, in the words a person wants to read."""

    returncode: int

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.returncode}"


class WorkerProcess:
    """A running worker, from the supervisor's side."""

    def __init__(self, popen: subprocess.Popen, socket_path: str, ready_fd: int):
        self.popen = popen
        self.pid = popen.pid
        self.socket_path = socket_path
        self.started_at = time.monotonic()
        self._ready_fd = ready_fd
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
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise WorkerStartError(f"worker {self.pid} did not become ready within {timeout:.1f}s; killed it")
                readable, _, _ = select.select([self._ready_fd], [], [], remaining)
                if not readable:
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
        if self.exit_status is None:
            try:
                self.popen.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass


class Launcher:
    """Spawns workers and reports their exits."""

    def __init__(self, runtime_dir: str, *, python: str = sys.executable):
        self.runtime_dir = runtime_dir
        self._python = python
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._requests: deque[tuple[Callable[[], WorkerProcess], Future]] = deque()
        self._workers: dict[int, WorkerProcess] = {}
        self._closing = False
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="launcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public

    def spawn(self, timeout: float) -> WorkerProcess:
        """Start a worker and wait until it is ready to take `Load`."""
        with self._counter_lock:
            self._counter += 1
            socket_path = os.path.join(self.runtime_dir, f"w{self._counter}.sock")
        future: Future = Future()
        self._requests.append((lambda: self._start(socket_path), future))
        self._wake()
        process = future.result()
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
        for worker in list(self._workers.values()):
            worker.kill()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            worker.wait_exit(max(0.0, deadline - time.monotonic()))
        self._wake()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------ launcher thread

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _start(self, socket_path: str) -> WorkerProcess:
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        ready_r, ready_w = os.pipe()
        try:
            popen = subprocess.Popen(
                [self._python, "-m", "worker", "--socket", socket_path,
                 "--ready-fd", str(ready_w), "--parent-pid", str(os.getpid())],
                pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL,
                # Workers share the supervisor's stderr (the journal under
                # systemd); the supervisor's own output stays on stdout.
                stdout=subprocess.DEVNULL,
                close_fds=True,
                # Own session: a Ctrl-C or SIGTERM aimed at the supervisor's
                # process group must reach the supervisor only, which then
                # drains its workers; the parent-death signal still ends them
                # if the supervisor dies.
                start_new_session=True,
                env=_worker_env(),
            )
        except OSError as exc:
            os.close(ready_r)
            raise WorkerStartError(f"cannot start worker: {exc}") from exc
        finally:
            os.close(ready_w)
        process = WorkerProcess(popen, socket_path, ready_r)
        pidfd = os.pidfd_open(popen.pid)
        self._workers[popen.pid] = process
        self._selector.register(pidfd, selectors.EVENT_READ, process)
        return process

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._reap(key.fd, key.data)
            while self._requests:
                action, future = self._requests.popleft()
                try:
                    future.set_result(action())
                except BaseException as exc:
                    future.set_exception(exc)
            if self._closing and not self._workers:
                return

    def _reap(self, pidfd: int, process: WorkerProcess) -> None:
        self._selector.unregister(pidfd)
        os.close(pidfd)
        returncode = process.popen.wait()
        del self._workers[process.pid]
        try:
            os.unlink(process.socket_path)
        except FileNotFoundError:
            pass
        process._exited_with(ExitStatus(returncode))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers must import the same code the supervisor runs, wherever the
    # supervisor was started from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proto = os.path.join(root, "proto")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, proto, env.get("PYTHONPATH", "")) if p)
    # One malloc arena: grpc under a tight address-space limit behaves, and an
    # idle worker keeps less memory.
    env.setdefault("MALLOC_ARENA_MAX", "1")
    return env
