"""The escape probe: a test-only host call that acts as an agent that broke
out of wasm would, from inside a real, fully set-up worker.

`caxton_test.escape(ptr, len) -> i32` reads a command from the agent's
memory, tries it with the worker's own credentials, filter and namespaces,
and returns the errno it got (0: the attempt succeeded, -1: an unknown
command); a call the filter treats as hostile kills the worker instead. It
also logs the outcome as the agent's log line.

Commands: `tcp:PORT` (connect to 127.0.0.1:PORT), `kill:PID` (signal 0),
`unshare` (new user and network namespaces), `ptrace:PID` (PTRACE_ATTACH),
`environ:PID` (read /proc/PID/environ), `write:PATH` (open for writing,
creating it).

It is never reachable in production: it is linked only when the worker's
environment has CAXTON_WORKER_ESCAPE_PROBE=1, and the validation policy
rejects the import unless a policy names it in `allowed_imports`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Callable

import wasmtime

ENV = "CAXTON_WORKER_ESCAPE_PROBE"
MODULE = "caxton_test"
NAME = "escape"

_I32 = wasmtime.ValType.i32()
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PTRACE_ATTACH = 16
_PTRACE_DETACH = 17
_UNKNOWN = -1
_libc = ctypes.CDLL(None, use_errno=True)


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def define(linker: wasmtime.Linker, log: Callable[[str], None]) -> None:
    """Link `caxton_test.escape`; `log` records the outcome of each attempt."""

    def escape(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        command = memory.read(caller, ptr, ptr + length).decode("utf-8", "replace")
        code = attempt(command)
        outcome = "SUCCEEDED" if code == 0 else "unknown command" if code < 0 else errno.errorcode.get(code, str(code))
        log(f"escape probe {command}: {outcome}")
        return code

    linker.define_func(MODULE, NAME, wasmtime.FuncType([_I32, _I32], [_I32]), escape, access_caller=True)


def attempt(command: str) -> int:
    """Try `command`; the errno it failed with, 0 if it worked."""
    kind, _, argument = command.partition(":")
    try:
        if kind == "tcp":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(("127.0.0.1", int(argument)))
        elif kind == "kill":
            os.kill(int(argument), 0)
        elif kind == "unshare":
            _call(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET))
        elif kind == "ptrace":
            pid = int(argument)
            _call(_libc.ptrace(_PTRACE_ATTACH, pid, None, None))
            _libc.ptrace(_PTRACE_DETACH, pid, None, None)
        elif kind == "environ":
            with open(f"/proc/{int(argument)}/environ", "rb") as f:
                f.read(1)
        elif kind == "write":
            os.close(os.open(argument, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        else:
            return _UNKNOWN
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _call(rc: int) -> None:
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
