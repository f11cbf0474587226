"""Recovery latency: a worker is SIGKILLed; how long until its agent answers again?

For each worker start mode (`worker_start = "fork"` and `"exec"`), a
supervisor of its own deploys an echo agent, then, round after round:

1. reads the worker pid from `GetAgentStatus`;
2. SIGKILLs that worker and starts the timer;
3. sends numbered messages in a loop, each with a 2 s deadline, until one is
   answered (with its own number) *and* the status shows a new worker pid.
   UNAVAILABLE (the message was already on its way to the dead worker) and
   DEADLINE_EXCEEDED (the restart took longer than the deadline) only mean
   "try again"; every other error fails the benchmark;
4. the time from the kill to that reply is one sample.

That covers the supervisor noticing the exit (pidfd), the restart policy's
delay, starting a worker (fork from the fork server, or a fresh interpreter),
loading the cached compiled module, `caxton_init` and one round trip.

Restart policy: the default first step (10 ms, +-20 % jitter, doubling), with
two changes so that every round measures that *first* step: a breaker that
cannot open (`max_failures = 1000`) and `reset_after_s = 0.2`, the healthy
run after which the backoff returns to its first step. Before each kill the
benchmark waits (outside the timing) until the worker has run for longer than
that, and afterwards reads from the supervisor's log which restart step every
kill got (asserted to be 1) and the delay the policy chose.

Baseline, same supervisor, same run: a cold deploy (`DeployAgent` + first
`Send` of a new module, as in bench_deploy.py). Ratio = recovery / cold
deploy p50: below 1 means a crash costs less than deploying from scratch.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from caxton.v1 import caxton_pb2
from tests.harness import SupervisorProcess, alive, wait_until

from . import report
from .support import deploy_and_send, numbered_payload, payload_number, running_supervisor, with_custom_section

MODES = ["fork", "exec"]
KILLS = 30
COLD_ROUNDS = 15
SEND_DEADLINE_S = 2.0
RESET_AFTER_S = 0.2
# The instance's uptime starts just before its module is loaded, the policy's
# healthy run just after: wait a little longer than reset_after_s.
HEALTHY_BEFORE_KILL_S = RESET_AFTER_S + 0.15
# Give up on one round after this long: the breaker cannot open, so a round
# that takes longer means recovery is broken, not slow.
ROUND_TIMEOUT_S = 60.0

CONFIG = f"""\
worker_start = "{{mode}}"
[restart]
max_failures = 1000
reset_after_s = {RESET_AFTER_S}
"""

GROUP = "recovery: SIGKILL of a worker to the first answered Send"
AGENT = "recovery-echo"

_names = itertools.count()
_numbers = itertools.count(1)


@pytest.fixture(scope="module", params=MODES)
def mode_supervisor(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SupervisorProcess]]:
    mode = request.param
    with running_supervisor(tmp_path_factory.mktemp(f"recovery-{mode}") / "state", CONFIG.format(mode=mode)) as sup:
        yield mode, sup


# ------------------------------------------------------------ baseline


def _remove(supervisor: SupervisorProcess, name: str, wasm: bytes | None = None) -> None:
    supervisor.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


@pytest.mark.benchmark(group=GROUP)
def test_cold_deploy(benchmark, mode_supervisor: tuple[str, SupervisorProcess], echo_wasm: bytes) -> None:
    """The baseline: DeployAgent + first Send of a module never seen before."""
    mode, sup = mode_supervisor

    def setup() -> tuple[tuple[SupervisorProcess, str, bytes], dict]:
        n = next(_names)
        wasm = with_custom_section(echo_wasm, "caxton-bench", f"recovery-cold-{os.getpid()}-{mode}-{n}".encode())
        return (sup, f"recovery-cold-{mode}-{n}", wasm), {}

    benchmark.pedantic(deploy_and_send, setup=setup, teardown=_remove, rounds=COLD_ROUNDS, warmup_rounds=1)
    samples = benchmark.stats.stats.data
    p50 = report.percentile(samples, 50) * 1e3
    benchmark.extra_info.update(worker_start=mode, p50_ms=round(p50, 1), max_ms=round(max(samples) * 1e3, 1))
    report.record(f"recovery.{mode}.cold.p50", p50, "ms", f"cold deploy ({mode}) p50")


# ------------------------------------------------------------ recovery


@dataclass
class Recovery:
    """Samples and the counts behind them, kept across rounds."""

    supervisor: SupervisorProcess
    samples: list[float] = field(default_factory=list)
    sends: list[int] = field(default_factory=list)
    unavailable: int = 0
    deadline_exceeded: int = 0
    pid: int = 0

    def wait_healthy(self) -> tuple[tuple[int], dict]:
        """pedantic setup, not timed: the agent runs in one worker, long
        enough that the next failure counts as the first restart step."""

        def ready() -> int | None:
            status = self.supervisor.status(AGENT)
            if status.state == caxton_pb2.AGENT_STATE_RUNNING and len(status.instances) == 1:
                instance = status.instances[0]
                if instance.uptime_s >= HEALTHY_BEFORE_KILL_S:
                    return instance.pid
            return None

        self.pid = wait_until(ready, 30, f"{AGENT} to run healthy for {HEALTHY_BEFORE_KILL_S}s")
        return (self.pid,), {}

    def kill_and_recover(self, pid: int) -> None:
        """The timed part: kill, then send until the agent answers from a new worker."""
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        sends = 0
        while True:
            if time.perf_counter() - killed > ROUND_TIMEOUT_S:
                raise AssertionError(f"{AGENT} did not answer within {ROUND_TIMEOUT_S}s of killing worker {pid}")
            number = next(_numbers)
            sends += 1
            try:
                response = self.supervisor.send(AGENT, numbered_payload(number), timeout=SEND_DEADLINE_S,
                                                sender="bench")
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.unavailable += 1
                    continue
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.deadline_exceeded += 1
                    continue
                raise
            answered = time.perf_counter()
            assert response.has_reply and payload_number(response.reply.content) == number, "wrong reply"
            status = self.supervisor.status(AGENT)
            if status.instances and status.instances[0].pid not in (0, pid):
                break
        assert not alive(pid), f"worker {pid} survived SIGKILL"
        self.samples.append(answered - killed)
        self.sends.append(sends)


_RESTART_LINE = re.compile(r"\[" + re.escape(AGENT) + r"\] restart (\d+) \(.*next attempt in ([0-9.e+-]+)s")


def _restart_steps(log: str) -> list[tuple[int, float]]:
    """(step, delay chosen by the policy) of every restart of the agent, from
    the supervisor's log; empty if the log format is not the expected one."""
    return [(int(m.group(1)), float(m.group(2))) for m in _RESTART_LINE.finditer(log)]


@pytest.mark.benchmark(group=GROUP)
def test_recovery(benchmark, mode_supervisor: tuple[str, SupervisorProcess], echo_wasm: bytes) -> None:
    mode, sup = mode_supervisor
    log_start = len(sup.log_text())
    deploy_and_send(sup, AGENT, echo_wasm)
    recovery = Recovery(sup)
    try:
        benchmark.pedantic(recovery.kill_and_recover, setup=recovery.wait_healthy, rounds=KILLS, warmup_rounds=1)
    finally:
        with contextlib.suppress(grpc.RpcError):
            _remove(sup, AGENT)

    samples = recovery.samples[-KILLS:]  # the warm-up round comes first
    assert len(samples) == KILLS
    p50 = report.percentile(samples, 50) * 1e3
    p99 = report.percentile(samples, 99) * 1e3
    steps = _restart_steps(sup.log_text()[log_start:])
    # Every kill must have been a first restart step, or the figure measures
    # backoff instead of recovery.
    assert not steps or all(step == 1 for step, _ in steps), f"restart steps {[s for s, _ in steps]}"
    delays = [delay * 1e3 for _, delay in steps]
    benchmark.extra_info.update(
        worker_start=mode,
        kills=len(samples),
        p50_ms=round(p50, 1),
        p99_ms=round(p99, 1),
        max_ms=round(max(samples) * 1e3, 1),
        # pytest-benchmark's rounds also include one GetAgentStatus after the
        # reply; these figures stop at the reply.
        sends_per_kill_max=max(recovery.sends),
        sends_per_kill_mean=round(sum(recovery.sends) / len(recovery.sends), 2),
        unavailable_replies=recovery.unavailable,
        deadline_exceeded_replies=recovery.deadline_exceeded,
        restarts_in_log=len(steps),
        policy_delay_p50_ms=round(report.percentile(delays, 50), 1) if delays else None,
        policy_delay_max_ms=round(max(delays), 1) if delays else None,
    )
    cold = report.FIGURES.get(f"recovery.{mode}.cold.p50")
    if cold is not None:
        benchmark.extra_info.update(cold_deploy_p50_ms=round(cold.value, 1),
                                    p50_over_cold_deploy_p50=round(p50 / cold.value, 2),
                                    p99_over_cold_deploy_p50=round(p99 / cold.value, 2))
    report.record(f"recovery.{mode}.p50", p50, "ms", f"SIGKILL to first reply ({mode}) p50")
    report.record(f"recovery.{mode}.p99", p99, "ms", f"SIGKILL to first reply ({mode}) p99")
    report.record(f"recovery.{mode}.max", max(samples) * 1e3, "ms",
                  f"SIGKILL to first reply ({mode}) max of {len(samples)}")
