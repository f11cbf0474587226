"""The first-start admin token: `<state-dir>/admin.token`, owner-only.

A supervisor whose config names no tokens still authenticates every call:
at its first start it creates an admin token in its state directory (as
Jupyter does), and later starts use the same one. The CLI looks there, so a
developer's first run needs no setup, while a worker running as another
user (its own uid, or `sandbox.user`) can read neither the file nor the state
directory around it.

The file appears complete or not at all: the token is written to a private
temporary file (O_CREAT|O_EXCL, mode 0600) and hard-linked into place, which
fails rather than replaces if another start got there first. The token itself
is never logged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from caxton.contract import ADMIN_TOKEN_FILE

from .auth import Role, TokenEntry, new_token, token_sha256

ADMIN_TOKEN_NAME = "admin"


def _create(path: Path) -> bool:
    """Whether this call put the file in place (False: another start did)."""
    token = new_token()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, f"{token}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False  # another start made it first: theirs stands
        return True
    finally:
        os.unlink(temporary)


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ValueError(f"{path} belongs to uid {info.st_uid}, not to this supervisor (uid {os.geteuid()})")
        if info.st_mode & 0o077:
            raise ValueError(f"{path} is readable or writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                             f"run `chmod 600 {path}`, or remove it for a new token")
        token = os.read(fd, 4096).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not token:
        raise ValueError(f"{path} is empty: remove it, and a new admin token is created at the next start")
    return token


def admin_token(state_dir: Path) -> tuple[TokenEntry, bool]:
    """The admin token entry for `<state_dir>/admin.token`, created if
    missing, and whether this call created it. ValueError says what is
    wrong with a file that cannot be trusted."""
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    created = False
    try:
        token = _read(path)
    except FileNotFoundError:
        created = _create(path)
        token = _read(path)
    return TokenEntry(ADMIN_TOKEN_NAME, Role.ADMIN, token_sha256(token)), created
