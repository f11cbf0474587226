"""Fast calls into wasm: an exported function of fixed signature, called
through wasmtime-py's low-level ctypes bindings instead of `Func.__call__`.

Why: `Func.__call__` spends tens of microseconds in Python before and after
wasm runs: it reads the function's type over FFI (a FuncType, then its
parameter and result lists, each ValType built and compared over FFI),
converts every argument, allocates fresh `wasmtime_val_t` arrays and a trap
pointer, and unroots every argument afterwards. The worker calls two exports
per message (`caxton_alloc`, `caxton_handle`) whose signatures cannot change
while the instance lives, so all of that can be done once: a `FastCall`
checks the signature when it is built, keeps one preallocated argument and
result array, and calls `wasmtime_func_call_unchecked`, the C API's call
without per-call type checks. That is safe here because the signature was
checked, the arguments are plain integers (no references to root), and the
function belongs to the store it is bound to.

This reaches into wasmtime-py's private modules (`wasmtime._bindings`,
`wasmtime._func`), which may change in any release: pyproject.toml pins
wasmtime to the minor version this was tested with, and `available()` checks
once per process that the bindings are there and that probe calls give the
same results and errors through both paths; the sandbox falls back to
`Func.__call__` (logging once) when they do not. Traps and errors are raised
exactly as `Func.__call__` raises them (`_raise`); fuel, epoch deadlines and
memory limits are enforced inside wasmtime, the same for either call.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import wasmtime

from .wasmtime_version import installed_version

log = logging.getLogger("caxton.worker.fastcall")

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()
# Slots of a wasmtime_val_raw_t (16 bytes: the size of a v128) as seen by
# flat int32/int64 views of the argument array: indexing a flat ctypes array
# costs a fraction of building a union proxy per element.
_RAW_BYTES = 16
_I32_STRIDE = _RAW_BYTES // 4
_I64_STRIDE = _RAW_BYTES // 8


class FastCall:
    """One exported function, bound to its store, callable with int
    arguments: `call(*args) -> int` returns the single result as
    `Func.__call__` does (a signed i32 or i64). Parameters must be i32, and
    there must be exactly one i32 or i64 result."""

    __slots__ = ("_store", "_func", "_context", "_func_ref", "_args", "_i32", "_result", "_result_stride",
                 "_count", "_trap", "_trap_ref", "_entry")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, params: Sequence[wasmtime.ValType],
                 result: wasmtime.ValType):
        from wasmtime import _bindings, _ffi

        if any(p != _I32 for p in params) or result not in (_I32, _I64):
            raise ValueError("FastCall takes i32 parameters and one i32 or i64 result")
        ty = func.type(store)
        if list(ty.params) != list(params) or list(ty.results) != [result]:
            raise ValueError(f"the function's signature is {ty.params} -> {ty.results}, "
                             f"not {list(params)} -> [{result}]")
        # Both references keep what the raw pointers below point into alive.
        self._store = store
        self._func = func
        self._context = store._context()
        self._func_ref = ctypes.byref(func._func)
        self._count = max(len(params), 1)
        self._args = (_ffi.wasmtime_val_raw_t * self._count)()
        size = ctypes.sizeof(self._args)
        self._i32 = (ctypes.c_int32 * (size // 4)).from_buffer(self._args)
        if result == _I32:
            self._result: ctypes.Array[Any] = self._i32
            self._result_stride = _I32_STRIDE
        else:
            self._result = (ctypes.c_int64 * (size // 8)).from_buffer(self._args)
            self._result_stride = _I64_STRIDE
        self._trap = ctypes.POINTER(_ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)
        # The ctypes function itself, not its Python wrapper in _bindings:
        # one Python frame less per call.
        self._entry = _bindings._wasmtime_func_call_unchecked

    def call(self, *args: int) -> int:
        i32 = self._i32
        slot = 0
        for arg in args:
            i32[slot] = arg  # wraps to 32 bits, as Val.i32 does
            slot += _I32_STRIDE
        error = self._entry(self._context, self._func_ref, self._args, self._count, self._trap_ref)
        if error or self._trap:
            self._raise(error)
        return int(self._result[0])

    def _raise(self, error: Any) -> NoReturn:
        """Raise what `Func.__call__` raises for this outcome: an error
        before a trap, and in both cases a Python exception raised inside a
        host function (which wasmtime-py parks while wasm unwinds) instead
        of the trap or error that carried it out."""
        from wasmtime import _ffi, _func

        if error:
            exc: Exception = wasmtime.WasmtimeError._from_ptr(error)
        else:
            trap = self._trap
            # The Trap object owns (and frees) this pointer now: the next call
            # gets a fresh, null one.
            self._trap = ctypes.POINTER(_ffi.wasm_trap_t)()
            self._trap_ref = ctypes.byref(self._trap)
            exc = wasmtime.Trap._from_ptr(trap)
        _func.maybe_raise_last_exn()
        raise exc


_available: bool | None = None


def available(engine: wasmtime.Engine) -> bool:
    """Whether FastCall works with the installed wasmtime-py: the private
    bindings exist and probe calls (to host functions in a store of
    `engine`, so nothing is compiled) return the same values and raise the
    same errors as `Func.__call__`. Probed once per process, at the first
    sandbox's start; the answer cannot change within a process."""
    global _available
    if _available is None:
        try:
            mismatch = _probe(engine)
        except Exception as exc:  # any failure of the private path means: do not use it
            mismatch = f"{type(exc).__name__}: {exc}"
        if mismatch:
            log.warning("the fast wasm call path is unavailable with wasmtime %s (%s): using Func.__call__",
                        installed_version(), mismatch)
        _available = not mismatch
    return _available


def preload() -> None:
    """Probe now, in a throwaway engine (for the fork server: its workers
    inherit the answer instead of each paying ~1.5 ms for the probe at
    Load). The probe starts no thread, so forking afterwards is safe."""
    available(wasmtime.Engine())


class _ProbeError(Exception):
    pass


def _probe(engine: wasmtime.Engine) -> str:
    """'' when both paths agree on every probe, else what differed."""
    store = wasmtime.Store(engine)

    def host(ty: wasmtime.FuncType, fn: Callable[..., Any]) -> wasmtime.Func:
        return wasmtime.Func(store, ty, fn)

    def raising(a: int) -> int:
        raise _ProbeError(f"probe {a}")

    checks: list[tuple[wasmtime.Func, list[wasmtime.ValType], wasmtime.ValType, tuple[int, ...]]] = [
        (host(wasmtime.FuncType([_I32, _I32], [_I64]), lambda a, b: a * 65536 + b), [_I32, _I32], _I64,
         (-7, 0x12345678)),
        (host(wasmtime.FuncType([_I32, _I32], [_I64]), lambda a, b: a * 65536 + b), [_I32, _I32], _I64,
         (0x7FFFFFFF + 5, 0xFFFFFFFF)),
        (host(wasmtime.FuncType([_I32], [_I32]), lambda a: a ^ 0x5A5A5A5A), [_I32], _I32, (0x89ABCDEF,)),
        (host(wasmtime.FuncType([_I32], [_I32]), raising), [_I32], _I32, (3,)),
    ]
    for func, params, result, args in checks:
        fast = FastCall(store, func, params, result)
        public = _outcome(func, store, *(wasmtime.Val.i32(a) for a in args))
        # Twice: the second call reuses the arrays (and, after an error, the
        # fresh trap pointer) the first one left behind.
        for _ in range(2):
            got = _outcome(fast.call, *args)
            if got != public:
                return f"probe {args}: Func.__call__ gave {public!r}, the fast path {got!r}"
    return ""


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, str]:
    try:
        return ("value", repr(call(*args)))
    except Exception as exc:
        return (type(exc).__name__, str(exc))
