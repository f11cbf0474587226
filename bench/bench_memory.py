"""Memory per agent, and deploy time as the number of agents grows.

A supervisor of its own deploys echo agents in steps (10, 50, 100, 200).
Each step times the deploys it adds (DeployAgent + first Send, as in
bench_deploy.py) and then reads the memory of every idle worker with
psutil's `memory_full_info()`:

- RSS counts shared pages (the Python interpreter, grpc, wasmtime) in full
  for every worker, so it overstates the cost of an agent;
- USS is what one worker alone holds: what ending it gives back;
- PSS splits shared pages between their users: summed over workers it is
  their true total, so PSS per agent is the honest marginal cost.

Also recorded: the supervisor's own RSS; in extra_info, the PSS of the fork
server that workers are forked from (when there is one) and the machine's
"used" memory growth per agent since the supervisor started (it includes
what the kernel spends per process, but other work on a shared machine moves
it too, so it stays out of the summary table).

Baselines are the first step (how the figures grow) and the supervisor with
no agents.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from tests.harness import SupervisorProcess, worker_pids_of

from . import report
from .support import MIB, grow_fleet, memory_of, running_supervisor

# Deploys take tens of milliseconds with the fork server, so the 200 step
# costs seconds; CAXTON_BENCH_QUICK=1 stops at 100 (e.g. with exec-started
# workers, ~0.3 s each).
STEPS = [10, 50, 100] + ([] if os.environ.get("CAXTON_BENCH_QUICK") == "1" else [200])


@dataclass
class Fleet:
    supervisor: SupervisorProcess
    used_at_start: int
    names: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fresh supervisor; its agents accumulate over the steps and all go
    when it is stopped at the end of the module."""
    with running_supervisor(tmp_path_factory.mktemp("memory") / "state") as supervisor:
        sample = memory_of(supervisor.pid)
        report.record("memory.0.supervisor_rss", sample.rss / MIB, "MiB", "supervisor RSS, 0 agents")
        yield Fleet(supervisor, psutil.virtual_memory().used)


@pytest.mark.benchmark(group="memory: deploy time per agent as the count grows")
@pytest.mark.parametrize("count", STEPS)
def test_memory_per_agent(benchmark, fleet: Fleet, echo_wasm: bytes, count: int) -> None:
    supervisor = fleet.supervisor
    first_new = len(fleet.names)
    splits = grow_fleet(benchmark, supervisor, fleet.names, "mem", count, echo_wasm)

    pids = supervisor.worker_pids()
    assert len(pids) == count, f"{len(pids)} workers for {count} agents"
    samples = [s for s in (memory_of(pid) for pid in pids) if s is not None]
    rss = statistics.median(s.rss for s in samples) / MIB
    uss = statistics.median(s.uss for s in samples) / MIB
    pss = statistics.median(s.pss for s in samples) / MIB
    pss_total = sum(s.pss for s in samples) / MIB
    supervisor_rss = memory_of(supervisor.pid).rss / MIB
    # Workers forked from a pre-warmed fork server share its pages; it is a
    # fixed cost like the supervisor, reported beside it.
    helpers = [memory_of(pid) for pid in set(worker_pids_of(supervisor.pid, include_fork_server=True)) - set(pids)]
    helper_pss = sum(s.pss for s in helpers if s is not None) / MIB
    used_per_agent = (psutil.virtual_memory().used - fleet.used_at_start) / count / MIB
    deploy_p50 = report.percentile(benchmark.stats.stats.data, 50) * 1e3

    benchmark.extra_info.update(
        agents=count,
        deploy_p50_ms=round(deploy_p50, 1),
        deploy_rpc_p50_ms=round(report.percentile([d for d, _ in splits], 50) * 1e3, 1),
        first_send_p50_ms=round(report.percentile([s for _, s in splits], 50) * 1e3, 1),
        worker_rss_mib=round(rss, 1),
        worker_uss_mib=round(uss, 1),
        worker_pss_mib=round(pss, 1),
        workers_pss_total_mib=round(pss_total, 1),
        supervisor_rss_mib=round(supervisor_rss, 1),
        fork_server_pss_mib=round(helper_pss, 1),
        system_used_per_agent_mib=round(used_per_agent, 1),
    )
    report.record(f"memory.{count}.deploy_p50", deploy_p50, "ms", f"deploy p50, agents {first_new + 1}-{count}")
    report.record(f"memory.{count}.pss", pss, "MiB", f"worker PSS (median), {count} agents")
    report.record(f"memory.{count}.uss", uss, "MiB", f"worker USS (median), {count} agents")
    report.record(f"memory.{count}.rss", rss, "MiB", f"worker RSS (median), {count} agents")
    report.record(f"memory.{count}.supervisor_rss", supervisor_rss, "MiB", f"supervisor RSS, {count} agents")
