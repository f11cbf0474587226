"""The host functions an agent may import from module `caxton` (ABI v1).

They read and write the agent's linear memory directly, always with bounds
checks: a bad pointer from the agent traps that message with a clear error
instead of reading host memory. `send` and `send_ex` record into the
message's outbox (worker/outbox.py) and return at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import wasmtime

from caxton.v1 import caxton_pb2

from . import escape_probe
from .outbox import (
    DEFAULT_SEND_BUDGET,
    MAX_NAME_BYTES,
    SEND_MALFORMED,
    SEND_TOO_LARGE,
    Envelope,
    Outbox,
    Outgoing,
    read_envelope,
)

# A log flood must not become a memory or bandwidth problem for the host:
# each message keeps at most this many records of at most this many bytes,
# and one record says how many more were dropped.
MAX_LOG_RECORDS = 64
MAX_LOG_BYTES = 4096

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()


@dataclass(frozen=True)
class LogRecord:
    level: int
    text: str


class MemoryView:
    """A `memoryview` over one instance's linear memory, for bounds-checked
    reads and writes by slicing.

    Fast path: `data_len` and `data_ptr` are an FFI round trip each, and
    `Memory.read`/`write` (or ctypes memmove/string_at) cost several times a
    memoryview slice. A linear memory never shrinks, and its base address
    only moves when it grows, so `refresh()` reads the size (one FFI call)
    and rebuilds the view only when the size changed. Call `refresh()`
    whenever wasm may have run since the last look (after each call into
    the agent, at the start of each host call), and use `data` only until
    the next call into wasm. Callers check bounds against the size
    themselves: a slice past the end would be silently short.
    """

    __slots__ = ("_store", "_memory", "data", "size")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory):
        self._store = store
        self._memory = memory
        self.data = memoryview(b"")
        self.size = 0
        self.refresh()

    def refresh(self) -> int:
        """Re-read the size, and re-map the view if the memory grew; returns the size."""
        size = self._memory.data_len(self._store)
        if size != self.size:
            self.data = memoryview(self._memory.get_buffer_ptr(self._store, size)).cast("B")
            self.size = size
        return size


class HostCalls:
    """Host-side state for the `caxton` imports of one sandbox."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_message_bytes: int,
                 send_budget: int = DEFAULT_SEND_BUDGET):
        self._clock = clock
        self._outbox = Outbox(budget=send_budget, max_content_bytes=max_message_bytes)
        self._view: MemoryView | None = None
        self._message: caxton_pb2.AgentMessage | None = None
        self._envelope: bytes | None = None
        self.logs: list[LogRecord] = []
        self._dropped = 0

    def define(self, linker: wasmtime.Linker) -> None:
        linker.define_func("caxton", "log", wasmtime.FuncType([_I32, _I32, _I32], []), self._log)
        linker.define_func("caxton", "now_ms", wasmtime.FuncType([], [_I64]), self._now_ms)
        linker.define_func("caxton", "send", wasmtime.FuncType([_I32, _I32, _I32, _I32], [_I32]), self._send)
        linker.define_func("caxton", "send_ex", wasmtime.FuncType([_I32, _I32, _I32, _I32], [_I32]), self._send_ex)
        linker.define_func("caxton", "message_info", wasmtime.FuncType([_I32, _I32], [_I32]), self._message_info)
        # Test-only, and only where the worker's environment asks for it.
        if escape_probe.enabled():
            escape_probe.define(linker, lambda text: self.logs.append(LogRecord(1, text)))

    def bind(self, view: MemoryView) -> None:
        """Point the host calls at a (new) instance's memory."""
        self._view = view

    def begin(self, message: caxton_pb2.AgentMessage | None) -> None:
        """Set the message the agent is handling now (None: init, shutdown),
        with an empty outbox."""
        self._message = message
        self._envelope = None
        self._outbox.open(message is not None)

    def take_sent(self) -> Sequence[Outgoing]:
        """What the agent sent while handling the message, which completed."""
        return self._outbox.take()

    def discard_sent(self) -> None:
        """Forget what the agent sent while handling the message, which failed."""
        self._outbox.discard()

    def take_logs(self) -> list[LogRecord]:
        logs = self.logs
        if self._dropped:
            logs.append(LogRecord(2, f"{self._dropped} more log records dropped (limit {MAX_LOG_RECORDS} per message)"))
        self.logs = []
        self._dropped = 0
        return logs

    # ------------------------------------------------------------ memory

    def _span(self, ptr: int, length: int) -> memoryview:
        """The view of [ptr, ptr+length) in linear memory, after checking it."""
        ptr &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        # The agent may have grown its memory since the last host call.
        view = self._view
        if view is None:
            # Only a module's start function could call in this early.
            raise wasmtime.WasmtimeError("host call before the instance's memory was bound")
        size = view.refresh()
        if ptr + length > size:
            raise wasmtime.WasmtimeError(
                f"host call got [{ptr}, {ptr + length}) outside linear memory of {size} bytes"
            )
        return view.data[ptr : ptr + length]

    # ------------------------------------------------------------ imports

    def _log(self, level: int, ptr: int, length: int) -> None:
        if len(self.logs) >= MAX_LOG_RECORDS:
            self._span(ptr, length)
            self._dropped += 1
            return
        data = self._span(ptr, min(length & 0xFFFFFFFF, MAX_LOG_BYTES))
        self.logs.append(LogRecord(max(0, min(3, level)), str(data, "utf-8", "replace")))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _send(self, to_ptr: int, to_len: int, msg_ptr: int, msg_len: int) -> int:
        to = self._span(to_ptr, to_len)
        content = self._span(msg_ptr, msg_len)
        # Length first: a name is never decoded from an arbitrarily large span.
        if len(to) > MAX_NAME_BYTES:
            return SEND_TOO_LARGE
        try:
            name = str(to, "utf-8")
        except UnicodeDecodeError:
            return SEND_MALFORMED
        if not name:
            return SEND_MALFORMED
        return self._outbox.add(Envelope(name), content)

    def _send_ex(self, env_ptr: int, env_len: int, msg_ptr: int, msg_len: int) -> int:
        raw = self._span(env_ptr, env_len)
        content = self._span(msg_ptr, msg_len)
        envelope = read_envelope(raw)
        if envelope is None:
            return SEND_MALFORMED
        return self._outbox.add(envelope, content)

    def _message_info(self, buf_ptr: int, buf_cap: int) -> int:
        if self._envelope is None:
            self._envelope = envelope_json(self._message) if self._message is not None else b"{}"
        envelope = self._envelope
        if len(envelope) <= buf_cap & 0xFFFFFFFF:
            self._span(buf_ptr, len(envelope))[:] = envelope
        return len(envelope)


def envelope_json(message: caxton_pb2.AgentMessage) -> bytes:
    """The envelope `message_info` hands to the agent, as compact UTF-8 JSON."""
    performative = caxton_pb2.Performative.Name(message.performative or caxton_pb2.PERFORMATIVE_REQUEST)
    return json.dumps(
        {
            "sender": message.sender,
            "performative": performative.removeprefix("PERFORMATIVE_").lower().replace("_", "-"),
            "conversation_id": message.conversation_id,
            "message_id": message.message_id,
            "reply_with": message.reply_with,
            "in_reply_to": message.in_reply_to,
            "receiver": message.receiver,
            "hops": message.hops,
        },
        separators=(",", ":"),
    ).encode()
