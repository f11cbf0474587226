"""The host functions an agent may import from module `caxton` (ABI v1).

They read and write the agent's linear memory directly, always with bounds
checks: a bad pointer from the agent traps that message with a clear error
instead of reading host memory.
"""

from __future__ import annotations

import ctypes
import json
import time
from dataclasses import dataclass
from typing import Callable

import wasmtime

from caxton.v1 import caxton_pb2

# A log flood must not become a memory or bandwidth problem for the host:
# each message keeps at most this many records of at most this many bytes,
# and one record says how many more were dropped.
MAX_LOG_RECORDS = 64
MAX_LOG_BYTES = 4096

# send() return codes (ABI v1).
SEND_UNKNOWN_AGENT = -1
SEND_TOO_LARGE = -2
SEND_QUEUE_FULL = -3
SEND_DENIED = -4

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()


@dataclass(frozen=True)
class LogRecord:
    level: int
    text: str


class HostCalls:
    """Host-side state for the `caxton` imports of one sandbox."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_message_bytes: int):
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        self._store: wasmtime.Store | None = None
        self._memory: wasmtime.Memory | None = None
        self._message: caxton_pb2.AgentMessage | None = None
        self._envelope: bytes | None = None
        self.logs: list[LogRecord] = []
        self._dropped = 0

    def define(self, linker: wasmtime.Linker) -> None:
        linker.define_func("caxton", "log", wasmtime.FuncType([_I32, _I32, _I32], []), self._log)
        linker.define_func("caxton", "now_ms", wasmtime.FuncType([], [_I64]), self._now_ms)
        linker.define_func("caxton", "send", wasmtime.FuncType([_I32, _I32, _I32, _I32], [_I32]), self._send)
        linker.define_func("caxton", "message_info", wasmtime.FuncType([_I32, _I32], [_I32]), self._message_info)

    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        """Point the host calls at a (new) instance's store and memory."""
        self._store = store
        self._memory = memory

    def begin(self, message: caxton_pb2.AgentMessage | None) -> None:
        """Set the message the agent is handling now."""
        self._message = message
        self._envelope = None

    def take_logs(self) -> list[LogRecord]:
        logs = self.logs
        if self._dropped:
            logs.append(LogRecord(2, f"{self._dropped} more log records dropped (limit {MAX_LOG_RECORDS} per message)"))
        self.logs = []
        self._dropped = 0
        return logs

    # ------------------------------------------------------------ memory

    def _bounds(self, ptr: int, length: int) -> int:
        """Base address of linear memory, after checking [ptr, ptr+length)."""
        ptr &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        size = self._memory.data_len(self._store)
        if ptr + length > size:
            raise wasmtime.WasmtimeError(
                f"host call got [{ptr}, {ptr + length}) outside linear memory of {size} bytes"
            )
        return ctypes.addressof(self._memory.data_ptr(self._store).contents) + ptr

    def _read(self, ptr: int, length: int) -> bytes:
        return ctypes.string_at(self._bounds(ptr, length), length & 0xFFFFFFFF)

    # ------------------------------------------------------------ imports

    def _log(self, level: int, ptr: int, length: int) -> None:
        if len(self.logs) >= MAX_LOG_RECORDS:
            self._bounds(ptr, length)
            self._dropped += 1
            return
        data = self._read(ptr, min(length & 0xFFFFFFFF, MAX_LOG_BYTES))
        self.logs.append(LogRecord(max(0, min(3, level)), data.decode("utf-8", "replace")))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _send(self, to_ptr: int, to_len: int, msg_ptr: int, msg_len: int) -> int:
        # Pointers are checked even though sending is not available yet, so
        # that an agent's bad pointer fails the same way it will later.
        self._bounds(to_ptr, to_len)
        self._bounds(msg_ptr, msg_len)
        if msg_len & 0xFFFFFFFF > self._max_message_bytes:
            return SEND_TOO_LARGE
        return SEND_DENIED

    def _message_info(self, buf_ptr: int, buf_cap: int) -> int:
        if self._envelope is None:
            self._envelope = envelope_json(self._message) if self._message is not None else b"{}"
        envelope = self._envelope
        if len(envelope) <= buf_cap & 0xFFFFFFFF:
            ctypes.memmove(self._bounds(buf_ptr, len(envelope)), envelope, len(envelope))
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
        },
        separators=(",", ":"),
    ).encode()
