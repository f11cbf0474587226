"""SIGINT and SIGTERM to a real supervisor process: drain, clean exit, restore.

Each test starts its own supervisor (tests.harness.SupervisorProcess) on a
state directory under tmp_path, in both worker start modes, and waits for
conditions with deadlines; nothing sleeps in place of synchronisation.
"""

from __future__ import annotations

import signal
import subprocess
import threading

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import SupervisorProcess, alive, wait_until, worker_pids_of

EXIT_TIMEOUT_S = 30.0


@pytest.fixture
def start_supervisor(tmp_path, worker_start):
    """Start a supervisor on a state dir (default: tmp_path/state) with the
    worker start mode of this run; every one started is ended afterwards."""
    started: list[SupervisorProcess] = []

    def make(state_dir=None) -> SupervisorProcess:
        sup = SupervisorProcess(state_dir or tmp_path / "state", config=f'worker_start = "{worker_start}"\n',
                                log_path=tmp_path / f"supervisor{len(started)}.log")
        started.append(sup)
        return sup.start()

    yield make
    for sup in started:
        sup.kill()


def _signal_and_wait(sup: SupervisorProcess, signum: int) -> int:
    """Send `signum` to the supervisor and return its exit status."""
    sup.proc.send_signal(signum)
    try:
        return sup.proc.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"supervisor did not exit within {EXIT_TIMEOUT_S}s of {signal.Signals(signum).name};"
                             f" log:\n{sup.log_text()[-3000:]}") from None


def _no_workers_left(supervisor_pid: int, known: list[int]) -> None:
    """Neither the workers seen before nor any process (worker or fork server)
    naming this supervisor as its parent may still live."""
    wait_until(
        lambda: not worker_pids_of(supervisor_pid, include_fork_server=True) and not any(alive(p) for p in known),
        10, "every worker and the fork server to exit",
    )


def _inflight(sup: SupervisorProcess, name: str) -> bool:
    """True while the worker is busy with the agent's first message."""
    status = sup.status(name)
    return (status.state == caxton_pb2.AGENT_STATE_RUNNING and status.messages == 0
            and bool(status.instances) and status.instances[0].messages == 1)


def test_sigint_drains_and_exits_0_leaving_no_worker(start_supervisor):
    sup = start_supervisor()
    sup.deploy("int-echo", "echo")
    sup.deploy("int-counter", "counter")
    assert sup.send("int-echo", b"hi").reply.content == b"hi"
    workers = worker_pids_of(sup.pid, include_fork_server=True)
    assert len(sup.worker_pids()) == 2

    assert _signal_and_wait(sup, signal.SIGINT) == 0
    _no_workers_left(sup.pid, workers)


def test_sigterm_lets_the_message_in_flight_finish(start_supervisor):
    sup = start_supervisor()
    sup.deploy("term-slow", "slow")
    workers = worker_pids_of(sup.pid, include_fork_server=True)
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(sup.send("term-slow", b"500", timeout=30).reply.content)
        except grpc.RpcError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_until(lambda: _inflight(sup, "term-slow"), 10, "the slow message to be in flight")

    assert _signal_and_wait(sup, signal.SIGTERM) == 0
    sender.join(10)
    assert not sender.is_alive(), "the sender never got an answer"
    assert outcome == [b"500"], f"in-flight message got {outcome!r}"
    _no_workers_left(sup.pid, workers)


def test_a_second_start_after_sigterm_brings_agents_back(start_supervisor, tmp_path):
    state = tmp_path / "state"
    first = start_supervisor(state)
    first.deploy("back-echo", "echo")
    first.deploy("back-counter", "counter")
    first.deploy("back-stopped", "uppercase")
    assert first.send("back-counter", b"x").reply.content == b"1"
    first.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="back-stopped"), timeout=30)
    workers = worker_pids_of(first.pid, include_fork_server=True)
    assert _signal_and_wait(first, signal.SIGTERM) == 0
    _no_workers_left(first.pid, workers)

    second = start_supervisor(state)
    assert second.status("back-echo").state == caxton_pb2.AGENT_STATE_RUNNING
    assert second.send("back-echo", b"again").reply.content == b"again"
    # A new worker, a fresh instance: the counter starts over.
    assert second.send("back-counter", b"x").reply.content == b"1"
    # An agent stopped before the shutdown stays stopped.
    assert second.status("back-stopped").state == caxton_pb2.AGENT_STATE_STOPPED
    assert len(second.worker_pids()) == 2
    assert not set(second.worker_pids()) & set(workers)
