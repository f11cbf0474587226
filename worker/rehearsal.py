"""The fork server's rehearsal: one Load and one message of a tiny agent,
before it forks any worker.

Much of what a worker's first Load costs is paid once per process: wasmtime-py
builds its ctypes call wrappers as they are first used, and CPython 3.11
specialises the bytecode of the load and call paths as they first run. Done
once in the fork server, every worker inherits the result instead of each
paying for it on its deploy's path.

The compile is not helped: a forked worker maps wasmtime's code afresh.
Measured on forked children loading the echo agent (median of 40): Sandbox()
3.2-3.7 ms against 4.2-4.5, start 0.7-0.9 against 1.0, ~100 page faults
fewer. In real workers, though, Load's time did not change measurably
(bench/README.md, 2026-11-30, seventh session); what it saved there is
memory: idle workers' USS 0.1 MiB lower.

The rehearsal uses an engine of its own (the workers' prepared engine stays
untouched) and leaves no thread behind, so forking afterwards stays safe. It
costs the fork server about 1 MiB of heap, and maps wasmtime's compiler code
(page cache, shared). The fork server never collects garbage, so the
rehearsal's (its sandbox's reference cycles) stays there, never touched by a
worker.

Best effort: if it fails, workers only pay the first-use costs themselves.
"""

from __future__ import annotations

import logging
import os
import tempfile

import wasmtime

from caxton.v1 import caxton_pb2

from .sandbox import AgentError, LoadError, Sandbox, SandboxLimits, engine_config

log = logging.getLogger("caxton.worker")

# The smallest agent of the ABI that also calls the host (at init).
_AGENT_WAT = """
(module
  (import "caxton" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32) (i32.const 1024))
  (func (export "caxton_init") (result i32) (drop (call $now_ms)) (i32.const 0))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))
"""

# Metered and timed, like the agents the fork server's workers usually run.
_LIMITS = SandboxLimits(memory_bytes=1 << 20, fuel=1_000_000, timeout_ms=1000)

# The rehearsal's epoch ticker gets this long to end before the fork server
# goes on (it ends within one tick).
_TICKER_WAIT_S = 1.0


def rehearse() -> bool:
    """Run the rehearsal; True if the agent answered its message."""
    try:
        with tempfile.TemporaryDirectory(prefix="caxton-rehearsal-") as directory:
            path = os.path.join(directory, "agent.wasm")
            with open(path, "wb") as f:
                f.write(wasmtime.wat2wasm(_AGENT_WAT))
            box = Sandbox(path, _LIMITS, engine=wasmtime.Engine(engine_config(_LIMITS)))
            try:
                with box.running():
                    box.start()
                    reply = box.handle(caxton_pb2.AgentMessage(content=b"rehearsal")).reply
            finally:
                box.shutdown(wait_s=_TICKER_WAIT_S)
    except (OSError, LoadError, AgentError, wasmtime.WasmtimeError) as exc:
        log.warning("the fork server's rehearsal failed (%s): each worker's first Load pays for it", exc)
        return False
    return reply == b"rehearsal"
