"""Scale: how many idle echo agents one machine holds, and what each costs.

A supervisor of its own (`worker_start = "fork"`) deploys echo agents one
after another in steps of 10, 100 and 500 agents (`CAXTON_BENCH_SCALE=1000`
adds a 1000 step; any other number is the last step; `CAXTON_BENCH_QUICK=1`
stops at 100 unless CAXTON_BENCH_SCALE is set). Per step:

- deploy p50/p99 of the deploys the step adds (`DeployAgent` + first `Send`
  answered, as in bench_deploy.py; the same module, so cached after the
  first);
- PSS and USS per worker (`memory_full_info()`, median over a fixed-seed
  sample of up to 50 workers: reading smaps of every worker at 1000 agents
  would take longer than the deploys), threads per worker;
- the supervisor's RSS, threads and open file descriptors (against its
  RLIMIT_NOFILE), the fork server's PSS;
- the machine: memory used (`psutil.virtual_memory().used`, and its growth
  per agent since the supervisor started; other work on a shared machine
  moves it too), and tasks (processes + threads) against `kernel.pid_max`;
- the CPU the idle fleet burns (workers, supervisor) over 5 s without
  messages: gRPC's own wake-ups and the health checks;
- that every agent answers one message afterwards (8 client threads; every
  reply checked), and how long that sweep took;
- how long the whole step took, wall clock.

If a deploy fails, the step records the error text and the state of every
limit it could have hit (descriptors, tasks, memory, the supervisor still
alive) in extra_info, and fails with all of it in the message.

Baselines are the first step (how the figures grow) and the supervisor with
no agents. Targets from the issue (request to first reply p50 <= 30 ms with
fork; PSS <= 10 MiB per idle agent) are printed, never checked.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import psutil
import pytest

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import SupervisorProcess, alive, worker_pids_of

from . import report
from .support import MIB, auth_metadata, grow_fleet, memory_of, numbered_payload, payload_number

_BASE_STEPS = (10, 100, 500, 1000)
SCALE = int(os.environ.get("CAXTON_BENCH_SCALE") or ("100" if os.environ.get("CAXTON_BENCH_QUICK") == "1" else "500"))
STEPS = sorted({s for s in _BASE_STEPS if s <= SCALE} | {SCALE})
MEMORY_SAMPLE = 50
SWEEP_THREADS = 8
IDLE_WINDOW_S = 5.0
CONFIG = 'worker_start = "fork"\n'


def _tasks() -> tuple[int, int]:
    """(tasks on the machine, kernel.pid_max): every process and thread
    takes a pid, so this is the limit forking and thread creation meet."""
    with open("/proc/loadavg") as f:
        total = int(f.read().split()[3].split("/")[1])
    with open("/proc/sys/kernel/pid_max") as f:
        return total, int(f.read())


@dataclass
class Fleet:
    supervisor: SupervisorProcess
    used_at_start: int
    started: float
    names: list[str] = field(default_factory=list)
    broken: str = ""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fresh supervisor; its agents accumulate over the steps and all go
    when it is stopped at the end of the module."""
    state = tmp_path_factory.mktemp("scale") / "state"
    supervisor = SupervisorProcess(state, config=CONFIG)
    supervisor.start()
    try:
        process = psutil.Process(supervisor.pid)
        report.record("scale.0.supervisor_rss", process.memory_info().rss / MIB, "MiB", "supervisor RSS, 0 agents")
        report.record("scale.0.supervisor_threads", process.num_threads(), "threads", "supervisor threads, 0 agents")
        report.record("scale.0.supervisor_fds", process.num_fds(), "fds", "supervisor open fds, 0 agents")
        yield Fleet(supervisor, psutil.virtual_memory().used, time.perf_counter())
    finally:
        try:
            supervisor.stop(timeout=180)
        except AssertionError:
            pass  # stop() killed it after the deadline
        finally:
            supervisor.kill()


def _diagnose(fleet: Fleet, exc: BaseException) -> dict:
    """What every limit looked like when a deploy failed."""
    sup = fleet.supervisor
    text = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
    code = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
    info: dict = {"error_code": code, "error": text[:2000], "agents_deployed": len(fleet.names),
                  "supervisor_alive": alive(sup.pid)}
    try:
        process = psutil.Process(sup.pid)
        soft, hard = process.rlimit(psutil.RLIMIT_NOFILE)
        info.update(supervisor_fds=process.num_fds(), supervisor_nofile=[soft, hard],
                    supervisor_threads=process.num_threads(),
                    supervisor_rss_mib=round(process.memory_info().rss / MIB, 1),
                    supervisor_nproc_limit=list(process.rlimit(psutil.RLIMIT_NPROC)))
    except psutil.Error as err:
        info["supervisor_error"] = str(err)
    tasks, pid_max = _tasks()
    with open("/proc/sys/kernel/threads-max") as f:
        threads_max = int(f.read())
    memory = psutil.virtual_memory()
    info.update(machine_tasks=tasks, pid_max=pid_max, threads_max=threads_max,
                memory_available_mib=round(memory.available / MIB), workers=len(sup.worker_pids()),
                supervisor_log_tail=sup.log_text()[-3000:])
    return info


def _sweep(fleet: Fleet) -> tuple[int, Counter, float]:
    """One numbered message to every agent, from SWEEP_THREADS callers; returns
    (answered correctly, errors by code, seconds)."""
    names = list(fleet.names)
    answered = 0
    errors: Counter = Counter()
    lock = threading.Lock()
    metadata = auth_metadata(fleet.supervisor)

    def run(part: list[tuple[int, str]]) -> None:
        nonlocal answered
        with grpc.insecure_channel(fleet.supervisor.address) as channel:
            stub = caxton_pb2_grpc.MessagingStub(channel)
            for number, name in part:
                message = caxton_pb2.AgentMessage(receiver=name, sender="bench", content=numbered_payload(number))
                try:
                    response = stub.Send(caxton_pb2.SendRequest(message=message), timeout=60, metadata=metadata)
                except grpc.RpcError as exc:
                    with lock:
                        errors[f"{exc.code().name}: {exc.details()[:200]}"] += 1
                    continue
                ok = response.has_reply and payload_number(response.reply.content) == number
                with lock:
                    if ok:
                        answered += 1
                    else:
                        errors["wrong reply"] += 1

    numbered = list(enumerate(names, 1))
    threads = [threading.Thread(target=run, args=(numbered[i::SWEEP_THREADS],)) for i in range(SWEEP_THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered, errors, time.perf_counter() - start


def _idle_cpu(supervisor_pid: int, pids: list[int]) -> dict[str, float]:
    """CPU the idle fleet burns: every worker and the supervisor over
    IDLE_WINDOW_S, with no message sent. Health checks ask an idle worker
    only once a minute (supervisor/health.py), so a window this short sees
    such a sweep in about one run in twelve, and then a whole one."""
    workers = []
    for pid in pids:
        try:
            workers.append(psutil.Process(pid))
        except psutil.Error:
            pass

    def used(processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    supervisor = [psutil.Process(supervisor_pid)]
    start = time.perf_counter()
    before_workers, before_supervisor = used(workers), used(supervisor)
    time.sleep(IDLE_WINDOW_S)
    elapsed = time.perf_counter() - start
    workers_s, supervisor_s = used(workers) - before_workers, used(supervisor) - before_supervisor
    return {
        "idle_cpu_workers_pct": round(workers_s / elapsed * 100, 1),  # % of one core, all workers together
        "idle_cpu_per_worker_ms_per_s": round(workers_s / elapsed / max(1, len(workers)) * 1e3, 3),
        "idle_cpu_supervisor_pct": round(supervisor_s / elapsed * 100, 1),
    }


@pytest.mark.benchmark(group="scale: idle echo agents on one machine (fork)")
@pytest.mark.parametrize("count", STEPS)
def test_scale(benchmark, fleet: Fleet, echo_wasm: bytes, count: int) -> None:
    if fleet.broken:
        pytest.skip(f"an earlier step broke: {fleet.broken}")
    supervisor = fleet.supervisor
    step_start = time.perf_counter()
    first_new = len(fleet.names)
    splits: list[tuple[float, float]] = []
    failure: BaseException | None = None
    try:
        splits = grow_fleet(benchmark, supervisor, fleet.names, "scale", count, echo_wasm)
    except (grpc.RpcError, AssertionError) as exc:
        failure = exc
    deploy_seconds = time.perf_counter() - step_start

    if failure is not None:
        info = _diagnose(fleet, failure)
        fleet.broken = f"deploy {len(fleet.names) + 1} failed: {info['error_code']}: {info['error'][:300]}"
        benchmark.extra_info.update(agents=count, failed=info)
        log = info.pop("supervisor_log_tail")
        pytest.fail(f"{fleet.broken}\nlimits: {info}\nsupervisor log tail:\n{log}", pytrace=False)

    deploys = [d + s for d, s in splits]
    pids = supervisor.worker_pids()
    assert len(pids) == count, f"{len(pids)} workers for {count} agents"
    sample_pids = random.Random(count).sample(pids, min(MEMORY_SAMPLE, len(pids)))
    samples = [s for s in (memory_of(pid) for pid in sample_pids) if s is not None]
    worker_threads = []
    for pid in sample_pids:
        try:
            worker_threads.append(psutil.Process(pid).num_threads())
        except psutil.Error:
            pass
    pss = statistics.median(s.pss for s in samples) / MIB
    uss = statistics.median(s.uss for s in samples) / MIB
    rss = statistics.median(s.rss for s in samples) / MIB
    process = psutil.Process(supervisor.pid)
    supervisor_rss = process.memory_info().rss / MIB
    supervisor_threads = process.num_threads()
    supervisor_fds = process.num_fds()
    nofile = process.rlimit(psutil.RLIMIT_NOFILE)[0]
    helpers = set(worker_pids_of(supervisor.pid, include_fork_server=True)) - set(pids)
    fork_server_pss = sum(s.pss for s in (memory_of(pid) for pid in helpers) if s is not None) / MIB
    memory = psutil.virtual_memory()
    used_per_agent = (memory.used - fleet.used_at_start) / count / MIB
    tasks, pid_max = _tasks()

    idle = _idle_cpu(supervisor.pid, pids)
    answered, errors, sweep_seconds = _sweep(fleet)
    step_seconds = time.perf_counter() - step_start

    deploy_p50 = report.percentile(deploys, 50) * 1e3
    deploy_p99 = report.percentile(deploys, 99) * 1e3
    benchmark.extra_info.update(
        agents=count,
        deploy_p50_ms=round(deploy_p50, 1),
        deploy_p99_ms=round(deploy_p99, 1),
        deploy_max_ms=round(max(deploys) * 1e3, 1),
        deploy_rpc_p50_ms=round(report.percentile([d for d, _ in splits], 50) * 1e3, 1),
        first_send_p50_ms=round(report.percentile([s for _, s in splits], 50) * 1e3, 1),
        memory_sample=len(samples),
        worker_pss_mib=round(pss, 2),
        worker_pss_mean_mib=round(statistics.mean(s.pss for s in samples) / MIB, 2),
        worker_uss_mib=round(uss, 2),
        worker_rss_mib=round(rss, 1),
        worker_threads=statistics.median(worker_threads) if worker_threads else None,
        fork_server_pss_mib=round(fork_server_pss, 1),
        supervisor_rss_mib=round(supervisor_rss, 1),
        supervisor_threads=supervisor_threads,
        supervisor_fds=supervisor_fds,
        supervisor_nofile_soft=nofile,
        system_used_gib=round(memory.used / (1 << 30), 2),
        system_available_gib=round(memory.available / (1 << 30), 2),
        system_used_per_agent_mib=round(used_per_agent, 2),
        machine_tasks=tasks,
        pid_max=pid_max,
        **idle,
        answered=answered,
        sweep_errors=dict(errors),
        sweep_s=round(sweep_seconds, 2),
        deploy_s=round(deploy_seconds, 1),
        step_s=round(step_seconds, 1),
        since_start_s=round(time.perf_counter() - fleet.started, 1),
    )
    assert answered == count and not errors, f"{answered} of {count} agents answered; errors {dict(errors)}"

    first = f"agents {first_new + 1}-{count}"
    report.record(f"scale.{count}.deploy_p50", deploy_p50, "ms", f"deploy p50, {first}")
    report.record(f"scale.{count}.deploy_p99", deploy_p99, "ms", f"deploy p99, {first}")
    report.record(f"scale.{count}.pss", pss, "MiB", f"worker PSS (median of {len(samples)}), {count} agents")
    report.record(f"scale.{count}.uss", uss, "MiB", f"worker USS (median of {len(samples)}), {count} agents")
    report.record(f"scale.{count}.supervisor_rss", supervisor_rss, "MiB", f"supervisor RSS, {count} agents")
    report.record(f"scale.{count}.supervisor_threads", supervisor_threads, "threads",
                  f"supervisor threads, {count} agents")
    report.record(f"scale.{count}.supervisor_fds", supervisor_fds, "fds", f"supervisor open fds, {count} agents")
    report.record(f"scale.{count}.used_per_agent", used_per_agent, "MiB",
                  f"machine memory used per agent, {count} agents")
    report.record(f"scale.{count}.idle_cpu", idle["idle_cpu_workers_pct"] + idle["idle_cpu_supervisor_pct"], "%",
                  f"idle CPU, workers + supervisor, {count} agents (% of a core)")
    report.record(f"scale.{count}.step_s", step_seconds, "s", f"step wall time, {first}")
