"""The fast wasm call path (worker/fastcall.py) against wasmtime's public one.

Two layers: `FastCall` itself beside `Func.__call__` on the same functions
(results, wrapping, every trap code, host-function errors, fuel and epoch
interruption), and the whole agent corpus (tests/agents and
examples/agents) run through `Sandbox` once per path, hostile messages and
limits included, with every outcome compared: reply, logs, sends, error
status and message, instance reset, and which agents fail to load.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2
from caxton.worker import fastcall
from caxton.worker.sandbox import CALL_PATH_ENV, AgentError, LoadError, Sandbox, SandboxLimits
from tests.harness import AGENTS, EXAMPLES

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()

PROBE_WAT = """
(module
  (import "host" "fail" (func $fail (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "pack") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32)) (i64.extend_i32_u (local.get 1))))
  (func (export "neg") (param i32) (result i32) (i32.sub (i32.const 0) (local.get 0)))
  (func (export "unreachable") (param i32) (result i32) unreachable)
  (func (export "div") (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0)))
  (func $recurse (export "recurse") (param i32) (result i32) (call $recurse (local.get 0)))
  (func (export "oob") (param i32) (result i32) (i32.load (i32.const 0x7FFFFFF0)))
  (func (export "loop") (param i32) (result i32) (loop $l (br $l)) (i32.const 0))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "fail") (param i32) (result i32) (call $fail (local.get 0))))
"""


class HostFailure(Exception):
    pass


def _instance(*, fuel: bool = False, epoch: bool = False) -> tuple[wasmtime.Engine, wasmtime.Store, dict]:
    config = wasmtime.Config()
    config.consume_fuel = fuel
    config.epoch_interruption = epoch
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=4 << 16)
    if fuel:
        store.set_fuel(1_000_000)
    if epoch:
        store.set_epoch_deadline(1)

    def fail(a: int) -> int:
        raise HostFailure(f"host failed on {a}")

    linker = wasmtime.Linker(engine)
    linker.define_func("host", "fail", wasmtime.FuncType([I32], [I32]), fail)
    instance = linker.instantiate(store, wasmtime.Module(engine, PROBE_WAT))
    return engine, store, dict(instance.exports(store))


def _outcome(call, *args) -> tuple:
    try:
        return ("value", call(*args))
    except wasmtime.Trap as exc:
        return ("trap", exc.trap_code, exc.message.splitlines()[0])
    except Exception as exc:
        return (type(exc).__name__, str(exc).splitlines()[0])


def _both(store: wasmtime.Store, func: wasmtime.Func, result: wasmtime.ValType, *args: int) -> tuple[tuple, tuple]:
    fast = fastcall.FastCall(store, func, [I32] * len(args), result)
    return _outcome(func, store, *(wasmtime.Val.i32(a) for a in args)), _outcome(fast.call, *args)


def test_the_probe_passes_with_the_installed_wasmtime() -> None:
    assert fastcall.available(wasmtime.Engine())


@pytest.mark.parametrize("args", [(0, 0), (1, 2), (0xFFFFFFFF, 0x80000000), (-1, 7), (1 << 40, 5)])
def test_results_and_wrapping_match_func_call(args: tuple[int, int]) -> None:
    _, store, exports = _instance()
    public, fast = _both(store, exports["pack"], I64, *args)
    assert fast == public
    assert fast[0] == "value"


@pytest.mark.parametrize("value", [0, 1, -5, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_signed_i32_results_match_func_call(value: int) -> None:
    _, store, exports = _instance()
    assert _both(store, exports["neg"], I32, value)[1] == _both(store, exports["neg"], I32, value)[0]


@pytest.mark.parametrize("name, arg, code", [
    ("unreachable", 0, wasmtime.TrapCode.UNREACHABLE),
    ("div", 0, wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO),
    ("recurse", 0, wasmtime.TrapCode.STACK_OVERFLOW),
    ("oob", 0, wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS),
])
def test_traps_carry_the_same_code_and_message(name: str, arg: int, code: wasmtime.TrapCode) -> None:
    _, store, exports = _instance()
    public, fast = _both(store, exports[name], I32, arg)
    assert fast == public
    assert fast[:2] == ("trap", code)
    # The store stays usable after a trap on the fast path, with a fresh trap slot.
    assert _both(store, exports["neg"], I32, 3)[1] == ("value", -3)


def test_a_host_function_error_is_raised_as_itself() -> None:
    _, store, exports = _instance()
    public, fast = _both(store, exports["fail"], I32, 9)
    assert fast == public == ("HostFailure", "host failed on 9")


def test_out_of_fuel_traps_the_same_way() -> None:
    _, store, exports = _instance(fuel=True)
    fast = fastcall.FastCall(store, exports["loop"], [I32], I32)
    with pytest.raises(wasmtime.Trap) as caught:
        fast.call(0)
    assert caught.value.trap_code == wasmtime.TrapCode.OUT_OF_FUEL
    store.set_fuel(1_000_000)
    public = _outcome(exports["loop"], store, 0)
    assert public[:2] == ("trap", wasmtime.TrapCode.OUT_OF_FUEL)


def test_an_epoch_deadline_interrupts_the_same_way() -> None:
    engine, store, exports = _instance(epoch=True)
    fast = fastcall.FastCall(store, exports["loop"], [I32], I32)
    for call in (lambda: fast.call(0), lambda: exports["loop"](store, 0)):
        store.set_epoch_deadline(1)
        engine.increment_epoch()
        with pytest.raises(wasmtime.Trap) as caught:
            call()
        assert caught.value.trap_code == wasmtime.TrapCode.INTERRUPT


def test_memory_limits_apply_the_same_way() -> None:
    _, store, exports = _instance()
    public, fast = _both(store, exports["grow"], I32, 8)  # past the 4-page limit
    assert fast == public == ("value", -1)


def test_a_signature_other_than_declared_is_refused() -> None:
    _, store, exports = _instance()
    with pytest.raises(ValueError, match="signature"):
        fastcall.FastCall(store, exports["neg"], [I32, I32], I64)
    with pytest.raises(ValueError):
        fastcall.FastCall(store, exports["neg"], [I32], I64)


# ------------------------------------------------------------ the corpus

BODY = bytes(range(100))
# Every command any agent of the corpus acts on, plus plain payloads.
CONTENTS = [
    b"hello", BODY, b"", b"loop", b"clock", b"unreachable", b"div0", b"recurse", b"oobstore", b"grow",
    b"oob", b"big", b"2000", b"300000", b"3", b"!boom", b"echo hi", b"echo trap now", b"ping 1/3", b"pong",
    b"20 x", b"x" * (70 << 10), b"hello again",
]
LIMITS = {
    # Outcomes must not depend on how loaded the machine is. With fuel, only
    # fuel ends a loop (pure wasm or host-time, on now_ms): the wall-clock
    # timeout is far out of reach. Without fuel, only the wall clock ends
    # one, and everything else finishes in a small share of the timeout.
    "metered": SandboxLimits(memory_bytes=1 << 20, fuel=1_000_000, timeout_ms=60_000, max_message_bytes=64 << 10,
                             send_budget=4),
    "epoch-only": SandboxLimits(memory_bytes=1 << 20, fuel=0, timeout_ms=300, max_message_bytes=64 << 10),
}
# log_flood's 100,000 host calls a message take a few hundred ms and much
# fuel, too close to the limits above for the outcome to be the same on
# every run: it gets generous limits. It and loop.wat (which loops on every
# message, each costing the whole timeout) get a short script.
ROOMY = {"log_flood"}
SHORT = {"log_flood", "loop"}
SHORT_CONTENTS = [b"hello", b"loop"]
CORPUS = sorted([*AGENTS.glob("*.wat"), *EXAMPLES.glob("*.wat")])


def _wasm(tmp_path: Path, source: Path) -> Path | None:
    try:
        wasm = wasmtime.wat2wasm(source.read_text())
    except wasmtime.WasmtimeError:
        return None  # text wasmtime cannot parse: nothing to run
    path = tmp_path / f"{source.stem}.wasm"
    path.write_bytes(wasm)
    return path


def _run_corpus_agent(path: Path, limits: SandboxLimits, fast: bool) -> Iterator[tuple]:
    """Every observable outcome of one agent on the whole script."""
    contents = SHORT_CONTENTS if path.stem in SHORT else CONTENTS
    if path.stem in ROOMY:
        limits = dataclasses.replace(limits, timeout_ms=max(limits.timeout_ms, 10_000),
                                     fuel=limits.fuel and 100_000_000)
    try:
        sandbox = Sandbox(str(path), limits, fast_calls=fast)
        with sandbox.running():
            code = sandbox.start()
    except (LoadError, KeyError) as exc:  # KeyError: a required export is missing (deploy refuses those)
        yield ("load error", type(exc).__name__, str(exc))
        return
    assert sandbox.fast_calls is fast
    yield ("started", code)
    try:
        for number, content in enumerate(contents):
            message = caxton_pb2.AgentMessage(receiver=path.stem, sender="corpus", content=content,
                                              conversation_id=f"c{number}", message_id=f"m{number}")
            with sandbox.running():
                try:
                    outcome = sandbox.handle(message)
                except AgentError as exc:
                    yield ("error", content[:16], exc.code, exc.message, exc.reset, sandbox.take_logs())
                except LoadError as exc:  # the replacement instance could not start
                    yield ("load error", content[:16], str(exc))
                    return
                else:
                    yield ("reply", content[:16], outcome.reply, outcome.logs, list(outcome.sent))
        # A caller who stops waiting interrupts a loop, the same way. Only
        # without fuel (with it, fuel and the caller's deadline race), and
        # not for log_flood, where the interruption falls is timing.
        if limits.fuel or path.stem in ROOMY:
            yield ("counters", sandbox.messages, sandbox.errors, sandbox.resets)
            return
        message = caxton_pb2.AgentMessage(receiver=path.stem, sender="corpus", content=b"loop")
        with sandbox.running():
            try:
                outcome = sandbox.handle(message, caller_deadline=time.monotonic() + 0.08)
                yield ("reply", "deadline", outcome.reply)
            except AgentError as exc:
                yield ("error", "deadline", exc.code, exc.message.split(":")[0], exc.reset)
        yield ("counters", sandbox.messages, sandbox.errors, sandbox.resets)
    finally:
        with sandbox.running():
            yield ("shutdown", sandbox.shutdown())


@pytest.mark.parametrize("limits", list(LIMITS))
@pytest.mark.parametrize("source", CORPUS, ids=[p.stem for p in CORPUS])
def test_the_corpus_behaves_the_same_on_both_paths(tmp_path: Path, source: Path, limits: str) -> None:
    path = _wasm(tmp_path, source)
    if path is None:
        pytest.skip(f"{source.name} does not parse")
    public = list(_run_corpus_agent(path, LIMITS[limits], fast=False))
    fast = list(_run_corpus_agent(path, LIMITS[limits], fast=True))
    assert len(fast) == len(public)
    for step_fast, step_public in zip(fast, public, strict=True):
        assert step_fast == step_public


def test_the_corpus_contains_the_hostile_agents() -> None:
    """The comparison above must cover traps and every limit: a corpus
    that lost its hostile agents would compare nothing that matters."""
    names = {p.stem for p in CORPUS}
    assert {"attacker", "trap", "loop", "hog", "big_memory", "oob_reply", "big_reply", "log_flood",
            "init_traps"} <= names


@pytest.mark.parametrize("limits", list(LIMITS))
def test_the_hostile_outcomes_are_contained_on_the_fast_path(tmp_path: Path, limits: str) -> None:
    """Not only equal to the public path: what each attack must give."""
    path = _wasm(tmp_path, AGENTS / "attacker.wat")
    assert path is not None
    outcomes = {step[1]: step for step in _run_corpus_agent(path, LIMITS[limits], fast=True)
                if step[0] in ("error", "reply")}
    budget = grpc.StatusCode.RESOURCE_EXHAUSTED if limits == "metered" else grpc.StatusCode.DEADLINE_EXCEEDED
    expected = {
        b"loop": budget,
        b"clock": budget,
        b"unreachable": grpc.StatusCode.INTERNAL,
        b"div0": grpc.StatusCode.INTERNAL,
        b"recurse": grpc.StatusCode.INTERNAL,
        b"oobstore": grpc.StatusCode.INTERNAL,
        b"oob": grpc.StatusCode.INTERNAL,
    }
    for content, code in expected.items():
        assert outcomes[content][:3] == ("error", content, code), outcomes[content]
    assert outcomes[b"grow"][2] == b"grow-failed"
    assert outcomes[b"hello again"][2] == b"hello again"
    if limits == "epoch-only":
        assert outcomes["deadline"][2:4] == (grpc.StatusCode.DEADLINE_EXCEEDED, "agent interrupted")


def test_the_environment_switch_selects_the_public_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _wasm(tmp_path, EXAMPLES / "echo.wat")
    assert path is not None
    limits = LIMITS["metered"]
    assert Sandbox(str(path), limits).fast_calls
    monkeypatch.setenv(CALL_PATH_ENV, "public")
    assert not Sandbox(str(path), limits).fast_calls
    assert Sandbox(str(path), limits, fast_calls=True).fast_calls
