"""The wasmtime host for one agent: compile, instantiate, and call the ABI.

A `Sandbox` owns one compiled module and one live instance of it. Messages
are handled one at a time, in order. A trap fails only the message that
caused it: the instance is then replaced by a fresh one from the already
compiled module (no process restart), because a trapped instance may have left
its memory half-updated.

The agent ABI (version 1) is documented in docs/agent-abi.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import wasmtime

from caxton.v1 import caxton_pb2

from . import fastcall
from .hostcalls import HostCalls, LogRecord, MemoryView
from .outbox import DEFAULT_SEND_BUDGET, Outgoing
from .wasmtime_version import installed_version

log = logging.getLogger("caxton.worker.sandbox")

_Extern = TypeVar("_Extern", wasmtime.Func, wasmtime.Memory)

# Trap codes that mean "the agent ran out of a budget" rather than "the agent
# is broken": they map to their own gRPC status codes.
_TRAP_STATUS = {
    wasmtime.TrapCode.OUT_OF_FUEL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    wasmtime.TrapCode.INTERRUPT: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_TRAP_NAMES = {
    wasmtime.TrapCode.STACK_OVERFLOW: "stack overflow",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.UNREACHABLE: "unreachable executed",
    wasmtime.TrapCode.OUT_OF_FUEL: "out of fuel",
    wasmtime.TrapCode.INTERRUPT: "timeout (epoch deadline reached)",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to null",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call with bad signature",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
}

# How often the epoch ticker advances the engine's epoch. A message's
# wall-clock timeout is rounded up to whole ticks.
EPOCH_TICK_S = 0.005
# A deadline far enough away to mean "never" when no timeout is configured.
_NO_DEADLINE_TICKS = 1 << 62

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

# The per-message calls go through worker/fastcall.py unless this
# environment variable is "public" (or the Sandbox is told otherwise): then,
# and when the fast path is unavailable, they go through Func.__call__. The
# switch exists so that tests can run every agent through both paths.
CALL_PATH_ENV = "CAXTON_WORKER_CALL_PATH"
_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()

# Public path: arguments to caxton_alloc/caxton_handle are passed as
# wasmtime.Val, not int. For an int, Func.__call__ builds and compares two
# throwaway ValTypes over FFI per argument just to learn its type; a Val
# skips most of that (about 2.5 µs per argument). Val.i32 wraps exactly as
# the int path does, and the exports' signatures are checked at deploy
# (supervisor/validation.py), so the Val types always match. Building a Val
# costs ~0.4 µs itself (a ctypes union), and the same few values recur
# (allocators that reset per message hand out the same pointer; lengths
# repeat), so they are cached: a Val is never modified after creation.
_i32 = functools.lru_cache(maxsize=4096)(wasmtime.Val.i32)

_WASMTIME_VERSION = installed_version()
# Bump when engine_config() changes, so stale compiled modules are not reused.
_CONFIG_REVISION = 1


@dataclass(frozen=True)
class SandboxLimits:
    """Limits enforced inside wasmtime and its host calls. Zero fuel or
    timeout means unmetered."""

    memory_bytes: int
    fuel: int = 0
    timeout_ms: int = 0
    max_message_bytes: int = 1 << 20
    send_budget: int = DEFAULT_SEND_BUDGET  # accepted sends per handled message


class AgentError(Exception):
    """A message failed inside the agent; carries the gRPC status to report."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reset: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        # True when the instance was replaced because of this error.
        self.reset = reset


class LoadError(Exception):
    """The module could not be loaded or initialised."""


@dataclass
class Outcome:
    """What handling one message produced."""

    reply: bytes | None
    logs: list[LogRecord] = field(default_factory=list)
    # The agent's accepted sends, in call order; only a message that
    # completed has any.
    sent: Sequence[Outgoing] = ()


def engine_config(limits: SandboxLimits) -> wasmtime.Config:
    """The engine configuration for an agent with these limits.

    Memories reserve no address space up front (wasmtime's default reserves
    about 4 GiB per linear memory), so that OS address-space limits around the
    worker stay meaningful. Features the validation policy may deny are
    switched off explicitly: wasmtime 50 enables threads and multi-memory by
    default.
    """
    config = wasmtime.Config()
    config.consume_fuel = limits.fuel > 0
    config.epoch_interruption = limits.timeout_ms > 0
    config.memory_reservation = 0
    config.memory_guard_size = 0
    config.memory_reservation_for_growth = 0
    config.wasm_threads = False
    config.shared_memory = False
    config.wasm_multi_memory = False
    config.wasm_memory64 = False
    config.parallel_compilation = False
    return config


# Metered and timed: what agents get unless their limits turn either off.
_USUAL_LIMITS = SandboxLimits(memory_bytes=0, fuel=1, timeout_ms=1)
# The engine prepare_engine() made for this process and the limits it was
# made for; taken by the first Sandbox whose engine settings match.
_prepared_engine: tuple[SandboxLimits, wasmtime.Engine] | None = None


def _engine_settings(limits: SandboxLimits) -> tuple[bool, bool]:
    """(fuel, epochs): all of `limits` that engine_config() reads, so limits
    with the same settings share an engine kind and compiled code."""
    return limits.fuel > 0, limits.timeout_ms > 0


def prepare_engine() -> None:
    """Make the engine a usual Sandbox will need before it is asked for:
    0.4 ms of a new process's Load. The fork server makes it before it
    forks (each worker inherits its own copy); a worker started by exec
    makes it while it is a spare. An engine with no store and no thread is
    safe to fork."""
    global _prepared_engine
    if _prepared_engine is None:
        _prepared_engine = (_USUAL_LIMITS, wasmtime.Engine(engine_config(_USUAL_LIMITS)))


def _engine_for(limits: SandboxLimits) -> wasmtime.Engine:
    """The prepared engine if its settings fit, else a new one. Taken, not
    shared: each Sandbox's epoch ticker advances its own engine's epoch,
    and two tickers on one engine would halve every timeout."""
    global _prepared_engine
    prepared = _prepared_engine
    if prepared is not None and _engine_settings(prepared[0]) == _engine_settings(limits):
        _prepared_engine = None
        return prepared[1]
    return wasmtime.Engine(engine_config(limits))


def engine_fingerprint(limits: SandboxLimits) -> str:
    """A key for the compiled-module cache: compiled code is only valid for an
    engine with the same settings and the same wasmtime version."""
    fuel, epoch = _engine_settings(limits)
    settings = f"wasmtime={_WASMTIME_VERSION};config={_CONFIG_REVISION};fuel={fuel};epoch={epoch}"
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def load_module(engine: wasmtime.Engine, wasm_path: str, cache_dir: str,
                fingerprint: str, module_sha256: str = "") -> tuple[wasmtime.Module, bool]:
    """Compile the module, or deserialize it from the cache.

    The cache is keyed by the module's SHA-256 (`module_sha256`, else the
    file's name) and the engine fingerprint. It lives in the supervisor's
    private state directory: a serialized module is trusted native code, so
    it must never come from anywhere an agent could write. Each entry's own
    digest is recorded beside it when it is written, and an entry is used
    only while it still matches: a torn write or a bad block would otherwise
    run as native code. A mismatch compiles the module again and rewrites
    the entry.

    With `module_sha256`, the module's bytes must have that digest: they were
    validated as those bytes, so a damaged file is refused, not compiled.
    """
    cached = ""
    if cache_dir:
        key = module_sha256 or os.path.splitext(os.path.basename(wasm_path))[0]
        cached = os.path.join(cache_dir, f"{key}-{fingerprint}.cwasm")
        module = _cached_module(engine, cached)
        if module is not None:
            return module, True
    wasm = _read_module(wasm_path, module_sha256)
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise LoadError(f"module does not compile: {exc}") from exc
    if cached:
        _write_cached(cached, module.serialize())
    return module, False


def _read_module(path: str, module_sha256: str) -> bytes:
    try:
        with open(path, "rb") as f:
            wasm = f.read()
    except OSError as exc:
        # Without the path: this reason reaches the agent's status.
        raise LoadError(f"cannot read the module file: {exc.strerror}") from exc
    if module_sha256 and hashlib.sha256(wasm).hexdigest() != module_sha256:
        raise LoadError(f"the module file of {module_sha256[:12]} is damaged: its bytes do not match its digest")
    return wasm


def _cached_module(engine: wasmtime.Engine, path: str) -> wasmtime.Module | None:
    """The compiled module at `path`, if it is there and matches the digest
    recorded beside it; else None (compile again)."""
    try:
        with open(f"{path}.sha256", "rb") as f:
            recorded = f.read().decode("ascii", "replace").strip()
        with open(path, "rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("compiled module %s cannot be read (%s): compiling again", os.path.basename(path), exc.strerror)
        return None
    if actual != recorded:
        log.warning("compiled module %s does not match its recorded digest: compiling again", os.path.basename(path))
        return None
    try:
        return wasmtime.Module.deserialize_file(engine, path)
    except wasmtime.WasmtimeError:
        return None  # written by an engine that differs in a way the fingerprint misses: compile again


def _write_cached(path: str, compiled: bytes | bytearray) -> None:
    """Write a cache entry, then its digest, each owner-only and by an atomic
    rename. A reader between the two sees a mismatch and compiles again; a
    cache that cannot be written only costs speed next time."""
    digest = hashlib.sha256(compiled).hexdigest().encode("ascii")
    for target, data in ((path, compiled), (f"{path}.sha256", digest)):
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return


class _EpochTicker:
    """Advances the engine's epoch on a fixed tick while the agent runs, so
    that a store deadline set in ticks becomes a wall-clock timeout.

    It sleeps while the worker is idle: a thousand idle agents must not mean
    a thousand threads waking every few milliseconds.
    """

    def __init__(self, engine: wasmtime.Engine):
        self._engine = engine
        self._busy = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="epoch-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._busy.wait() and not self._stopped:
            time.sleep(EPOCH_TICK_S)
            self._engine.increment_epoch()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._busy.set()
        try:
            yield
        finally:
            self._busy.clear()

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop ticking; with `wait_s`, wait that long for the thread to end."""
        self._stopped = True
        self._busy.set()
        if wait_s:
            self._thread.join(wait_s)


class Sandbox:
    """One agent module, compiled once, with one live instance."""

    # The live instance: set by start() (`_instantiate`), replaced after a trap.
    _store: wasmtime.Store
    _view: MemoryView
    # caxton_alloc(length) -> ptr and caxton_handle(ptr, length) -> packed,
    # bound to the live store; both return wasm's signed integers.
    _alloc: Callable[[int], int]
    _handle: Callable[[int, int], int]

    def __init__(self, wasm_path: str, limits: SandboxLimits, *, cache_dir: str = "", module_sha256: str = "",
                 clock: Callable[[], float] = time.time, fast_calls: bool | None = None,
                 engine: wasmtime.Engine | None = None):
        """`fast_calls`: call the agent per message through worker/fastcall.py
        (None: unless the environment variable CAXTON_WORKER_CALL_PATH is
        "public"); used only if it passes its probe. `engine`: one made with
        engine_config(limits) to use (None: the prepared one if it fits, else
        a new one)."""
        self.limits = limits
        self.engine = _engine_for(limits) if engine is None else engine
        if fast_calls is None:
            fast_calls = os.environ.get(CALL_PATH_ENV, "fast") != "public"
        self.fast_calls = fast_calls and fastcall.available(self.engine)
        self.module, self.cache_hit = load_module(self.engine, wasm_path, cache_dir, engine_fingerprint(limits),
                                                  module_sha256)
        self.host = HostCalls(clock=clock, max_message_bytes=limits.max_message_bytes,
                              send_budget=limits.send_budget)
        linker = wasmtime.Linker(self.engine)
        self.host.define(linker)
        try:
            self._pre = linker.instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"module cannot be linked: {exc}") from exc
        self._ticker = _EpochTicker(self.engine) if limits.timeout_ms > 0 else None
        self._deadline_ticks = (
            max(1, -(-limits.timeout_ms // int(EPOCH_TICK_S * 1000))) if limits.timeout_ms > 0 else _NO_DEADLINE_TICKS
        )
        self.messages = 0
        self.errors = 0
        self.resets = 0
        # Linear memory size after the last call into the agent. Kept as a
        # plain attribute so Stats can read it while a message runs: the
        # store itself must not be touched from a second thread.
        self.memory_bytes = 0
        # The optional exports of the live instance; none before start().
        self._exports: dict[str, wasmtime.Func] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Instantiate and run `caxton_init`. Returns its code (0 = started)."""
        self._instantiate()
        self.memory_bytes = self._view.size
        init = self._exports.get("caxton_init")
        if init is None:
            return 0
        self._arm()
        try:
            return int(init(self._store))
        except wasmtime.Trap as exc:
            raise LoadError(f"caxton_init trapped: {_trap_text(exc)}") from exc
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"caxton_init failed: {exc}") from exc

    def shutdown(self, *, wait_s: float = 0.0) -> list[LogRecord]:
        """Run `caxton_shutdown` if the agent exports it; errors are logged,
        not raised, because the worker is going away regardless. With
        `wait_s`, wait that long for the epoch ticker's thread to end."""
        self.host.begin(None)
        fn = self._exports.get("caxton_shutdown")
        if fn is not None:
            self._arm()
            try:
                fn(self._store)
            except wasmtime.WasmtimeError as exc:
                self.host.logs.append(LogRecord(3, f"caxton_shutdown failed: {_trap_text(exc)}"))
        if self._ticker is not None:
            self._ticker.stop(wait_s)
        return self.host.take_logs()

    def enforcement(self) -> list[str]:
        """The limits enforced inside wasmtime, for status."""
        layers = ["wasm:memory-limit"]
        if self.limits.fuel > 0:
            layers.append("wasm:fuel")
        if self.limits.timeout_ms > 0:
            layers.append("wasm:epoch-timeout")
        return layers

    def running(self) -> contextlib.AbstractContextManager[None]:
        """Wrap every stretch of calls into the agent (a batch of messages,
        init, shutdown): the wall-clock timeout only advances inside it."""
        return self._ticker.running() if self._ticker is not None else contextlib.nullcontext()

    def take_logs(self) -> list[LogRecord]:
        return self.host.take_logs()

    def _instantiate(self) -> None:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.limits.memory_bytes)
        self._store = store
        self._arm()
        try:
            instance = self._pre.instantiate(store)
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"module cannot be instantiated: {_trap_text(exc)}") from exc
        exports = instance.exports(store)
        self._exports = {name: _export(exports, name, wasmtime.Func)
                         for name in ("caxton_init", "caxton_shutdown") if name in exports}
        self._alloc, self._handle = self._message_calls(store, _export(exports, "caxton_alloc", wasmtime.Func),
                                                        _export(exports, "caxton_handle", wasmtime.Func))
        self._view = MemoryView(store, _export(exports, "memory", wasmtime.Memory))
        self.host.bind(self._view)

    def _message_calls(self, store: wasmtime.Store, alloc: wasmtime.Func,
                       handle: wasmtime.Func) -> tuple[Callable[[int], int], Callable[[int, int], int]]:
        """caxton_alloc and caxton_handle as callables on ints: through
        worker/fastcall.py when this sandbox uses it, else Func.__call__."""
        if self.fast_calls:
            try:
                return (fastcall.FastCall(store, alloc, [_I32], _I32).call,
                        fastcall.FastCall(store, handle, [_I32, _I32], _I64).call)
            except ValueError:
                pass  # a signature deploy refuses: Func.__call__ reports it on each message
        return (lambda length: alloc(store, _i32(length))), (lambda ptr, length: handle(store, _i32(ptr), _i32(length)))

    def _arm(self, deadline_ticks: int = 0) -> None:
        """Refill the per-message budgets; `deadline_ticks` (when non-zero)
        replaces the agent's timeout. An engine with epoch interruption traps
        on the first call of a store whose deadline was never set, so this
        runs before every entry into wasm."""
        if self.limits.fuel > 0:
            self._store.set_fuel(self.limits.fuel)
        if self.limits.timeout_ms > 0:
            self._store.set_epoch_deadline(deadline_ticks or self._deadline_ticks)

    def _caller_ticks(self, caller_deadline: float | None) -> int:
        """The epoch ticks until the caller's deadline (a time.monotonic()
        value), when that comes before the agent's own timeout; else 0.
        Without epoch interruption (timeout_ms = 0) nothing can stop the agent
        mid-message, so only the check before it starts applies."""
        if caller_deadline is None:
            return 0
        remaining = caller_deadline - time.monotonic()
        if remaining <= 0:
            raise AgentError(grpc.StatusCode.DEADLINE_EXCEEDED,
                             "the caller's deadline passed before the agent got the message")
        if self.limits.timeout_ms <= 0:
            return 0
        ticks = max(1, math.ceil(remaining / EPOCH_TICK_S))
        return ticks if ticks < self._deadline_ticks else 0

    # ------------------------------------------------------------ messages

    def handle(self, message: caxton_pb2.AgentMessage, caller_deadline: float | None = None) -> Outcome:
        """Deliver one message. Raises AgentError when it fails.

        `caller_deadline` (a time.monotonic() value, None = none) is when the
        message's caller stops waiting: the agent is interrupted then, as by
        its own timeout, so an answer nobody waits for costs no more CPU. A
        message whose caller already gave up is not delivered at all.
        """
        caller_ticks = self._caller_ticks(caller_deadline)
        self.messages += 1
        self.host.begin(message)
        try:
            reply = self._call(message.content, caller_ticks)
        except AgentError:
            # A failed message has no effects: its sends are never delivered.
            self.host.discard_sent()
            self.errors += 1
            # The agent (or the instance that replaced it) may have grown.
            self.memory_bytes = self._view.refresh()
            raise
        host = self.host
        return Outcome(reply, host.take_logs(), host.take_sent())

    def _call(self, content: bytes, caller_ticks: int) -> bytes | None:
        limits = self.limits
        length = len(content)
        if length > limits.max_message_bytes:
            raise AgentError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds max_message_bytes ({limits.max_message_bytes})",
            )
        view = self._view
        self._arm(caller_ticks)
        try:
            ptr = self._alloc(length) & _U32
            if ptr == 0:
                raise AgentError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"caxton_alloc could not allocate {length} bytes")
            # caxton_alloc may have grown (and so moved) memory: one refresh
            # serves the bounds check and the write.
            size = view.refresh()
            if ptr + length > size:
                raise AgentError(
                    grpc.StatusCode.INTERNAL,
                    f"caxton_alloc returned [{ptr}, {ptr + length}) outside memory of {size} bytes",
                )
            # A slice assignment into the cached view (see MemoryView) is the
            # cheapest copy into linear memory from Python.
            view.data[ptr : ptr + length] = content
            packed = self._handle(ptr, length) & _U64
        except wasmtime.Trap as exc:
            self._reset()
            if caller_ticks and exc.trap_code == wasmtime.TrapCode.INTERRUPT:
                raise AgentError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 "agent interrupted: its caller's deadline passed", reset=True) from exc
            trap_code = exc.trap_code
            code = _TRAP_STATUS[trap_code] if trap_code in _TRAP_STATUS else grpc.StatusCode.INTERNAL
            raise AgentError(code, f"agent trapped: {_trap_text(exc)}", reset=True) from exc
        except wasmtime.WasmtimeError as exc:
            self._reset()
            raise AgentError(grpc.StatusCode.INTERNAL, f"agent failed: {exc}", reset=True) from exc
        # One refresh after caxton_handle serves the reply's bounds check,
        # the read and the memory figure for Stats.
        size = self.memory_bytes = view.refresh()
        if packed == 0:
            return None
        reply_ptr, reply_len = packed >> 32, packed & _U32
        if reply_len > limits.max_message_bytes:
            raise AgentError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"reply of {reply_len} bytes exceeds max_message_bytes ({limits.max_message_bytes})",
            )
        if reply_ptr + reply_len > size:
            raise AgentError(
                grpc.StatusCode.INTERNAL,
                f"agent returned a reply at [{reply_ptr}, {reply_ptr + reply_len}) outside its memory of {size} bytes",
            )
        return view.data[reply_ptr : reply_ptr + reply_len].tobytes()

    def _reset(self) -> None:
        """Replace the instance after a trap. `caxton_init` runs again; if the
        fresh instance cannot start, the error is raised to the caller, which
        ends the worker (the supervisor then sees a crash)."""
        self.resets += 1
        # The trapped message's sends go, and the fresh instance's
        # caxton_init runs outside any message, as at load.
        self.host.begin(None)
        code = self.start()
        if code != 0:
            raise LoadError(f"caxton_init returned {code} while replacing a trapped instance")


def _export(exports: Mapping[str, object], name: str, kind: type[_Extern]) -> _Extern:
    """The export `name`, which must be a `kind` (a function or a memory).
    Deploy checks the ABI's exports (supervisor/validation.py), so a module
    that reaches a worker always passes; this keeps a wrong one a LoadError."""
    item = exports[name]
    if not isinstance(item, kind):
        raise LoadError(f"export {name!r} is not a {kind.__name__}")
    return item


def _trap_text(exc: Exception) -> str:
    if isinstance(exc, wasmtime.Trap) and exc.trap_code in _TRAP_NAMES:
        return f"{_TRAP_NAMES[exc.trap_code]} ({_first_line(exc.message)})"
    return _first_line(str(exc))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text

