"""The runtime directory: where a supervisor's workers put their sockets.

Either the operator names it (`runtime_dir`, systemd's RuntimeDirectory) or
the supervisor makes a fresh private one under /tmp and removes it when it
stops. A supervisor that is killed (SIGKILL, a crash, the OOM killer)
outside systemd cannot remove it, so each start sweeps away the ones of
supervisors that are gone.

"Gone" is told by a lock, not by a pid (pids are reused): the supervisor
holds an exclusive flock on `supervisor.lock` in its directory for its whole
life, and the kernel drops it when the process ends, however it ends. A
directory is swept only if it is ours (our uid, named caxton-*, not a
symlink) and its lock can be taken. One without a lock file is left alone:
an older supervisor's, or one being made this moment. The lock file gets its
name only once it is locked (it is locked under a temporary name, then
renamed), so no sweep can take the lock of a supervisor that is starting.

The same lock stops a second supervisor from using a directory in use: it
would overwrite the first one's worker sockets.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .settings import ConfigError

log = logging.getLogger("caxton.supervisor")

LOCK_NAME = "supervisor.lock"
DEFAULT_PARENT = "/tmp"
PREFIX = "caxton-"


class RuntimeDirectory:
    """A runtime directory, locked by this process until `close()`."""

    def __init__(self, path: str, lock_fd: int, owned: bool):
        self.path = path
        self._lock_fd = lock_fd
        self._owned = owned  # made here: removed on close

    @classmethod
    def open(cls, configured: str, parent: str = DEFAULT_PARENT) -> RuntimeDirectory:
        """The configured directory (made if missing), or a fresh one under
        `parent` after sweeping `parent` of dead supervisors' directories.
        Raises ConfigError if another live supervisor holds the configured
        one."""
        if configured:
            os.makedirs(configured, mode=0o700, exist_ok=True)
            os.chmod(configured, 0o700)
            return cls(configured, _lock_configured(configured), owned=False)
        sweep_stale(parent)
        path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        try:
            return cls(path, _lock_fresh(path), owned=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def close(self) -> None:
        """Remove the directory if it was made here, then let the lock go."""
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock_configured(directory: str) -> int:
    """Lock a directory the operator named (used before, maybe): refused
    while another supervisor holds it. Returns the lock's descriptor
    (close-on-exec, so no worker holds the lock on)."""
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    if not _try_lock(fd):
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError("runtime_dir", f"{directory} is in use by another supervisor (pid {holder})")
    _write_pid(fd)
    return fd


def _lock_fresh(directory: str) -> int:
    """Lock a directory just made: locked under a temporary name, then
    renamed, so that a sweep never finds its lock file unlocked."""
    fd, temporary = tempfile.mkstemp(prefix=".lock-", dir=directory)
    os.set_inheritable(fd, False)
    _try_lock(fd)  # nobody else has this file open: always taken
    _write_pid(fd)
    os.rename(temporary, os.path.join(directory, LOCK_NAME))
    return fd


def _write_pid(fd: int) -> None:
    """Who holds the lock, for the error a second supervisor gets."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep_stale(parent: str = DEFAULT_PARENT) -> list[str]:
    """Remove the runtime directories under `parent` that supervisors of
    this uid made and left behind when they died; returns them."""
    removed = []
    for candidate in Path(parent).glob(f"{PREFIX}*"):
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        try:
            fd = os.open(candidate / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock: not a directory this sweep may judge
        try:
            if not _try_lock(fd):
                continue  # its supervisor is alive
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(str(candidate))
        log.info("removed %s, the runtime directory of a supervisor that did not stop cleanly", candidate)
    return removed
