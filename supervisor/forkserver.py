"""The supervisor's side of the fork server (see worker/forkserver.py).

The fork server process is started from the launcher thread, so that its
parent-death signal stays armed for the supervisor's lifetime. Requests may
come from any thread; one lock keeps request and answer paired on the
control socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

from .errors import WorkerStartError

# Workers and the fork server run the installed `caxton` package in isolated
# mode: neither the current directory nor PYTHONPATH nor the user's site
# directory is on their import path, so a stray `caxton.py` or `worker.py`
# where the supervisor was started can never run in their place.
WORKER_PYTHON_FLAGS = ("-I",)


class ForkServer:
    def __init__(self, python: str, env: dict[str, str]):
        self._python = python
        self._env = env
        self._lock = threading.Lock()
        self.popen: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._ready = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> subprocess.Popen:
        """Start the process (without waiting for its imports to finish).
        Call from the launcher thread."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(
                [self._python, *WORKER_PYTHON_FLAGS, "-m", "caxton.worker.forkserver", "--control-fd", str(theirs.fileno()),
                 "--parent-pid", str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env=self._env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        with self._lock:
            self.popen, self._control, self._ready = popen, ours, False
        return popen

    def spawn(self, socket_path: str, cgroup_procs: list[str], ready_w: int, timeout: float) -> int:
        """Ask for a worker serving on `socket_path`; returns its pid."""
        with self._lock:
            control = self._control
            if control is None:
                raise WorkerStartError("the fork server is not running")
            deadline = time.monotonic() + timeout
            try:
                if not self._ready:
                    self._expect(control, deadline, "ready")
                    self._ready = True
                request = {"socket": socket_path, "cgroup_procs": cgroup_procs}
                socket.send_fds(control, [json.dumps(request).encode()], [ready_w])
                reply = self._expect(control, deadline, "pid")
            except (OSError, ValueError) as exc:
                raise WorkerStartError(f"the fork server failed: {exc}") from exc
        if "error" in reply:
            raise WorkerStartError(f"the fork server could not fork a worker: {reply['error']}")
        return int(reply["pid"])

    @staticmethod
    def _expect(control: socket.socket, deadline: float, key: str) -> dict:
        remaining = deadline - time.monotonic()
        control.settimeout(max(0.001, remaining))
        data = control.recv(65536)
        if not data:
            raise OSError("the fork server closed its control channel")
        reply = json.loads(data)
        if key not in reply and "error" not in reply:
            raise ValueError(f"unexpected message from the fork server: {reply}")
        return reply

    def forget(self) -> None:
        """The process exited: drop the channel so the next start is clean."""
        with self._lock:
            if self._control is not None:
                self._control.close()
            self.popen, self._control, self._ready = None, None, False

    def close(self) -> None:
        """Closing the channel makes the fork server exit by itself."""
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
