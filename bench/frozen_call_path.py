"""A frozen copy of the worker's per-message call path as it was before the
fast call path (worker/fastcall.py): the baseline that per-message figures
are read against, since the real `Sandbox.handle` has changed.

`FrozenCallPath.handle` does what `Sandbox.handle` did on 2026-11-30, in the
same order, through wasmtime-py's public API only: begin the host calls'
message, refill fuel and the epoch deadline, `caxton_alloc` through
`Func.__call__` (arguments as cached `wasmtime.Val`s), refresh the memory
view, bounds-check, write the content by slice assignment, `caxton_handle`
through `Func.__call__`, refresh the view, bounds-check and copy the reply
out, then take the logs and sends into an `Outcome`. Trap recovery is left
out: a benchmark that traps fails. Do not speed this file up: it is a
baseline.

The module is compiled with the worker's own engine configuration and host
calls (`engine_config`, `HostCalls`), so that it differs from the live
sandbox only in how it calls into wasm.
"""

from __future__ import annotations

import functools

import wasmtime

from caxton.v1 import caxton_pb2
from caxton.worker.hostcalls import HostCalls, MemoryView
from caxton.worker.sandbox import Outcome, SandboxLimits, engine_config

_i32 = functools.lru_cache(maxsize=4096)(wasmtime.Val.i32)
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
# A deadline far enough away to mean "never": no epoch ticker runs here, and
# the live sandbox's ticker costs nothing per message either.
_DEADLINE_TICKS = 1 << 62


class FrozenCallPath:
    """One instance of an agent, called the way Sandbox.handle called it."""

    def __init__(self, wasm: bytes, limits: SandboxLimits):
        self.limits = limits
        self.engine = wasmtime.Engine(engine_config(limits))
        module = wasmtime.Module(self.engine, wasm)
        self.host = HostCalls(max_message_bytes=limits.max_message_bytes, send_budget=limits.send_budget)
        linker = wasmtime.Linker(self.engine)
        self.host.define(linker)
        self._store = wasmtime.Store(self.engine)
        self._store.set_limits(memory_size=limits.memory_bytes)
        self._arm()
        exports = linker.instantiate(self._store, module).exports(self._store)
        self._alloc = exports["caxton_alloc"]
        self._handle = exports["caxton_handle"]
        memory = exports["memory"]
        assert isinstance(self._alloc, wasmtime.Func) and isinstance(self._handle, wasmtime.Func)
        assert isinstance(memory, wasmtime.Memory)
        self._view = MemoryView(self._store, memory)
        self.host.bind(self._view)
        self.messages = 0
        self.memory_bytes = self._view.size

    def _arm(self) -> None:
        if self.limits.fuel > 0:
            self._store.set_fuel(self.limits.fuel)
        if self.limits.timeout_ms > 0:
            self._store.set_epoch_deadline(_DEADLINE_TICKS)

    def handle(self, message: caxton_pb2.AgentMessage) -> Outcome:
        self.messages += 1
        self.host.begin(message)
        reply = self._call(message.content)
        host = self.host
        return Outcome(reply, host.take_logs(), host.take_sent())

    def _call(self, content: bytes) -> bytes | None:
        limits = self.limits
        length = len(content)
        if length > limits.max_message_bytes:
            raise ValueError(f"message of {length} bytes exceeds max_message_bytes")
        store = self._store
        view = self._view
        length_val = _i32(length)
        self._arm()
        ptr = self._alloc(store, length_val) & _U32
        if ptr == 0:
            raise ValueError(f"caxton_alloc could not allocate {length} bytes")
        size = view.refresh()
        if ptr + length > size:
            raise ValueError(f"caxton_alloc returned [{ptr}, {ptr + length}) outside memory of {size} bytes")
        view.data[ptr : ptr + length] = content
        packed = self._handle(store, _i32(ptr), length_val) & _U64
        size = self.memory_bytes = view.refresh()
        if packed == 0:
            return None
        reply_ptr, reply_len = packed >> 32, packed & _U32
        if reply_len > limits.max_message_bytes:
            raise ValueError(f"reply of {reply_len} bytes exceeds max_message_bytes")
        if reply_ptr + reply_len > size:
            raise ValueError(f"reply at [{reply_ptr}, {reply_ptr + reply_len}) outside memory of {size} bytes")
        return view.data[reply_ptr : reply_ptr + reply_len].tobytes()
