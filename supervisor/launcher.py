"""The launcher: the one place the rest of the supervisor starts workers
from, learns of their exits, and asks whether workers can be started.

A facade over the parts that do the work: the launcher thread that forks
and watches (launcher_thread.py), the reaper that notices exits through
pidfds (reaper.py), the start strategies (starters.py, with the fork
server's keeper in forkserver_keeper.py), the exit-callback thread
(callbacks.py), the start capacity (capacity.py), the worker uids (uids.py)
and the reader of the workers' output (worker_output.py).

Every worker, exec-started or forked, starts clean: the environment
`worker_environment` builds (nothing else of the supervisor's), working
directory `/`, umask 077, stdin /dev/null, its stderr a pipe the supervisor
reads, and no other descriptor of the supervisor's.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from . import grpc_engine
from .callbacks import CallbackThread
from .capacity import Capacity, CapacityListener
from .errors import WorkerStartError
from .launcher_thread import LauncherThread
from .process import ExitStatus, WorkerProcess
from .reaper import Reaper
from .restart import RestartSettings
from .starters import ExecStarter, ForkStarter, Starter
from .uids import UidAllocator
from .worker_output import WorkerOutput

__all__ = ["START_RESTART", "ExitStatus", "Launcher", "WorkerProcess", "WorkerStartError", "worker_environment"]

# Variables a worker gets from the supervisor's environment, when set; every
# CAXTON_WORKER_* variable is passed too (settings meant for workers).
_PASSED_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")
WORKER_VARIABLE_PREFIX = "CAXTON_WORKER_"

# Backoff for what starts workers (the fork server; consecutive exec
# failures): a one-off death costs 50 ms, a crash loop slows to one attempt
# every 5 s within about 2 s, and the breaker marks the supervisor unable to
# start workers until an attempt succeeds.
START_RESTART = RestartSettings(initial_delay_s=0.05, max_delay_s=5.0, reset_after_s=30.0,
                                max_failures=5, window_s=60.0)


class Launcher:
    """Starts workers and reports their exits."""

    def __init__(self, runtime_dir: str, *, mode: str = "fork", python: str = sys.executable,
                 restart: RestartSettings = START_RESTART, uids: UidAllocator | None = None, gid: int = -1,
                 merge_pages: bool = False):
        """`uids`: give each worker a uid of its own from these (None: workers
        get none of their own). `gid`: the group a worker with no uid of its
        own takes (-1: it keeps ours); one with a uid of its own takes the
        gid of the same number. `merge_pages`: forked workers' inherited
        memory is offered to the kernel's same-page merging
        (worker/page_merging.py); exec-started workers inherit nothing."""
        if mode not in ("fork", "exec"):
            raise ValueError(f"worker start mode must be 'fork' or 'exec', not {mode!r}")
        self.runtime_dir = runtime_dir
        self.mode = mode
        self._counter = itertools.count(1)
        self._closed = False
        self._uids = uids
        self._gid = gid
        self._uids_lock = threading.Lock()
        self._exit_callbacks = CallbackThread("exit-callbacks")
        self._capacity_callbacks = CallbackThread("capacity-callbacks")
        self._capacity = Capacity(self._capacity_callbacks)
        self._thread = LauncherThread()
        self._reaper = Reaper(self._thread, self._exit_callbacks)
        self._output = WorkerOutput()
        env = worker_environment(os.environ)
        try:
            self._starter: Starter = (
                ForkStarter(python, env, self._thread, self._reaper, self._capacity, restart, merge_pages)
                if mode == "fork" else ExecStarter(python, env, self._thread, self._reaper, self._capacity, restart))
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
        uid = self._take_uid()
        output_r, output_w = os.pipe()
        # Read from before the start: what a worker writes while failing to
        # start is logged too.
        output = self._output.add(output_r)
        try:
            process = self._starter.start(socket_path, list(cgroup_procs), timeout, output_w,
                                          uid if uid >= 0 else self._gid)
        except BaseException:
            # No worker ran as `uid`: it switches only at Load.
            self._release_uid(uid)
            raise
        finally:
            os.close(output_w)
        output.pid = process.pid
        process.output = output
        if uid >= 0:
            process.uid = uid
            # Exit callbacks run after the reaper has reaped the process:
            # from then on no process holds the uid.
            process.add_exit_callback(lambda _status: self._release_uid(uid))
        return process

    def _take_uid(self) -> int:
        if self._uids is None:
            return -1
        with self._uids_lock:
            return self._uids.take()

    def _release_uid(self, uid: int) -> None:
        if self._uids is not None and uid >= 0:
            with self._uids_lock:
                self._uids.release(uid)

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
        self._output.close(max(time.monotonic() + 0.1, deadline))
        self._thread.stop(max(0.1, deadline - time.monotonic()))
        for callbacks in (self._exit_callbacks, self._capacity_callbacks):
            callbacks.close(max(0.1, deadline - time.monotonic()))


def worker_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a worker and of the fork server, from the
    supervisor's (`source`): an allow-list, so none of its tokens, proxy
    settings, credentials or home reach agent code."""
    env = {name: source[name] for name in _PASSED_VARIABLES if name in source}
    env.setdefault("PATH", os.defpath)
    env.update((name, value) for name, value in source.items() if name.startswith(WORKER_VARIABLE_PREFIX))
    # One malloc arena: grpc under a tight address-space limit behaves, and an
    # idle worker keeps less memory.
    env["MALLOC_ARENA_MAX"] = "1"
    # The supervisor's choice of gRPC engine (grpc_engine.py): the worker
    # link's other end.
    env.update(grpc_engine.environment(source))
    return env
