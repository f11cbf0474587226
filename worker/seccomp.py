"""The worker's system-call filter: what a worker may still ask of the kernel
once it serves an agent, for the day an agent escapes the wasm sandbox.

Installed once per worker, after the module is compiled and privileges are
dropped and before any agent code runs (worker/service.py, Load), on every
thread at once (TSYNC: gRPC's and the epoch ticker's threads already exist).
It is built before that, while the worker is still a spare (`prepare`,
worker/server.py): building takes about 1 ms of a new process's time,
loading a quarter of that, and only the loading is on a deploy's path.
Everything not listed fails with EPERM; the clearly hostile calls kill the
whole worker (SIGSYS), which the supervisor sees as a crash. The filter is
built with libseccomp, not assembled as BPF by hand.

Why ctypes over libseccomp.so.2: `pyseccomp` is not a dependency of the
project, and Debian's python3-seccomp cannot be imported from a virtual
environment. Only six calls are needed. Rules with argument checks go
through `seccomp_rule_add_array` (the non-variadic twin of
`seccomp_rule_add`), so no struct is ever passed through C varargs.

Where libseccomp is missing or the kernel refuses the filter, the worker
keeps serving and says so (`os:seccomp-unavailable(<reason>)`, logged once).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("caxton.worker.seccomp")

LAYER = "os:seccomp"

# libseccomp's actions (seccomp.h).
_ACT_KILL_PROCESS = 0x80000000
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO_BASE = 0x00050000
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_OPTIMIZE = 8
# enum scmp_compare
_CMP_EQ = 4
_CMP_MASKED_EQ = 7

_AF_UNIX = 1
_PR_SET_NAME = 15
_PR_SET_VMA = 0x53564D41
_CLONE_THREAD = 0x00010000
# open flags that make an open write or create (asm-generic values, x86_64 too).
_O_WRONLY = 0o1
_O_RDWR = 0o2
_O_CREAT = 0o100
_O_TRUNC = 0o1000
_WRITE_FLAGS = _O_WRONLY | _O_RDWR | _O_CREAT | _O_TRUNC

# What a loaded worker calls while it serves messages: gRPC over its Unix
# socket, wasmtime running, trapping and re-instantiating the agent (memory
# images are memfds), the epoch ticker, logging to stderr, Shutdown and the
# interpreter's exit. Measured, not guessed: test_containment, test_fastcall,
# test_agent_send_abi, test_floods, test_hot_reload, test_os_limits,
# test_agent_messaging, test_restart, test_idle, test_recovery and
# test_agent_lifecycle ran (fork mode, 325 tests) with each fork server under
# `strace -f -tt`, so every worker it forked was traced from birth, and with
# this filter's default action temporarily ALLOW; these are all the calls any
# worker thread made after the filter's own seccomp(SECCOMP_SET_MODE_FILTER)
# (clone3, openat and socket are ruled on below, with their arguments).
MEASURED = (
    "brk", "clock_nanosleep", "close", "epoll_wait", "exit", "exit_group", "fcntl", "futex", "getsockname",
    "gettid", "madvise", "memfd_create", "mmap", "mprotect", "munmap", "read", "recvmsg", "rseq",
    "rt_sigprocmask", "rt_sigreturn", "sched_getparam", "sched_getscheduler", "sendmsg", "set_robust_list",
    "shutdown", "sigaltstack", "stat", "write",
)
# Not seen after the filter in that run, but made by the same workers before
# it on paths that can recur later: accepting a reconnecting supervisor
# (accept4, epoll_*, eventfd2, pipe2, socket options), a signal restarting an
# interrupted sleep (restart_syscall), glibc's realloc of a large block
# (mremap), absl's spin locks (sched_yield), Python's file and clock checks.
KEPT = (
    "accept4", "epoll_ctl", "epoll_create1", "eventfd2", "pipe2", "getsockopt", "setsockopt", "getpeername",
    "sendto", "recvfrom", "restart_syscall", "mremap", "sched_yield", "nanosleep", "clock_gettime",
    "gettimeofday", "getrandom", "newfstatat", "fstat", "statx", "lseek", "ioctl", "getpid", "getppid",
    "geteuid", "rt_sigaction",
)
ALLOWED = MEASURED + KEPT

# Calls with no place in a worker that only an escaped agent would make: the
# worker is killed on the spot rather than told EPERM and left running.
HOSTILE = (
    "ptrace", "process_vm_readv", "process_vm_writev", "unshare", "setns", "mount", "umount2", "pivot_root",
    "chroot", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "pidfd_getfd", "kcmp", "process_madvise",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "swapon", "swapoff", "reboot", "iopl", "ioperm", "acct", "quotactl", "settimeofday", "clock_settime",
    "adjtimex", "clock_adjtime",
)


def _errno_action(code: int) -> int:
    return _ACT_ERRNO_BASE | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class Rule:
    """`action` for `syscall` when every (arg, op, a, b) comparison holds."""

    syscall: str
    action: int
    compare: tuple[tuple[int, int, int, int], ...] = ()


class SeccompUnavailable(Exception):
    """The filter cannot be installed here; the message says why."""


def rules(pid: int) -> list[Rule]:
    """The worker's filter, for the process `pid` (signals may go only to it)."""
    allow = [Rule(name, _ACT_ALLOW) for name in ALLOWED]
    hostile = [Rule(name, _ACT_KILL_PROCESS) for name in HOSTILE]
    narrowed = [
        # Unix sockets only: no TCP or UDP, no netlink, no raw packets.
        Rule("socket", _ACT_ALLOW, ((0, _CMP_EQ, _AF_UNIX, 0),)),
        Rule("socketpair", _ACT_ALLOW, ((0, _CMP_EQ, _AF_UNIX, 0),)),
        # New threads, never new processes.
        Rule("clone", _ACT_ALLOW, ((0, _CMP_MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD),)),
        # clone3's flags sit behind a pointer, out of a filter's reach:
        # ENOSYS makes glibc fall back to clone, which is checked above.
        Rule("clone3", _errno_action(errno.ENOSYS)),
        # Read-only opens: a worker writes nothing to the filesystem once it
        # serves an agent.
        Rule("openat", _ACT_ALLOW, ((2, _CMP_MASKED_EQ, _WRITE_FLAGS, 0),)),
        # gRPC names the threads it starts (PR_SET_NAME) and absl labels
        # its mappings (PR_SET_VMA); no other prctl.
        Rule("prctl", _ACT_ALLOW, ((0, _CMP_EQ, _PR_SET_NAME, 0),)),
        Rule("prctl", _ACT_ALLOW, ((0, _CMP_EQ, _PR_SET_VMA, 0),)),
        # Signals to itself only (Python's and gRPC's own wake-ups), never to
        # another process, whatever the uids.
        Rule("kill", _ACT_ALLOW, ((0, _CMP_EQ, pid, 0),)),
        Rule("tgkill", _ACT_ALLOW, ((0, _CMP_EQ, pid, 0),)),
    ]
    return allow + hostile + narrowed


_SONAME = "libseccomp.so.2"


class _Library:
    """The few libseccomp calls the filter needs, typed."""

    def __init__(self) -> None:
        # The soname first: find_library runs ldconfig in a subprocess,
        # 6 ms of every worker's Load.
        try:
            lib = ctypes.CDLL(_SONAME, use_errno=True)
        except OSError:
            name = ctypes.util.find_library("seccomp")
            if name is None:
                raise SeccompUnavailable("libseccomp not found") from None
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as exc:
                raise SeccompUnavailable("libseccomp not found") from exc
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_attr_set.restype = ctypes.c_int
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_load.restype = ctypes.c_int
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        self.lib = lib


@functools.cache
def _library() -> _Library:
    """Loaded once per process: the fork server loads it before forking
    (preload), so its workers share it instead of each opening it."""
    return _Library()


def preload() -> None:
    """Load libseccomp now, if there is one (for the fork server)."""
    try:
        _library()
    except SeccompUnavailable:
        pass


def _check(rc: int, what: str) -> None:
    # libseccomp returns -errno.
    if rc < 0:
        raise SeccompUnavailable(f"{what}: {os.strerror(-rc)}")


class Filter:
    """A filter built and not yet loaded: libseccomp's context, which owns
    C memory until `load` or `release`."""

    def __init__(self, filter_rules: Sequence[Rule], default_action: int = _errno_action(errno.EPERM)):
        """Raises SeccompUnavailable when libseccomp cannot build it."""
        self._lib = lib = _library().lib
        ctx = lib.seccomp_init(default_action)
        if not ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self._ctx: int | None = ctx
        try:
            _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_TSYNC, 1), "seccomp_attr_set(TSYNC)")
            # A binary tree of the calls rather than a list: a worker makes ~45
            # calls per message, most of them futex. libseccomp before 2.5
            # lacks the attribute and keeps the list, which only costs speed.
            lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, 2)
            for rule in filter_rules:
                number = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
                if number < 0:
                    continue  # not a call of this architecture (or kernel): nothing to rule on
                compare = (_ArgCmp * max(1, len(rule.compare)))(*(_ArgCmp(*c) for c in rule.compare))
                _check(lib.seccomp_rule_add_array(ctx, rule.action, number, len(rule.compare), compare),
                       f"rule for {rule.syscall}")
        except BaseException:
            self.release()
            raise

    def load(self) -> None:
        """Load it on every thread of this process, once; raises
        SeccompUnavailable when the kernel refuses."""
        if self._ctx is None:
            raise SeccompUnavailable("the filter was released")
        try:
            _check(self._lib.seccomp_load(self._ctx), "seccomp_load")
        finally:
            self.release()

    def release(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._lib.seccomp_release(ctx)


def install(filter_rules: Sequence[Rule], default_action: int = _errno_action(errno.EPERM)) -> None:
    """Build and load `filter_rules` on every thread of this process;
    raises SeccompUnavailable when libseccomp or the kernel cannot."""
    Filter(filter_rules, default_action).load()


# This process's filter, built by prepare(), with the pid it was built for:
# its rules name the pid, so a forked child must not load its parent's.
_prepared: tuple[int, Filter | SeccompUnavailable] | None = None
_warned = False


def prepare() -> None:
    """Build this worker's filter now, to be loaded by apply(); a reason it
    cannot be built is kept for apply() to report."""
    global _prepared
    pid = os.getpid()
    try:
        _prepared = (pid, Filter(rules(pid)))
    except SeccompUnavailable as exc:
        _prepared = (pid, exc)


def apply(enabled: bool) -> list[str]:
    """Install the worker's filter (when `enabled`; the one prepare() built,
    if it did); returns the layer names for status: [LAYER], [] when
    disabled, or a warning entry when the platform cannot filter."""
    global _prepared, _warned
    prepared, _prepared = _prepared, None
    built = prepared[1] if prepared is not None and prepared[0] == os.getpid() else None
    if not enabled:
        if isinstance(built, Filter):
            built.release()
        return []
    try:
        if isinstance(built, SeccompUnavailable):
            raise built
        (built or Filter(rules(os.getpid()))).load()
    except SeccompUnavailable as exc:
        if not _warned:
            log.warning("no system-call filter for this worker: %s", exc)
            _warned = True
        return [f"os:seccomp-unavailable({exc})"]
    return [LAYER]

