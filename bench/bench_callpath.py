"""In-worker time per 100-byte message, against Extism's host SDK.

The same job everywhere: reverse 100 bytes, in a module that does only that
(bench/reverse.wat for Caxton; bench/extism_reverse.wat, a copy of
../shared/peers/extism_reverse.wat written against Extism's kernel imports,
for Extism). Measured side by side in one clean interpreter
(bench/callpath_side_by_side.py explains why not inside pytest):

- `Sandbox.handle` as the worker runs it (fast call path, worker/fastcall.py),
  with the default metering (fuel and an epoch deadline) and unmetered;
- the same `Sandbox` told to use wasmtime's public `Func.__call__`
  (`fast_calls=False`): what the fallback costs;
- bench/frozen_call_path.py: the call path as it was before the fast path,
  frozen as the baseline;
- Extism's Python host SDK, `Plugin(wasm, wasi=False).call("reverse", data)`
  (from the bench extra; left out when it is not installed). Extism meters
  nothing by default, so the unmetered Caxton figure is the like-for-like one
  and the metered one is what Caxton ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import report
from .report import Row

ROUNDS = 30
ITERATIONS = 2000
TIMEOUT_S = 300
LABELS = {
    "fast.metered": "Sandbox.handle, fast call path (metered)",
    "fast.unmetered": "Sandbox.handle, fast call path (unmetered)",
    "public.metered": "Sandbox.handle, Func.__call__ fallback (metered)",
    "frozen.metered": "frozen pre-fastcall Sandbox.handle (metered)",
    "frozen.unmetered": "frozen pre-fastcall Sandbox.handle (unmetered)",
}

report.ROWS.extend([
    Row("in-worker", "callpath.fast.metered", "callpath.extism", "≤ 10 µs; ≤ 0.8"),
    Row("in-worker", "callpath.fast.unmetered", "callpath.extism", "≤ 0.8"),
    Row("in-worker", "callpath.fast.metered", "callpath.frozen.metered"),
    Row("in-worker", "callpath.fast.unmetered", "callpath.frozen.unmetered"),
    Row("in-worker", "callpath.public.metered", "callpath.frozen.metered"),
    Row("in-worker", "callpath.frozen.metered", "callpath.extism"),
])


@pytest.mark.benchmark(group="in-worker: reverse 100 bytes, per call")
def test_callpath_side_by_side(benchmark) -> None:
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "bench.callpath_side_by_side", f"--rounds={ROUNDS}", f"--iterations={ITERATIONS}"],
        cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    benchmark.extra_info.update(figures)
    # The run itself is timed once, so pytest-benchmark has a row for it.
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for name, label in LABELS.items():
        report.record(f"callpath.{name}", figures[name], "µs", label)
    if "extism" in figures:
        report.record("callpath.extism", figures["extism"], "µs", f"Extism {figures['extism_version']} Plugin.call")
