"""The launcher: the one place the rest of the supervisor starts workers
from, learns of their exits, and asks whether workers can be started.

A facade over the parts that do the work: the launcher thread that forks
and watches (launcher_thread.py), the reaper that notices exits through
pidfds (reaper.py), the start strategies (starters.py, with the fork
server's keeper in forkserver_keeper.py), the exit-callback thread
(callbacks.py) and the start capacity (capacity.py).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Sequence

from .callbacks import CallbackThread
from .capacity import Capacity, CapacityListener
from .errors import WorkerStartError
from .launcher_thread import LauncherThread
from .process import ExitStatus, WorkerProcess
from .reaper import Reaper
from .restart import RestartSettings
from .starters import ExecStarter, ForkStarter, Starter

__all__ = ["START_RESTART", "ExitStatus", "Launcher", "WorkerProcess", "WorkerStartError"]

# Backoff for what starts workers (the fork server; consecutive exec
# failures): a one-off death costs 50 ms, a crash loop slows to one attempt
# every 5 s within about 2 s, and the breaker marks the supervisor unable to
# start workers until an attempt succeeds.
START_RESTART = RestartSettings(initial_delay_s=0.05, max_delay_s=5.0, reset_after_s=30.0,
                                max_failures=5, window_s=60.0)


class Launcher:
    """Starts workers and reports their exits."""

    def __init__(self, runtime_dir: str, *, mode: str = "fork", python: str = sys.executable,
                 restart: RestartSettings = START_RESTART):
        if mode not in ("fork", "exec"):
            raise ValueError(f"worker start mode must be 'fork' or 'exec', not {mode!r}")
        self.runtime_dir = runtime_dir
        self.mode = mode
        self._counter = itertools.count(1)
        self._closed = False
        self._exit_callbacks = CallbackThread("exit-callbacks")
        self._capacity_callbacks = CallbackThread("capacity-callbacks")
        self._capacity = Capacity(self._capacity_callbacks)
        self._thread = LauncherThread()
        self._reaper = Reaper(self._thread, self._exit_callbacks)
        strategy = ForkStarter if mode == "fork" else ExecStarter
        try:
            self._starter: Starter = strategy(python, _worker_env(), self._thread, self._reaper, self._capacity,
                                              restart)
        except BaseException:
            self._stop_threads(time.monotonic() + 1.0)
            raise

    def spawn(self, timeout: float, cgroup_procs: Sequence[str] = ()) -> WorkerProcess:
        """Start a worker and wait until it is ready to take `Load`. The
        worker first joins the cgroups whose `cgroup.procs` files are given.
        Raises WorkerStartError, at once if the fork server is down."""
        if self._closed:
            raise WorkerStartError("the launcher is closed")
        socket_path = os.path.join(self.runtime_dir, f"w{next(self._counter)}.sock")
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        return self._starter.start(socket_path, list(cgroup_procs), timeout)

    @property
    def can_start_workers(self) -> bool:
        """False while starting workers keeps failing (the fork server's
        restart breaker is open, or exec starts keep failing); True again at
        the next successful start or fork server that comes up."""
        return self._capacity.up

    def on_capacity_change(self, callback: CapacityListener) -> None:
        """Call `callback(can_start_workers)` once with the current value,
        then at every change, in order, on the launcher's capacity-callback
        thread (never on the launcher thread)."""
        self._capacity.subscribe(callback)

    def responsive(self, timeout: float) -> bool:
        """The launcher thread runs a no-op within `timeout`: it is neither
        dead nor stuck (the systemd watchdog's question)."""
        try:
            self._thread.call(lambda: None, timeout)
        except Exception:
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Kill every worker still running and stop the launcher's threads."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._starter.close(deadline)
        self._reaper.wait_all(self._reaper.kill_all(), deadline)
        self._stop_threads(deadline)

    def _stop_threads(self, deadline: float) -> None:
        self._thread.stop(max(0.1, deadline - time.monotonic()))
        for callbacks in (self._exit_callbacks, self._capacity_callbacks):
            callbacks.close(max(0.1, deadline - time.monotonic()))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # One malloc arena: grpc under a tight address-space limit behaves, and an
    # idle worker keeps less memory.
    env.setdefault("MALLOC_ARENA_MAX", "1")
    return env
