"""Same-page merging: idle workers' memory before and after the host's ksmd
has merged their identical pages (worker/page_merging.py).

Runs only where the host runs ksmd (`/sys/kernel/mm/ksm/run` is 1), and is
skipped elsewhere, saying so. It never changes the host's settings: it
records them (`pages_to_scan`, `sleep_millisecs`), which decide how fast the
merging goes and what ksmd costs.

A supervisor of its own (forked workers, `merge_pages` on as shipped,
parked after 5 s) deploys MERGE_AGENTS idle echo agents (1 MiB each, as in
bench_scale.py), each answering once. Then, for the same fleet:
- before merging: worker PSS / USS (median), the machine's memory used per
  agent since the supervisor started, and the first message to each of
  WAKE_SAMPLE parked agents (the cost of waking one; the baseline);
- ksmd is given until it has finished three full scans (a page is merged
  on the scan after the one that saw it unchanged, and the scan under way
  when the wait starts may have passed some workers by), within
  CAXTON_BENCH_MERGE_S (default 600 s); its CPU over that time is recorded;
- after: the same figures, KSM's own `general_profit` per agent (what it
  saved less what its bookkeeping costs), the first message to each of
  WAKE_SAMPLE other parked agents (a merged page a worker writes to is
  copied back first: what that adds to a wake), and every agent answering.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable

import psutil
import pytest

from caxton.supervisor.ksm import KSM_RUN_PATH, host_merges_pages
from caxton.v1 import caxton_pb2

from . import report
from .support import MIB, deploy_and_send, memory_of, running_supervisor, wait_parked

MERGE_AGENTS = 100
WAKE_SAMPLE = 10
FULL_SCANS = 3
MERGE_BUDGET_S = float(os.environ.get("CAXTON_BENCH_MERGE_S", "600"))
AGENT_LIMITS = caxton_pb2.ResourceLimits(memory_bytes=1 << 20)
CONFIG = 'worker_start = "fork"\npark_after_s = 5\n'
_KSM = os.path.dirname(KSM_RUN_PATH)


def _ksm(name: str) -> int:
    with open(os.path.join(_KSM, name)) as f:
        return int(f.read())


def _ksmd_cpu_s() -> float:
    """CPU seconds of the kernel's ksmd thread so far (0 if not found)."""
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "ksmd":
            try:
                times = process.cpu_times()
                return times.user + times.system
            except psutil.Error:
                return 0.0
    return 0.0


def _memory(pids: list[int]) -> tuple[float, float]:
    samples = [s for s in map(memory_of, pids) if s is not None]
    return statistics.median(s.pss for s in samples) / MIB, statistics.median(s.uss for s in samples) / MIB


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[7])


def _wake(send: Callable[[str], None], workers: dict[str, int]) -> tuple[float, float]:
    """The first message to each (parked) agent of `workers` (name: its
    worker's pid): p50 in ms, and the median of the page faults the worker
    took meanwhile (each a page copied, or mapped, for it)."""
    times, faults = [], []
    for name, pid in workers.items():
        before = _minor_faults(pid)
        start = time.perf_counter()
        send(name)
        times.append(time.perf_counter() - start)
        faults.append(_minor_faults(pid) - before)
    return statistics.median(times) * 1e3, statistics.median(faults)


def _wait_full_scans(count: int) -> tuple[int, float]:
    """Wait (up to MERGE_BUDGET_S) until ksmd has finished `count` more full
    scans; returns how many it finished and the seconds it took."""
    start, first = time.monotonic(), _ksm("full_scans")
    while _ksm("full_scans") - first < count and time.monotonic() - start < MERGE_BUDGET_S:
        time.sleep(1.0)  # polling ksmd's counter, with the deadline above
    return _ksm("full_scans") - first, time.monotonic() - start


@pytest.mark.benchmark(group="merging: idle workers' memory once ksmd has merged it")
def test_idle_workers_after_merging(benchmark, tmp_path_factory: pytest.TempPathFactory, echo_wasm: bytes) -> None:
    if not host_merges_pages():
        pytest.skip(f"the host's ksmd is not running ({KSM_RUN_PATH} is not 1): docs/operations.md, "
                    "'Same-page merging'")
    used_at_start = psutil.virtual_memory().used
    with running_supervisor(tmp_path_factory.mktemp("merging") / "state", config=CONFIG) as supervisor:
        names = [f"merge-{i}" for i in range(MERGE_AGENTS)]
        benchmark.pedantic(lambda: [deploy_and_send(supervisor, name, echo_wasm, AGENT_LIMITS) for name in names],
                           rounds=1)
        pids = supervisor.worker_pids()
        assert len(pids) == MERGE_AGENTS, f"{len(pids)} workers for {MERGE_AGENTS} agents"
        woken = random.Random(16).sample(names, 2 * WAKE_SAMPLE)
        # Read before they are parked: a status call would not wake them.
        worker_of = {name: supervisor.status(name).instances[0].pid for name in woken}
        parked = wait_parked(pids, 120.0)
        assert parked["parked"] == MERGE_AGENTS, f"only {parked['parked']} of {MERGE_AGENTS} workers parked"

        def send(name: str) -> None:
            assert supervisor.send(name, b"wake").reply.content == b"wake"

        pss_before, uss_before = _memory(pids)
        used_before = (psutil.virtual_memory().used - used_at_start) / MERGE_AGENTS / MIB
        wake_before, faults_before = _wake(send, {name: worker_of[name] for name in woken[:WAKE_SAMPLE]})
        profit_before, cpu_before = _ksm("general_profit"), _ksmd_cpu_s()
        scans, waited = _wait_full_scans(FULL_SCANS)
        ksmd_cpu = (_ksmd_cpu_s() - cpu_before) / waited * 100
        profit = (_ksm("general_profit") - profit_before) / MERGE_AGENTS / MIB
        pss_after, uss_after = _memory(pids)
        used_after = (psutil.virtual_memory().used - used_at_start) / MERGE_AGENTS / MIB
        wake_after, faults_after = _wake(send, {name: worker_of[name] for name in woken[WAKE_SAMPLE:]})
        for name in names:
            send(name)

    benchmark.extra_info.update(
        agents=MERGE_AGENTS, pages_to_scan=_ksm("pages_to_scan"), sleep_millisecs=_ksm("sleep_millisecs"),
        full_scans=scans, waited_s=round(waited, 1), ksmd_cpu_pct=round(ksmd_cpu, 1),
        pss_before_mib=round(pss_before, 2), uss_before_mib=round(uss_before, 2),
        pss_after_mib=round(pss_after, 2), uss_after_mib=round(uss_after, 2),
        used_per_agent_before_mib=round(used_before, 2), used_per_agent_after_mib=round(used_after, 2),
        ksm_profit_per_agent_mib=round(profit, 2), wake_before_ms=round(wake_before, 2),
        wake_after_ms=round(wake_after, 2), wake_faults_before=faults_before, wake_faults_after=faults_after,
    )
    label = f"{MERGE_AGENTS} agents"
    report.record("merging.before.pss", pss_before, "MiB", f"worker PSS, {label}, before merging")
    report.record("merging.after.pss", pss_after, "MiB", f"worker PSS, {label}, merged")
    report.record("merging.before.uss", uss_before, "MiB", f"worker USS, {label}, before merging")
    report.record("merging.after.uss", uss_after, "MiB", f"worker USS, {label}, merged")
    report.record("merging.before.used", used_before, "MiB", f"machine memory per agent, {label}, before merging")
    report.record("merging.after.used", used_after, "MiB", f"machine memory per agent, {label}, merged")
    report.record("merging.profit", profit, "MiB", "KSM's net saving per agent (general_profit)")
    report.record("merging.ksmd_cpu", ksmd_cpu, "%", f"ksmd CPU while merging ({_ksm('pages_to_scan')} pages "
                                                     f"per {_ksm('sleep_millisecs')} ms)")
    report.record("merging.before.wake", wake_before, "ms", "first message to a parked agent, before merging")
    report.record("merging.after.wake", wake_after, "ms", "first message to a parked agent, merged")
    report.record("merging.before.wake_faults", faults_before, "faults",
                  "its worker's page faults meanwhile, before merging")
    report.record("merging.after.wake_faults", faults_after, "faults", "its worker's page faults meanwhile, merged")
    assert scans >= FULL_SCANS, (f"ksmd finished {scans} full scans in {waited:.0f} s: raise its pages_to_scan "
                        "or CAXTON_BENCH_MERGE_S")
