"""OS-level guards a worker applies to itself.

They run first thing in the worker process, before it imports wasmtime or
grpc, so that nothing the agent can reach runs without them. Applying them in
the worker (instead of a `preexec_fn` in the supervisor) keeps process
creation safe in the multi-threaded supervisor and works the same for a
worker started by exec or forked from a fork server.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent goes away.

    If the parent already died before the request took effect, we have been
    re-parented and nobody will ever signal us: exit now.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def no_new_privileges() -> None:
    """Forbid gaining privileges through exec of setuid binaries."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def no_core_dumps() -> None:
    """A core dump of a worker would write agent memory to disk."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def name_process(name: str) -> None:
    """Set the name `ps -o comm`, `top` and psutil show (15 bytes at most).
    Forked workers share the fork server's command line; the name tells
    them apart."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


WORKER_PROCESS_NAME = "caxton-worker"
FORK_SERVER_PROCESS_NAME = "caxton-forksrv"


def apply_process_guards(parent_pid: int) -> None:
    """Everything a worker does to itself before it runs any agent code."""
    name_process(WORKER_PROCESS_NAME)
    die_with_parent(parent_pid)
    no_new_privileges()
    no_core_dumps()
