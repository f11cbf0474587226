"""In-worker cost per message: what `Sandbox.handle` adds on top of wasmtime.

Three ways to run the echo agent on 100 bytes, each with the default limits
(fuel and an epoch deadline) and unmetered (fuel=0, timeout_ms=0), so that
both the Sandbox's own overhead and the cost of metering show:

- `Sandbox.handle(message)` inside `with sandbox.running()`: the worker's
  whole per-message path (budgets, alloc, write, handle, read, bookkeeping),
  calling wasm through worker/fastcall.py as the worker does (bench_callpath.py
  compares it with its public-API fallback, a frozen copy of the old path, and
  Extism);
- a bare `caxton_handle` call through wasmtime's `Func.__call__`, with the
  content already in linear memory: the floor of one call into wasm;
- a bare `caxton_alloc` + `caxton_handle` pair: the two calls the ABI needs;
- the same pair with `wasmtime.Val` arguments instead of ints (cheaper in
  `Func.__call__`, see worker/sandbox.py): the floor the public API allows;
- `WorkerService.Handle` on a batch of 256 messages, per message, called
  in-process (no gRPC): the sandbox path plus building the reply protobufs.

The bare calls use an engine configured like the worker's (fuel/epoch on or
off, no up-front memory reservation) but are built here from the public
wasmtime API only, so they stay a fixed reference while worker/ changes.
Budgets are set once for the bare calls (large enough for the whole run);
re-arming them per message is part of what Sandbox.handle costs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import wasmtime

from caxton.internal.v1 import worker_pb2
from caxton.v1 import caxton_pb2
from caxton.worker.sandbox import Sandbox, SandboxLimits, engine_config
from caxton.worker.service import WorkerService
from tests.call_context import CallContext

from . import report
from .support import PAYLOAD

ROUNDS = 30
ITERATIONS = {"sandbox": 500, "bare_handle": 3000, "bare_alloc_handle": 2000, "bare_val_alloc_handle": 2000}
BATCH = 256
LIMITS = {
    "metered": SandboxLimits(memory_bytes=64 << 20, fuel=1_000_000_000, timeout_ms=5000, max_message_bytes=1 << 20),
    "unmetered": SandboxLimits(memory_bytes=64 << 20, fuel=0, timeout_ms=0, max_message_bytes=1 << 20),
}
LABELS = {
    "sandbox": "Sandbox.handle",
    "bare_handle": "bare caxton_handle",
    "bare_alloc_handle": "bare alloc+handle",
    "bare_val_alloc_handle": "bare alloc+handle (Val args)",
    "service": "WorkerService.Handle per message",
}
_LEN = len(PAYLOAD)


@pytest.fixture(scope="module")
def echo_path(tmp_path_factory: pytest.TempPathFactory, echo_wasm: bytes) -> Path:
    path = tmp_path_factory.mktemp("sandbox") / "echo.wasm"
    path.write_bytes(echo_wasm)
    return path


def _bare_engine(limits: SandboxLimits) -> wasmtime.Engine:
    """The engine the worker itself would build, so the baseline differs
    from Sandbox.handle only in what the Sandbox adds around the call."""
    return wasmtime.Engine(engine_config(limits))


def _bare_instance(path: Path,
                   limits: SandboxLimits) -> tuple[wasmtime.Store, wasmtime.Func, wasmtime.Func, wasmtime.Memory]:
    """A store and the echo agent's exports, budgets set once for the run."""
    engine = _bare_engine(limits)
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=limits.memory_bytes)
    if limits.fuel > 0:
        store.set_fuel(1 << 62)
    if limits.timeout_ms > 0:
        store.set_epoch_deadline(1 << 62)
    instance = wasmtime.Instance(store, wasmtime.Module.from_file(engine, str(path)), [])
    exports = instance.exports(store)
    return store, exports["caxton_alloc"], exports["caxton_handle"], exports["memory"]


def _record(benchmark, metering: str, kind: str) -> None:
    """Per-call time is the fastest round (each round averages hundreds of
    calls): the least disturbed by whatever else runs on a shared machine,
    which matters for ratios of a few microseconds."""
    best_us = benchmark.stats.stats.min * 1e6
    median_us = benchmark.stats.stats.median * 1e6
    benchmark.extra_info.update(per_call_us=round(best_us, 2), median_round_us=round(median_us, 2),
                                calls_per_s=round(1e6 / best_us))
    report.record(f"worker.{metering}.{kind}", best_us, "µs", f"{LABELS[kind]} ({metering})")


@pytest.mark.benchmark(group="in-worker: time per 100-byte message")
@pytest.mark.parametrize("metering", list(LIMITS))
def test_sandbox_handle(benchmark, echo_path: Path, metering: str) -> None:
    sandbox = Sandbox(str(echo_path), LIMITS[metering], cache_dir="")
    message = caxton_pb2.AgentMessage(receiver="echo", sender="bench", content=PAYLOAD)
    with sandbox.running():
        assert sandbox.start() == 0
        try:
            assert sandbox.handle(message).reply == PAYLOAD
            outcome = benchmark.pedantic(
                sandbox.handle, args=(message,), rounds=ROUNDS, iterations=ITERATIONS["sandbox"], warmup_rounds=1
            )
            assert outcome.reply == PAYLOAD
        finally:
            sandbox.shutdown()
    _record(benchmark, metering, "sandbox")


@pytest.mark.benchmark(group="in-worker: time per 100-byte message")
@pytest.mark.parametrize("metering", list(LIMITS))
@pytest.mark.parametrize("kind", ["bare_handle", "bare_alloc_handle", "bare_val_alloc_handle"])
def test_bare_calls(benchmark, echo_path: Path, metering: str, kind: str) -> None:
    store, alloc, handle, memory = _bare_instance(echo_path, LIMITS[metering])
    ptr = alloc(store, _LEN)
    memory.write(store, PAYLOAD, ptr)
    expected = (ptr << 32) | _LEN
    if kind == "bare_handle":
        def call() -> int:
            return handle(store, ptr, _LEN)
    elif kind == "bare_alloc_handle":
        def call() -> int:
            return handle(store, alloc(store, _LEN), _LEN)
    else:
        i32 = functools.lru_cache(maxsize=16)(wasmtime.Val.i32)  # Vals cached, as the worker does
        length = i32(_LEN)

        def call() -> int:
            return handle(store, i32(alloc(store, length)), length)
    result = benchmark.pedantic(call, rounds=ROUNDS, iterations=ITERATIONS[kind], warmup_rounds=1)
    assert result == expected, f"caxton_handle returned {result:#x}, expected {expected:#x}"
    assert memory.read(store, ptr, ptr + _LEN) == PAYLOAD
    _record(benchmark, metering, kind)


@pytest.mark.benchmark(group="in-worker: time per 100-byte message")
@pytest.mark.parametrize("metering", list(LIMITS))
def test_service_handle(benchmark, echo_path: Path, metering: str) -> None:
    limits = LIMITS[metering]
    service = WorkerService(on_exit=lambda status: None)
    context = CallContext()
    loaded = service.Load(
        worker_pb2.LoadRequest(
            agent="echo",
            module_path=str(echo_path),
            limits=worker_pb2.Limits(memory_bytes=limits.memory_bytes, fuel=limits.fuel,
                                     timeout_ms=limits.timeout_ms, max_message_bytes=limits.max_message_bytes),
            # Leave this process's limits, user and system calls alone.
            os_limits=worker_pb2.OsLimits(uid=-1, gid=-1, no_syscall_filter=True),
        ),
        context,
    )
    assert not loaded.error and loaded.init_code == 0
    context.end()
    message = caxton_pb2.AgentMessage(receiver="echo", sender="bench", content=PAYLOAD)
    request = worker_pb2.HandleRequest(messages=[message] * BATCH)
    response = benchmark.pedantic(service.Handle, args=(request, context), rounds=ROUNDS, iterations=4,
                                  warmup_rounds=1)
    assert [(r.code, r.has_reply, r.reply) for r in response.results] == [(0, True, PAYLOAD)] * BATCH
    service.Shutdown(worker_pb2.ShutdownRequest(), context)
    # Per message: the fastest round divided by the batch size.
    best_us = benchmark.stats.stats.min * 1e6 / BATCH
    benchmark.extra_info.update(per_call_us=round(best_us, 2), batch=BATCH,
                                median_round_us=round(benchmark.stats.stats.median * 1e6 / BATCH, 2))
    report.record(f"worker.{metering}.service", best_us, "µs", f"{LABELS['service']} ({metering})")
