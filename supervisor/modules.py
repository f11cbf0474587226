"""Module files: agents' WebAssembly, stored by SHA-256, and their compiled forms.

Identical modules are stored once and a version record can never point at
bytes that changed under it: a file's name is its content's digest. The
compiled-module cache beside them holds native code, so both directories are
owner-only. Which modules are still referred to is the state store's
question (store.py); this module only keeps the files.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

# Owner-only: module bytes are an operator's data, compiled modules native code.
FILE_MODE = 0o600


class ModuleFiles:
    def __init__(self, state_dir: Path) -> None:
        self.modules_dir = Path(state_dir) / "modules"
        self.cache_dir = Path(state_dir) / "cache"
        for directory in (self.modules_dir, self.cache_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Tightened if made earlier (by hand, by an older version):
            # nobody else may plant a compiled module here.
            os.chmod(directory, 0o700)

    def put(self, wasm: bytes) -> str:
        """Store module bytes durably; returns their SHA-256 (hex)."""
        digest = hashlib.sha256(wasm).hexdigest()
        path = self.path(digest)
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with open(fd, "wb") as f:
                f.write(wasm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            # The rename is durable only once the directory is: without this
            # a crash could leave a record pointing at a module that is gone.
            directory = os.open(self.modules_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return digest

    def path(self, digest: str) -> Path:
        return self.modules_dir / f"{digest}.wasm"

    def problem(self, digest: str) -> str:
        """Why the module file of `digest` cannot be used ("" if it can): it
        is missing or empty. Its bytes are checked against the digest where
        they are compiled (the worker)."""
        try:
            size = self.path(digest).stat().st_size
        except FileNotFoundError:
            return f"module {digest[:12]} is missing from the state directory"
        except OSError as exc:
            return f"module {digest[:12]} cannot be read ({exc.strerror})"
        return f"module {digest[:12]} is an empty file" if size == 0 else ""

    def delete(self, digest: str) -> None:
        """Delete a module and its compiled forms (with their recorded digests)."""
        self.path(digest).unlink(missing_ok=True)
        for cached in self.cache_dir.glob(f"{digest}-*"):
            cached.unlink(missing_ok=True)
