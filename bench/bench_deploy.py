"""Deploy latency: `DeployAgent` + the first `Send` answered.

That covers validation, storing the module, spawning the worker, loading
(compiling or deserializing) and instantiating the module, `caxton_init`, and
the first round trip: everything between "here is a module" and "it answers".

- cold: a new module every time (the echo agent with a unique custom section
  appended), so its SHA-256 is new and the compiled-module cache misses;
- cached: the same module under a new name every time, so the worker
  deserializes the compiled module from the cache. An anchor agent keeps that
  module deployed throughout: removing the last agent that uses a module
  also deletes its cached compiled form.

Each round's agent is removed after the round, outside the timing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from caxton.v1 import caxton_pb2
from tests.harness import SupervisorProcess

from . import report
from .support import deploy_and_send, with_custom_section

ROUNDS = 15
GROUP = "deploy: DeployAgent + first Send"

_names = itertools.count()


def remove(supervisor: SupervisorProcess, name: str, wasm: bytes | None = None) -> None:
    """Pedantic teardown: gets the round's arguments; only the name matters."""
    supervisor.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def _cached_forms(supervisor: SupervisorProcess, sha256: str) -> int:
    """Compiled forms of a module in the supervisor's cache, for extra_info
    only: the cache layout is the supervisor's business, so nothing is
    asserted on it."""
    cache = Path(supervisor.state_dir) / "cache"
    return len(list(cache.glob(f"{sha256}-*"))) if cache.is_dir() else 0


class SplitTimer:
    """Wraps deploy_and_send for pedantic and keeps each round's split
    (DeployAgent call, first Send), so a reader sees which part dominates."""

    def __init__(self) -> None:
        self.splits: list[tuple[float, float]] = []

    def __call__(self, supervisor: SupervisorProcess, name: str, wasm: bytes) -> None:
        self.splits.append(deploy_and_send(supervisor, name, wasm))

    def extra_info(self, rounds: int) -> dict[str, float]:
        measured = self.splits[-rounds:]  # the warmup round comes first
        return {
            "deploy_rpc_p50_ms": round(report.percentile([d for d, _ in measured], 50) * 1e3, 1),
            "first_send_p50_ms": round(report.percentile([s for _, s in measured], 50) * 1e3, 1),
        }


def _record(benchmark, timer: SplitTimer, kind: str, label: str) -> None:
    samples = benchmark.stats.stats.data
    p50 = report.percentile(samples, 50) * 1e3
    worst = max(samples) * 1e3
    benchmark.extra_info.update(p50_ms=round(p50, 1), max_ms=round(worst, 1), **timer.extra_info(len(samples)))
    report.record(f"deploy.{kind}.p50", p50, "ms", f"{label} p50")
    report.record(f"deploy.{kind}.max", worst, "ms", f"{label} max of {len(samples)}")


@pytest.mark.benchmark(group=GROUP)
def test_deploy_cold(benchmark, supervisor: SupervisorProcess, echo_wasm: bytes) -> None:
    cache_hits_possible = 0

    def setup() -> tuple[tuple[SupervisorProcess, str, bytes], dict]:
        nonlocal cache_hits_possible
        n = next(_names)
        wasm = with_custom_section(echo_wasm, "caxton-bench", f"cold-{os.getpid()}-{n}".encode())
        if _cached_forms(supervisor, hashlib.sha256(wasm).hexdigest()):
            cache_hits_possible += 1
        return (supervisor, f"deploy-cold-{n}", wasm), {}

    timer = SplitTimer()
    benchmark.pedantic(timer, setup=setup, teardown=remove, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["rounds_with_module_already_cached"] = cache_hits_possible
    _record(benchmark, timer, "cold", "deploy, new module (cold)")


@pytest.fixture
def anchor(supervisor: SupervisorProcess, echo_wasm: bytes) -> Iterator[str]:
    """Keeps the plain echo module deployed, so its compiled form stays cached."""
    name = f"deploy-anchor-{next(_names)}"
    deploy_and_send(supervisor, name, echo_wasm)
    try:
        yield supervisor.status(name).module_sha256
    finally:
        remove(supervisor, name)


@pytest.mark.benchmark(group=GROUP)
def test_deploy_cached(benchmark, supervisor: SupervisorProcess, echo_wasm: bytes, anchor: str) -> None:
    cached_rounds = 0

    def setup() -> tuple[tuple[SupervisorProcess, str, bytes], dict]:
        nonlocal cached_rounds
        if _cached_forms(supervisor, anchor):
            cached_rounds += 1
        return (supervisor, f"deploy-cached-{next(_names)}", echo_wasm), {}

    timer = SplitTimer()
    benchmark.pedantic(timer, setup=setup, teardown=remove, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["rounds_with_module_cached"] = cached_rounds
    _record(benchmark, timer, "cached", "deploy, same module (cached)")
