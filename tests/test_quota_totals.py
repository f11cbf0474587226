"""The host-wide quotas without a sum over every agent per deploy.

A deploy checks the quotas under the registry's lock; summing what every
agent holds there cost 1.3 ms at 1,000 agents, so admission.py keeps the
total as agents join and leave and sums again only after some agent's
version changed (a reload, a rollback). These tests hold it to what a fresh
sum says at each step: in-process, with a real Runtime and SQLite store
around fake workers (tests/fakes.py), and `Usage.total` directly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from caxton.supervisor.caps import Caps, Usage
from caxton.supervisor.config import Config
from caxton.supervisor.errors import ResourceExhausted
from caxton.supervisor.events import EventBus
from caxton.supervisor.runtime import Runtime
from caxton.supervisor.specs import DeploySpec, LimitOverrides, ReloadSpec
from caxton.supervisor.store import StateStore

from .fakes import FakeLaunch
from .harness import module

MIB = 1 << 20


@pytest.mark.parametrize("holdings", [
    [],
    [(64 * MIB, 1)],
    [(64 * MIB, 1), (MIB, 3), (32 * MIB, 2)],
    # An agent that cannot be restored holds no replicas, yet counts as an agent.
    [(64 * MIB, 0), (MIB, 1)],
])
def test_the_usage_of_agents_together_is_the_sum_of_each_ones(holdings):
    expected = sum((Usage.of(memory, replicas) for memory, replicas in holdings), Usage())
    assert Usage.total(iter(holdings)) == expected
    assert Usage.total(iter(holdings)).agents == len(holdings)


@pytest.fixture
def runtime(tmp_path):
    """Quotas: 10 agents, 10 workers, 24 MiB committed; agents get 2 MiB
    unless they ask otherwise."""
    caps = replace(Caps(), memory_bytes=16 * MIB, agents=10, workers=10, committed_memory_bytes=24 * MIB)
    config = replace(Config(), state_dir=tmp_path / "state", caps=caps,
                     limits=replace(Config().limits, memory_bytes=2 * MIB))
    runtime = Runtime(config, StateStore(config.state_dir), FakeLaunch(), EventBus())
    yield runtime
    runtime.shutdown(5.0)
    runtime.store.close()


def deploy(runtime: Runtime, name: str, memory_mib: int = 2, replicas: int = 1) -> None:
    runtime.deploy(DeploySpec(name=name, module=module("echo"), limits=LimitOverrides(memory_bytes=memory_mib * MIB),
                              replicas=replicas))


def committed(runtime: Runtime) -> int:
    """What the quota counts now, from the runtime's figure, checked
    against a sum over every agent."""
    with runtime._lock:
        held = runtime.admission._held()
    fresh = Usage.total((a.limits.memory_bytes, a.replicas) for a in (runtime.get(n.name) for n in runtime.list()))
    assert held == fresh
    return held.memory_bytes // MIB


def test_the_kept_total_follows_deploys_reloads_rollbacks_and_removes(runtime):
    deploy(runtime, "a", 8, replicas=2)
    deploy(runtime, "b")
    assert committed(runtime) == 18
    # A reload switches b to 6 MiB: 22 held, so 4 more MiB would pass the quota.
    runtime.hot_reload(ReloadSpec(name="b", module=module("uppercase"), limits=LimitOverrides(memory_bytes=6 * MIB)))
    assert committed(runtime) == 22
    with pytest.raises(ResourceExhausted, match=r"caps\.committed_memory"):
        deploy(runtime, "c", 4)
    deploy(runtime, "c", 2)
    assert committed(runtime) == 24
    # Back to b's 2 MiB version: its 4 MiB are free again.
    runtime.rollback("b", None, None)
    assert committed(runtime) == 20
    deploy(runtime, "d", 4)
    # A remove frees what the agent held; a failed deploy holds nothing.
    runtime.remove("a", 5.0)
    assert committed(runtime) == 8
    with pytest.raises(ResourceExhausted):
        deploy(runtime, "e", 16, replicas=2)
    deploy(runtime, "e", 16)
    assert committed(runtime) == 24
