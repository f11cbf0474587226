"""The supervisor's client for one worker (supervisor/worker_client.py), and
the caller's deadline carried from the public API into the worker.

Real worker processes and real wasmtime: the first part starts a worker of
its own and talks to it only through WorkerClient; the second goes through a
real supervisor.
"""

from __future__ import annotations

import threading
import time

import grpc
import psutil
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.worker_client import MessageOutcome, WorkerCallError, WorkerClient
from caxton.v1 import caxton_pb2

from .harness import wait_until

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# A generous hang bound for calls that are not about it.
HANG_BOUND_S = 30.0
IDLE_WINDOW_S = 1.0
NEVER = Deadline.never()


def run(client: WorkerClient, *contents: bytes, deadline: Deadline = NEVER,
        hang_bound_s: float = HANG_BOUND_S) -> list[MessageOutcome]:
    messages = [caxton_pb2.AgentMessage(receiver="slow", content=content) for content in contents]
    return client.handle(messages, [deadline] * len(messages), Deadline.after(hang_bound_s))


# ---------------------------------------------------------------- the client


def test_load_handle_and_stats_come_back_as_dataclasses(worker, client, tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=5_000, fuel=0)
    outcomes = run(client, b"0", b"3")
    assert [(o.ok, o.code, o.error, o.reply) for o in outcomes] == [
        (True, grpc.StatusCode.OK, "", b"0"),
        (True, grpc.StatusCode.OK, "", b"3"),
    ]
    stats = client.stats(Deadline.after(5))
    assert (stats.messages, stats.errors, stats.resets) == (2, 0, 0)
    assert stats.memory_bytes >= 65536
    assert client.probe(Deadline.after(5)).result() == stats


def test_the_callers_deadline_stops_the_agent_in_the_worker(worker, client, tmp_path):
    # The agent's own timeout is far away: only the caller's deadline can
    # end this message early.
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    cpu_before = worker.cpu_s()
    start = time.monotonic()
    [outcome] = run(client, b"20000", deadline=Deadline.after(0.5))
    elapsed = time.monotonic() - start
    assert outcome.code == DEADLINE_EXCEEDED
    assert "caller's deadline" in outcome.error
    assert 0.45 <= elapsed < 1.5, f"a 0.5 s caller deadline ended the message after {elapsed:.2f}s"
    # It spun for at most the caller's half second (plus the worker's own
    # overhead), not the agent's 20 s.
    assert worker.cpu_s() - cpu_before < 1.5
    # The instance was replaced (the interrupted one may be half-updated)
    # and the worker answers the next message at once.
    assert run(client, b"0")[0].reply == b"0"
    assert client.stats(Deadline.after(5)).resets == 1


def test_a_message_whose_caller_gave_up_is_not_run(worker, client, tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    # The first message uses up the whole batch's shared deadline; the second
    # one's caller has given up by the time its turn comes.
    outcomes = run(client, b"20000", b"0", deadline=Deadline.after(0.3))
    assert [o.code for o in outcomes] == [DEADLINE_EXCEEDED, DEADLINE_EXCEEDED]
    assert "before the agent got the message" in outcomes[1].error
    assert client.stats(Deadline.after(5)).messages == 1


def test_the_agents_own_timeout_still_applies_when_it_comes_first(worker, client, tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=300)
    start = time.monotonic()
    [outcome] = run(client, b"20000", deadline=Deadline.after(20))
    elapsed = time.monotonic() - start
    assert outcome.code == DEADLINE_EXCEEDED
    assert "timeout (epoch deadline reached)" in outcome.error
    assert 0.25 <= elapsed < 5.0


def test_a_missed_hang_bound_is_a_timed_out_call_error(worker, client, tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    with pytest.raises(WorkerCallError) as info:
        run(client, b"2000", hang_bound_s=0.3)
    assert info.value.timed_out
    assert info.value.doing == "handling the message"


def test_probes_are_answered_while_a_message_runs(worker, client, tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    busy = threading.Thread(target=run, args=(client, b"3000"), daemon=True)
    busy.start()
    # Stats counts a message when it starts: this probe is answered while
    # the 3 s message runs.
    wait_until(lambda: client.probe(Deadline.after(1)).result().messages == 1, 10, "a probe during the message")
    assert busy.is_alive()
    busy.join(HANG_BOUND_S)


def test_calls_on_a_closed_client_raise_worker_call_errors(worker, client):
    client.close()
    with pytest.raises(WorkerCallError):
        client.probe(Deadline.after(1)).result()
    with pytest.raises(WorkerCallError):
        client.stats(Deadline.after(1))


def test_a_dead_worker_is_a_call_error_not_a_grpc_one(worker, client):
    worker.stop()
    with pytest.raises(WorkerCallError) as info:
        client.stats(Deadline.after(5))
    assert not info.value.timed_out


# ---------------------------------------------------------------- end to end


def test_send_deadline_reaches_the_worker(shared_supervisor):
    """A Send whose caller gives up after 0.5 s stops the agent in the worker
    within about an epoch tick, although the agent's own timeout is 20 s; the
    same worker then answers the next message at once."""
    sup = shared_supervisor
    sup.deploy("deadline-spinner", "attacker", fuel=10**15, timeout_ms=20_000)
    pid = sup.status("deadline-spinner").instances[0].pid
    process = psutil.Process(pid)

    def cpu_s() -> float:
        times = process.cpu_times()
        return times.user + times.system

    cpu_before = cpu_s()
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        sup.send("deadline-spinner", b"loop", timeout=0.5)
    assert info.value.code() == DEADLINE_EXCEEDED
    # Messages run one at a time: this reply can only come once the loop
    # has stopped.
    assert sup.send("deadline-spinner", b"hello", timeout=10).reply.content == b"hello"
    answered_after = time.monotonic() - start
    # Within about a second of the caller's deadline (it takes one epoch
    # tick when the host is not busy).
    assert answered_after < 1.5, f"the worker was busy for {answered_after:.2f}s after a 0.5 s deadline"
    spent = cpu_s() - cpu_before
    assert spent < 1.5, f"the worker burnt {spent:.2f}s of CPU on a message its caller gave up on after 0.5 s"
    # And nothing keeps spinning behind the answer: a measuring window, not
    # a wait for anything.
    time.sleep(IDLE_WINDOW_S)
    idle = cpu_s() - cpu_before - spent
    assert idle < 0.3, f"the worker used {idle:.2f}s of CPU in {IDLE_WINDOW_S}s after the deadline"
    status = sup.status("deadline-spinner")
    assert status.instances[0].pid == pid and status.instances[0].resets == 1
