"""OS-level guards a worker applies to itself.

Two moments:
- at start, before it imports wasmtime or grpc: its own group and no
  supplementary ones, die with the supervisor, no new privileges, no core
  dumps, and (when started as root) an empty network namespace of its own
  (`apply_process_guards`);
- at load, after the module is compiled (and cached, which needs the
  supervisor's privileges) and before any agent code runs: resource limits
  and an unprivileged user (`apply_os_limits`).

Applying them in the worker, instead of a `preexec_fn` in the supervisor,
keeps process creation safe in the multi-threaded supervisor and works the
same for a worker started by exec or forked from the fork server.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000

# A worker is "caxton-spare" until it loads an agent, "caxton-worker" after.
SPARE_PROCESS_NAME = "caxton-spare"
WORKER_PROCESS_NAME = "caxton-worker"
FORK_SERVER_PROCESS_NAME = "caxton-forksrv"

_libc = ctypes.CDLL(None, use_errno=True)
_parent_pid: int | None = None
# The network namespace layer for status, once apply_process_guards ran.
_netns_layer: str | None = None


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def name_process(name: str) -> None:
    """Set the name `ps -o comm`, `top` and psutil show (15 bytes at most).
    Forked workers share the fork server's command line; the name tells
    them apart. Tools read the main thread's name, and prctl(PR_SET_NAME)
    names only the calling thread, so the main thread's comm file is
    written instead: that works from any thread (Load runs on an RPC one)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent goes away.

    If the parent already died before the request took effect, we have been
    re-parented and nobody will ever signal us: exit now.
    """
    global _parent_pid
    _parent_pid = parent_pid
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def join_cgroups(procs_files: list[str]) -> None:
    """Move this process into the cgroups the supervisor made for it. A
    failure is not fatal: the supervisor confirms membership after start."""
    for path in procs_files:
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass


def apply_process_guards(parent_pid: int, gid: int = -1) -> None:
    """Everything a worker does to itself before it imports anything heavy.
    `gid`: the group it takes now (-1: keep ours)."""
    name_process(SPARE_PROCESS_NAME)
    take_group(gid)
    # After the group: changing credentials clears the parent-death signal.
    die_with_parent(parent_pid)
    # Forbid gaining privileges through exec of setuid binaries.
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    # A core dump of a worker would write agent memory to disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    enter_empty_network_namespace()


def enter_empty_network_namespace() -> None:
    """Move this process into a network namespace of its own, which has no
    interface but a downed loopback: no TCP or UDP reaches anything, even if
    a socket could be made. The worker's own socket is a Unix socket by path,
    which works across namespaces. Needs CAP_SYS_ADMIN, so only a worker
    started as root tries; a failure is reported in status, not fatal."""
    global _netns_layer
    if os.geteuid() != 0:
        return
    # os.unshare is Python 3.12+.
    if _libc.unshare(_CLONE_NEWNET) == 0:
        _netns_layer = "os:netns"
    else:
        _netns_layer = f"os:netns-unavailable({os.strerror(ctypes.get_errno())})"


@dataclass(frozen=True)
class OsLimits:
    data_bytes: int = 0   # allowance on top of the data size at load time
    open_files: int = 0
    cpu_seconds: int = 0
    uid: int = -1
    gid: int = -1


def take_group(gid: int) -> None:
    """Switch to group `gid` and drop every supplementary group, keeping
    the user (root still compiles the module and writes the cache at Load).

    Here, not at Load, because the process is still one thread: glibc
    makes every thread of a process take new credentials by signalling each
    one, and at Load a worker has 11 (measured there: setgroups 0.22 ms and
    setgid 0.14 ms of every deploy). Only root may, and only a worker of
    ours needs it. Nothing to do (no call) where it is in place already."""
    if gid < 0 or os.geteuid() != 0:
        return
    if os.getresgid() == (gid, gid, gid) and not os.getgroups():
        return
    os.setgroups([])
    os.setgid(gid)


def _data_size() -> int:
    """The process's current data size (VmData), which RLIMIT_DATA counts."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_os_limits(limits: OsLimits) -> list[str]:
    """Lower this process's limits and drop privileges; returns the layers
    now active (the start-time guards included), for status.

    RLIMIT_DATA rather than RLIMIT_AS: wasmtime's memories are configured to
    reserve no address space, so data size tracks real use, while address
    space would also count thread stacks and allocator arenas that say
    little about what an agent can take.
    """
    layers = ["os:parent-death-signal", "os:no-new-privs", "os:rlimit-core"]
    if _netns_layer is not None:
        layers.append(_netns_layer)
    if limits.data_bytes:
        cap = _data_size() + limits.data_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        layers.append("os:rlimit-data")
    if limits.open_files:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        layers.append("os:rlimit-nofile")
    if limits.cpu_seconds:
        # The soft limit sends SIGXCPU (which ends the worker); the hard
        # limit one second later is the kernel's SIGKILL backstop.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        layers.append("os:rlimit-cpu")
    if limits.uid >= 0 and os.geteuid() == 0:
        # Taken at start already, unless this worker was started without it.
        take_group(limits.gid)
        os.setuid(limits.uid)
        # Changing credentials clears the parent-death signal: arm it again.
        if _parent_pid is not None:
            die_with_parent(_parent_pid)
        layers.append(f"os:uid={limits.uid}")
    return layers
