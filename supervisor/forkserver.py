"""The supervisor's side of one fork server process (see worker/forkserver.py):
starting it and speaking its protocol.

One `ForkServer` is one process and its control channel; a replacement is a
new object (forkserver_keeper.py decides when). The process is started from
the launcher thread, so that its parent-death signal stays armed for the
supervisor's lifetime, which also reads its "ready" message there. Requests
may then come from any thread; one lock keeps request and answer paired on
the control socket.
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
# What workers and the fork server create is theirs alone.
WORKER_UMASK = 0o077


class ForkServerFailed(WorkerStartError):
    """The fork server died, hung or broke its protocol: it must be replaced
    (unlike a refusal to fork one worker, which it answers properly)."""


class ForkServerGone(ForkServerFailed):
    """The fork server closed its control channel, which it does only by
    exiting."""


class ForkServer:
    def __init__(self, popen: subprocess.Popen, control: socket.socket):
        self.popen = popen
        self.control_fd = control.fileno()
        self._control: socket.socket | None = control
        self._lock = threading.Lock()
        self._broken: str | None = None
        self.killed_because: str | None = None

    @classmethod
    def start(cls, python: str, env: dict[str, str], merge_pages: bool = False) -> ForkServer:
        """Start the process, without waiting for its imports to finish.
        Call from the launcher thread. It starts as clean as the workers it
        forks inherit: `env` only, in `/`, umask 077, no descriptor of ours
        but its control socket (its stderr stays ours: it runs no agent code).
        `merge_pages`: offer what workers inherit to the kernel's same-page
        merging (worker/page_merging.py)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(
                [python, *WORKER_PYTHON_FLAGS, "-m", "caxton.worker.forkserver", "--control-fd", str(theirs.fileno()),
                 "--parent-pid", str(os.getpid()), *(["--merge-pages"] if merge_pages else [])],
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                umask=WORKER_UMASK,
                start_new_session=True,
                env=env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(popen, ours)

    def read_ready(self) -> bool:
        """Non-blocking, for the launcher thread while the control socket is
        readable: True once the "ready" message has arrived, False if
        nothing has yet. Raises ForkServerGone if the channel closed,
        ForkServerFailed if it carried something else."""
        with self._lock:
            if self._control is None:
                raise ForkServerGone("the fork server's control channel is closed")
            try:
                data = self._control.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise ForkServerFailed(f"the fork server failed while starting: {exc}") from exc
        if not data:
            raise ForkServerGone("the fork server closed its control channel while starting")
        try:
            if json.loads(data).get("ready") is True:
                return True
        except ValueError:
            pass
        raise ForkServerFailed(f"unexpected first message from the fork server: {data[:200]!r}")

    def spawn(self, socket_path: str, cgroup_procs: list[str], ready_w: int, output_w: int, deadline: float,
              gid: int = -1) -> int:
        """Ask a ready fork server for a worker serving on `socket_path`,
        with `ready_w` as its ready pipe and `output_w` as its stderr, in
        group `gid` (-1: the server's); returns its pid. Raises
        ForkServerFailed if the server does not answer properly by
        `deadline` (and from then on at once), plain WorkerStartError if it
        answers that it could not fork."""
        with self._lock:
            if self._broken is not None:
                raise ForkServerFailed(self._broken)
            if self._control is None:
                raise ForkServerFailed("the fork server's control channel is closed")
            try:
                request = {"socket": socket_path, "cgroup_procs": cgroup_procs, "gid": gid}
                socket.send_fds(self._control, [json.dumps(request).encode()], [ready_w, output_w])
                reply = self._expect_pid(self._control, deadline)
            except (OSError, ValueError) as exc:
                # An answer may still be on its way: the channel is out of
                # step for good, so nobody may use it again.
                self._broken = f"the fork server failed: {exc}"
                raise ForkServerFailed(self._broken) from exc
        if "error" in reply:
            raise WorkerStartError(f"the fork server could not fork a worker: {reply['error']}")
        return int(reply["pid"])

    @staticmethod
    def _expect_pid(control: socket.socket, deadline: float) -> dict:
        control.settimeout(max(0.001, deadline - time.monotonic()))
        data = control.recv(65536)
        if not data:
            raise OSError("the fork server closed its control channel")
        reply = json.loads(data)
        if "pid" not in reply and "error" not in reply:
            raise ValueError(f"unexpected message from the fork server: {reply}")
        return reply

    def kill(self, reason: str) -> None:
        """SIGKILL it, remembering why for the log. Launcher thread only:
        that is where it is reaped, so its pid cannot have been recycled."""
        if self.popen.returncode is None:
            self.killed_because = reason
            self.popen.kill()

    def close(self) -> None:
        """Close the channel (a live server then exits by itself)."""
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
