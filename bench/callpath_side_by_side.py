"""Per-call cost of reversing 100 bytes, Caxton beside Extism, measured in a
clean interpreter with the calls interleaved: `python -m bench.callpath_side_by_side`
prints one JSON object, microseconds per call for each variant.

Why a separate process: under pytest, Extism's calls run up to twice as
slow as in a plain interpreter (pytest enables `faulthandler`, whose
signal handlers slow Extism's wasmtime entry: measured 11.4 -> 17.3 µs per
call in a plain script just by calling `faulthandler.enable()`), while
wasmtime-py's are unaffected; a comparison inside pytest would flatter
Caxton. Interleaving the variants round by round spreads a shared
machine's noise over all of them alike. Each figure is the fastest round's
mean per call.

Variants (bench/bench_callpath.py describes them): `fast.metered`,
`fast.unmetered`, `public.metered`, `frozen.metered`, `frozen.unmetered`,
and `extism` when the bench extra's `extism` is installed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

import wasmtime

from caxton.v1 import caxton_pb2
from caxton.worker.sandbox import Sandbox, SandboxLimits

from .frozen_call_path import FrozenCallPath

PAYLOAD = bytes(range(100))  # bench.support.PAYLOAD, without importing the harness
REVERSED = PAYLOAD[::-1]
LIMITS = {
    "metered": SandboxLimits(memory_bytes=64 << 20, fuel=1_000_000_000, timeout_ms=5000, max_message_bytes=1 << 20),
    "unmetered": SandboxLimits(memory_bytes=64 << 20, fuel=0, timeout_ms=0, max_message_bytes=1 << 20),
}
HERE = Path(__file__).resolve().parent
EXTISM_REVERSE = HERE / "extism_reverse.wat"


@contextmanager
def _sandbox(wasm_path: str, limits: SandboxLimits, fast: bool) -> Iterator[Callable[[], bytes | None]]:
    sandbox = Sandbox(wasm_path, limits, fast_calls=fast)
    if sandbox.fast_calls is not fast:
        raise SystemExit("the fast call path failed its probe")
    message = caxton_pb2.AgentMessage(receiver="reverse", sender="bench", content=PAYLOAD)
    with sandbox.running():
        if sandbox.start() != 0:
            raise SystemExit("reverse.wat did not start")
        try:
            yield lambda: sandbox.handle(message).reply
        finally:
            sandbox.shutdown()


def _frozen(wasm: bytes, limits: SandboxLimits) -> Callable[[], bytes | None]:
    frozen = FrozenCallPath(wasm, limits)
    message = caxton_pb2.AgentMessage(receiver="reverse", sender="bench", content=PAYLOAD)
    return lambda: frozen.handle(message).reply


def _extism() -> Callable[[], bytes | None] | None:
    try:
        import extism
    except ImportError:
        return None
    plugin = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_REVERSE.read_text())), wasi=False)
    return lambda: bytes(plugin.call("reverse", PAYLOAD))


def measure(rounds: int, iterations: int) -> dict[str, float | str]:
    wasm = bytes(wasmtime.wat2wasm((HERE / "reverse.wat").read_text()))
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="callpath-"))
        wasm_path = str(Path(tmp) / "reverse.wasm")
        Path(wasm_path).write_bytes(wasm)
        variants: dict[str, Callable[[], bytes | None]] = {
            "fast.metered": stack.enter_context(_sandbox(wasm_path, LIMITS["metered"], True)),
            "fast.unmetered": stack.enter_context(_sandbox(wasm_path, LIMITS["unmetered"], True)),
            "public.metered": stack.enter_context(_sandbox(wasm_path, LIMITS["metered"], False)),
            "frozen.metered": _frozen(wasm, LIMITS["metered"]),
            "frozen.unmetered": _frozen(wasm, LIMITS["unmetered"]),
        }
        extism_call = _extism()
        if extism_call is not None:
            variants["extism"] = extism_call
        for name, call in variants.items():
            reply = call()
            if reply != REVERSED:
                raise SystemExit(f"{name} replied {reply!r}, not the reversed payload")
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(rounds):
            for name, call in variants.items():
                start = time.perf_counter()
                for _ in range(iterations):
                    call()
                best[name] = min(best[name], (time.perf_counter() - start) / iterations * 1e6)
        for name, call in variants.items():
            if call() != REVERSED:  # a broken path must not produce a fast-looking number
                raise SystemExit(f"{name} stopped replying correctly")
    result: dict[str, float | str] = {name: round(us, 3) for name, us in best.items()}
    result["wasmtime"] = metadata.version("wasmtime")
    if extism_call is not None:
        result["extism_version"] = metadata.version("extism")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rounds, args.iterations)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
