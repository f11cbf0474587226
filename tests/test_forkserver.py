"""The fork server: workers outlive it, nothing outlives the supervisor."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from caxton.v1 import caxton_pb2

from .harness import SupervisorProcess, alive, wait_until, worker_pids_of


@pytest.fixture
def forking(tmp_path):
    sup = SupervisorProcess(tmp_path / "state", config='worker_start = "fork"\n').start()
    yield sup
    sup.stop()


def _fork_server_pid(sup: SupervisorProcess) -> int:
    pids = set(worker_pids_of(sup.pid, include_fork_server=True)) - set(sup.worker_pids())
    assert len(pids) == 1, pids
    return pids.pop()


def test_forked_workers_are_adopted_by_the_supervisor(forking):
    status = forking.deploy("adopted", "echo")
    worker = psutil.Process(status.instances[0].pid)
    assert worker.ppid() == forking.pid
    assert worker.name() == "caxton-worker"
    assert _fork_server_pid(forking) != worker.pid


def test_the_fork_server_rehearsed_a_load_and_left_no_thread(forking):
    """It runs a tiny agent once before forking (worker/rehearsal.py): that
    must work where the supervisor runs, and no thread may be left to fork."""
    forking.deploy("after-rehearsal", "echo")
    assert psutil.Process(_fork_server_pid(forking)).num_threads() == 1
    assert "rehearsal failed" not in forking.log_text()


def test_killing_the_fork_server_leaves_workers_serving(forking):
    forking.deploy("survivor", "counter")
    assert forking.send("survivor", b"x").reply.content == b"1"
    old = _fork_server_pid(forking)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not alive(old), 10, "the fork server to die")
    # The running agent did not notice: same worker, same state.
    assert forking.send("survivor", b"x").reply.content == b"2"
    assert forking.status("survivor").restarts == 0
    # A new fork server takes over, and new agents still start.
    new = wait_until(
        lambda: (set(worker_pids_of(forking.pid, include_fork_server=True)) - set(forking.worker_pids())) or None,
        10, "a new fork server")
    assert old not in new
    forking.deploy("newcomer", "echo")
    assert forking.send("newcomer", b"hi").reply.content == b"hi"


def test_sigkill_of_the_supervisor_leaves_no_fork_server_and_no_worker(forking):
    forking.deploy("doomed-a", "echo")
    forking.deploy("doomed-b", "echo")
    def all_processes() -> list[int] | None:
        pids = worker_pids_of(forking.pid, include_fork_server=True, include_spares=True)
        return pids if len(pids) == 5 else None

    # two workers, the fork server, and the spares (2 by default) once refilled
    everything = wait_until(all_processes, 10, "the spare pool to refill")
    forking.kill()
    wait_until(lambda: not any(alive(p) for p in everything), 10, "workers and fork server to die with the supervisor")


def test_a_hung_fork_server_is_replaced(tmp_path):
    sup = SupervisorProcess(tmp_path / "hung", config='worker_start = "fork"\nworker_start_timeout_s = 2.0\n').start()
    try:
        sup.deploy("before-hang", "echo")
        stuck = _fork_server_pid(sup)
        os.kill(stuck, signal.SIGSTOP)
        # The start waits for the stuck server only until its deadline, then
        # a new fork server is started and asked again.
        status = sup.deploy("after-hang", "echo")
        assert status.state == caxton_pb2.AGENT_STATE_RUNNING
        assert sup.send("after-hang", b"ok").reply.content == b"ok"
        wait_until(lambda: not alive(stuck), 10, "the stuck fork server to be killed")
        assert sup.send("before-hang", b"still").reply.content == b"still"
    finally:
        sup.stop()


def test_spare_workers_serve_one_agent_each(forking):
    def spares() -> list[int] | None:
        pids = set(worker_pids_of(forking.pid, include_spares=True)) - set(forking.worker_pids())
        return sorted(pids) if len(pids) == 2 else None

    ready = wait_until(spares, 10, "two spare workers")
    first = forking.deploy("from-spare-a", "echo").instances[0].pid
    second = forking.deploy("from-spare-b", "echo").instances[0].pid
    # Both agents were served by the spares that were waiting, each by its own.
    assert sorted([first, second]) == ready
    assert psutil.Process(first).name() == "caxton-worker"
    # The pool refills with new processes, never with ones that served.
    refilled = wait_until(spares, 10, "the pool to refill")
    assert not set(refilled) & {first, second}
    # A spare that dies is replaced, and deploys keep working.
    os.kill(refilled[0], signal.SIGKILL)
    wait_until(lambda: (s := spares()) and refilled[0] not in s, 10, "the dead spare to be replaced")
    assert forking.send("from-spare-a", b"a").reply.content == b"a"
