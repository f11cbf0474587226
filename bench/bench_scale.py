"""Scale: how many idle echo agents one machine holds, and what each costs.

A supervisor of its own (`worker_start = "fork"`, its `[caps]` on agents and
workers raised to the last step) deploys echo agents one after another, each
with a 1 MiB memory limit (`caxton deploy --memory 1MiB`: the echo agent
needs one 64 KiB page, and 2,500 agents at the default 64 MiB would pass
the host-wide `caps.committed_memory`). Steps: 10, 100, 500, 1000, 1500,
2000 and 2500 agents, up to `CAXTON_BENCH_SCALE` (default 500;
`CAXTON_BENCH_QUICK=1`: 100), plus that number itself if it is not a step
(`CAXTON_BENCH_SCALE=30`: 10 and 30). Per step:

- deploy p50/p99 of the deploys the step adds (`DeployAgent` + first `Send`
  answered, as in bench_deploy.py; the same module, so cached after the
  first);
- PSS and USS per worker (`memory_full_info()`, median over a fixed-seed
  sample of up to 50 workers: reading smaps of every worker at 2,500 agents
  would take longer than the deploys), threads per worker;
- the supervisor's RSS, threads and open file descriptors (against its
  RLIMIT_NOFILE), the fork server's PSS;
- the machine: memory used (`psutil.virtual_memory().used`, and its growth
  per agent since the supervisor started; other work on a shared machine
  moves it too), and tasks (processes + threads) against `kernel.pid_max`;
  whether the host's ksmd runs (it would merge the workers' identical pages
  while the curve is measured: bench_merging.py measures that on its own);
- how long until every worker is parked (frozen after `park_after_s`
  without a call, 5 s here: supervisor/parking.py), then the CPU the idle
  fleet burns (workers, supervisor) over 10 s without messages;
- that every agent answers one message afterwards (8 client threads; every
  reply checked), and how long that sweep took;
- how long the whole step took, wall clock.

The curve is written to bench/results/scale.json after every step (and with
the supervisor's figures at no agents first), whatever pytest-benchmark is
told; `python -m bench.plot_scale` draws it and writes its table into
bench/README.md.

A step fails when a deploy fails, a worker is missing, not every agent
answers, or the step runs out of time (deploys: `CAXTON_BENCH_SCALE_STEP_S`,
default 900 s; the sweep: 300 s). Then the curve records what was reached,
the error, the state of every limit it could have hit (descriptors, tasks
against `pid_max`, memory, time, the supervisor still alive) and which of
them it did hit (`limits_hit`); the step fails with all of it in the
message, and the later steps are skipped. The curve so far stays recorded.

Baselines are the first step (how the figures grow) and the supervisor with
no agents. Targets from issue 16 (idle CPU <= 2 % of a core at 1,000
agents; PSS <= 5 MiB and USS <= 4 MiB per idle worker; deploy to first reply
p50 <= 15 ms) are printed, never checked.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import grpc
import psutil
import pytest

from caxton.supervisor.ksm import host_merges_pages
from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import SupervisorProcess, alive, worker_pids_of

from . import report
from .plot_scale import CURVE_PATH
from .support import MIB, auth_metadata, grow_fleet, memory_of, numbered_payload, payload_number, wait_parked

_BASE_STEPS = (10, 100, 500, 1000, 1500, 2000, 2500)
SCALE = int(os.environ.get("CAXTON_BENCH_SCALE") or ("100" if os.environ.get("CAXTON_BENCH_QUICK") == "1" else "500"))
STEPS = sorted({s for s in _BASE_STEPS if s <= SCALE} | {SCALE})
MEMORY_SAMPLE = 50
SWEEP_THREADS = 8
IDLE_WINDOW_S = 10.0
# Each step's deploys must end within this; past it the curve ends with the
# "time" limit rather than leaving a run going for hours.
DEPLOY_BUDGET_S = float(os.environ.get("CAXTON_BENCH_SCALE_STEP_S") or 900)
SWEEP_BUDGET_S = 300.0
AGENT_LIMITS = caxton_pb2.ResourceLimits(memory_bytes=1 << 20)
# The default caps (1000 agents, 1000 workers) would refuse the 2,500 step.
_CAP = max(1000, SCALE)
# Idle workers are parked (frozen) after this long without a call
# (supervisor/parking.py); shorter than the default 30 s so each step's
# fleet settles quickly. The idle window starts once every worker is parked.
PARK_AFTER_S = 5.0
PARK_BUDGET_S = 120.0
CONFIG = (f'worker_start = "fork"\npark_after_s = {PARK_AFTER_S}\n\n'
          f'[caps]\nagents = {_CAP}\nworkers = {_CAP}\n')
# A figure within this share of its bound counts as having hit it.
NEAR = 0.95


def _tasks() -> tuple[int, int]:
    """(tasks on the machine, kernel.pid_max): every process and thread
    takes a pid, so this is the limit forking and thread creation meet."""
    with open("/proc/loadavg") as f:
        total = int(f.read().split()[3].split("/")[1])
    with open("/proc/sys/kernel/pid_max") as f:
        return total, int(f.read())


@dataclass
class Curve:
    """The scale curve as bench/results/scale.json holds it: what the run
    was (steps asked, settings, machine), each measured step, and where and
    why it stopped. Rewritten whole after every change, so a run that ends
    part way leaves the curve so far."""

    steps: list[dict] = field(default_factory=list)
    stopped: dict | None = None

    def write(self) -> None:
        memory = psutil.virtual_memory()
        document = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "steps_asked": STEPS,
            "settings": {"agent_memory_limit_bytes": AGENT_LIMITS.memory_bytes, "idle_window_s": IDLE_WINDOW_S,
                         "deploy_budget_s": DEPLOY_BUDGET_S, "sweep_budget_s": SWEEP_BUDGET_S,
                         "supervisor_config": CONFIG},
            "machine": {"cpus": os.cpu_count(), "memory_gib": round(memory.total / (1 << 30), 1),
                        "pid_max": _tasks()[1], "ksmd_running": host_merges_pages()},
            "load_average_now": os.getloadavg(),
            "steps": self.steps,
            "stopped": self.stopped,
        }
        CURVE_PATH.parent.mkdir(parents=True, exist_ok=True)
        partial = CURVE_PATH.with_suffix(".json.partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(CURVE_PATH)


@dataclass
class Fleet:
    supervisor: SupervisorProcess
    used_at_start: int
    started: float
    curve: Curve
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
        rss, threads, fds = process.memory_info().rss / MIB, process.num_threads(), process.num_fds()
        report.record("scale.0.supervisor_rss", rss, "MiB", "supervisor RSS, 0 agents")
        report.record("scale.0.supervisor_threads", threads, "threads", "supervisor threads, 0 agents")
        report.record("scale.0.supervisor_fds", fds, "fds", "supervisor open fds, 0 agents")
        tasks, pid_max = _tasks()
        curve = Curve([{"agents": 0, "supervisor_rss_mib": round(rss, 1), "supervisor_threads": threads,
                        "supervisor_fds": fds, "machine_tasks": tasks, "pid_max": pid_max}])
        curve.write()
        yield Fleet(supervisor, psutil.virtual_memory().used, time.perf_counter(), curve)
    finally:
        try:
            supervisor.stop(timeout=180)
        except AssertionError:
            pass  # stop() killed it after the deadline
        finally:
            supervisor.kill()


def limits_hit(info: dict) -> list[str]:
    """Which limits a failed step ran into, from `_diagnose`'s record: each
    named by the error text or by a figure within NEAR of its bound. Pure."""
    text = f"{info['error_code']} {info['error']}".lower()
    hit = []
    soft_nofile = info.get("supervisor_nofile", [0])[0]
    if "too many open files" in text or (soft_nofile and info.get("supervisor_fds", 0) >= NEAR * soft_nofile):
        hit.append("fds")
    task_bound = min(info["pid_max"], info["threads_max"])
    if ("can't start new thread" in text or "resource temporarily unavailable" in text
            or info["machine_tasks"] >= NEAR * task_bound):
        hit.append("pids")
    if ("cannot allocate memory" in text or "memoryerror" in text or "memory budget" in text
            or info["memory_available_mib"] <= (1 - NEAR) * info["memory_total_mib"]):
        hit.append("memory")
    if "deadline_exceeded" in text or "timeouterror" in text or "time allowed" in text:
        hit.append("time")
    if "caps." in text:  # the bench's own config is short of the step: a bench bug
        hit.append("caps")
    if not info["supervisor_alive"]:
        hit.append("supervisor died")
    return hit or ["none recognised: see the error"]


def _diagnose(fleet: Fleet, code: str, text: str) -> dict:
    """What every limit looked like when a step failed."""
    sup = fleet.supervisor
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
                memory_available_mib=round(memory.available / MIB), memory_total_mib=round(memory.total / MIB),
                workers=len(sup.worker_pids()), supervisor_log_tail=sup.log_text()[-3000:])
    return info


def _end_curve(fleet: Fleet, benchmark, count: int, code: str, text: str) -> NoReturn:
    """Record where and why the curve stopped, then fail the step with it."""
    info = _diagnose(fleet, code, text)
    hit = limits_hit(info)
    fleet.broken = f"step {count} stopped at {len(fleet.names)} agents, limits hit: {', '.join(hit)}"
    fleet.curve.stopped = {"agents": count, "reached": len(fleet.names), "limits_hit": hit, **info}
    fleet.curve.write()
    benchmark.extra_info.update(agents=count, failed=fleet.curve.stopped)
    shown = {k: v for k, v in info.items() if k != "supervisor_log_tail"}
    pytest.fail(f"{fleet.broken}\n{code}: {text[:1000]}\nlimits: {shown}\n"
                f"supervisor log tail:\n{info['supervisor_log_tail']}", pytrace=False)


def _sweep(fleet: Fleet) -> tuple[int, Counter, float]:
    """One numbered message to every agent, from SWEEP_THREADS callers,
    within SWEEP_BUDGET_S; returns (answered correctly, errors by kind
    (messages not sent for want of time among them), seconds)."""
    names = list(fleet.names)
    answered = 0
    errors: Counter = Counter()
    lock = threading.Lock()
    metadata = auth_metadata(fleet.supervisor)
    deadline = time.monotonic() + SWEEP_BUDGET_S

    def run(part: list[tuple[int, str]]) -> None:
        nonlocal answered
        with grpc.insecure_channel(fleet.supervisor.address) as channel:
            stub = caxton_pb2_grpc.MessagingStub(channel)
            for i, (number, name) in enumerate(part):
                left = deadline - time.monotonic()
                if left <= 0:
                    with lock:
                        errors["not sent: the time allowed for the sweep ran out"] += len(part) - i
                    return
                message = caxton_pb2.AgentMessage(receiver=name, sender="bench", content=numbered_payload(number))
                try:
                    response = stub.Send(caxton_pb2.SendRequest(message=message), timeout=min(60, left),
                                         metadata=metadata)
                except grpc.RpcError as exc:
                    with lock:
                        errors[f"{exc.code().name}: {(exc.details() or '')[:200]}"] += 1
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
    such a sweep in about one run in six, and then a whole one."""
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
    time.sleep(IDLE_WINDOW_S)  # the measurement window itself, not a wait for something
    elapsed = time.perf_counter() - start
    workers_s, supervisor_s = used(workers) - before_workers, used(supervisor) - before_supervisor
    return {
        "idle_window_s": round(elapsed, 1),
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
    failure: tuple[str, str] | None = None
    try:
        splits = grow_fleet(benchmark, supervisor, fleet.names, "scale", count, echo_wasm,
                            limits=AGENT_LIMITS, deadline=time.monotonic() + DEPLOY_BUDGET_S)
    except grpc.RpcError as exc:
        failure = (exc.code().name, exc.details() or "")
    except Exception as exc:  # whatever stopped the deploys ends the curve, named
        failure = (type(exc).__name__, str(exc))
    if failure is not None:
        _end_curve(fleet, benchmark, count, *failure)
    deploy_seconds = time.perf_counter() - step_start

    deploys = [d + s for d, s in splits]
    pids = supervisor.worker_pids()
    if len(pids) != count:
        _end_curve(fleet, benchmark, count, "workers missing", f"{len(pids)} workers for {count} agents")
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

    parked = wait_parked(pids, PARK_BUDGET_S)
    idle = _idle_cpu(supervisor.pid, pids)
    answered, errors, sweep_seconds = _sweep(fleet)
    step_seconds = time.perf_counter() - step_start

    deploy_p50 = report.percentile(deploys, 50) * 1e3
    deploy_p99 = report.percentile(deploys, 99) * 1e3
    figures = dict(
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
        **parked,
        **idle,
        answered=answered,
        sweep_errors=dict(errors),
        sweep_s=round(sweep_seconds, 2),
        deploy_s=round(deploy_seconds, 1),
        step_s=round(step_seconds, 1),
        since_start_s=round(time.perf_counter() - fleet.started, 1),
        load_average=os.getloadavg(),
    )
    benchmark.extra_info.update(figures)
    fleet.curve.steps.append(figures)
    fleet.curve.write()
    if answered != count or errors:
        _end_curve(fleet, benchmark, count, "not every agent answered",
                   f"{answered} of {count} agents answered; errors {dict(errors)}")

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
