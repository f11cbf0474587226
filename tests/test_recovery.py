"""Fault recovery: restarts with backoff, the circuit breaker, hung workers,
and an answer for every message across failures."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections import Counter

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import LoadGenerator, alive, wait_until

FAST = '''
health_interval_s = 0.2
health_timeout_s = 1.0
health_failures = 2
[restart]
initial_delay_s = 0.05
factor = 2.0
max_delay_s = 1.0
jitter = 0.0
max_failures = 3
window_s = 30
'''


def _running_pid(sup, name: str, not_pid: int | None = None) -> int:
    def check():
        status = sup.status(name)
        if status.state == caxton_pb2.AGENT_STATE_RUNNING and status.instances and status.instances[0].pid != not_pid:
            return status.instances[0].pid
        return None

    return wait_until(check, 15, f"{name} to run in a new worker")


def test_killed_worker_is_restarted_and_answers(shared_supervisor):
    sup = shared_supervisor
    pid = sup.deploy("phoenix", "echo").instances[0].pid
    os.kill(pid, signal.SIGKILL)
    new_pid = _running_pid(sup, "phoenix", not_pid=pid)
    assert new_pid != pid and not alive(pid)
    status = sup.status("phoenix")
    assert status.restarts == 1
    assert status.version == 1
    assert "SIGKILL" in status.recent_failures[-1].reason
    assert sup.send("phoenix", b"again").reply.content == b"again"


def test_messages_sent_during_a_restart_wait_and_are_delivered(supervisor):
    # A slow first restart step gives the test time to send while the agent
    # has no worker.
    sup = supervisor("[restart]\ninitial_delay_s = 1.0\njitter = 0.0\n")
    pid = sup.deploy("patient", "counter").instances[0].pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sup.status("patient").next_restart_in_s > 0, 10, "a restart to be pending")
    started = time.monotonic()
    reply = sup.send("patient", b"x", timeout=20)
    assert reply.reply.content == b"1"  # delivered to the fresh worker
    assert time.monotonic() - started > 0.3


def test_crash_loop_backs_off_then_opens_the_breaker(supervisor):
    sup = supervisor(FAST)
    sup.deploy("steady", "echo")
    pid = sup.deploy("crashy", "echo").instances[0].pid
    kills = []
    # Kill the worker every time it comes back: a crash loop.
    for _ in range(4):
        os.kill(pid, signal.SIGKILL)
        kills.append(time.monotonic())
        assert sup.send("steady", b"ok").reply.content == b"ok"
        if len(kills) == 4:
            break
        pid = _running_pid(sup, "crashy", not_pid=pid)
    status = wait_until(lambda: (s := sup.status("crashy")).state == caxton_pb2.AGENT_STATE_FAILED and s, 15,
                        "the breaker to open")
    assert "circuit open" in status.last_error
    assert status.restarts == 3
    assert len(status.recent_failures) == 4
    error = pytest.raises(grpc.RpcError, sup.send, "crashy", b"x")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "circuit open" in error.value.details()
    assert sup.send("steady", b"still fine").reply.content == b"still fine"
    # StartAgent closes the breaker.
    sup.lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name="crashy"), timeout=30)
    assert sup.send("crashy", b"back").reply.content == b"back"


def _expiring_agent(deadline_ms: int) -> bytes:
    """An echo agent whose caxton_init returns 9 once the wall clock passes
    `deadline_ms`: it deploys, and every restart after that fails in init."""
    return f"""
    (module
      (import "caxton" "now_ms" (func $now (result i64)))
      (memory (export "memory") 1)
      (func (export "caxton_init") (result i32)
        (if (result i32) (i64.gt_u (call $now) (i64.const {deadline_ms}))
          (then (i32.const 9)) (else (i32.const 0))))
      (func (export "caxton_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "caxton_handle") (param $p i32) (param $n i32) (result i64)
        (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))
    """.encode()


def test_init_crash_loop_gives_up_with_the_reasons(supervisor):
    sup = supervisor(FAST)
    sup.deploy("steady-neighbour", "echo")
    deadline_ms = int(time.time() * 1000) + 1500
    pid = sup.deploy("expiring", wasm=_expiring_agent(deadline_ms)).instances[0].pid
    events = _watch(sup, "expiring")
    wait_until(lambda: time.time() * 1000 > deadline_ms + 50, 5, "the agent's init to start failing")
    os.kill(pid, signal.SIGKILL)
    status = wait_until(lambda: (s := sup.status("expiring")).state == caxton_pb2.AGENT_STATE_FAILED and s, 15,
                        "the breaker to open")
    reasons = [f.reason for f in status.recent_failures]
    assert "SIGKILL" in reasons[0]
    assert all("caxton_init returned 9" in r for r in reasons[1:]) and len(reasons) == 4
    assert "circuit open" in status.last_error
    # The backoff grew as configured: 50 ms, 100 ms, 200 ms (jitter off).
    wait_until(lambda: "failed" in [e.kind for e in events], 10, "the failed event")
    delays = [e.message.rsplit("next attempt in ", 1)[1] for e in events if e.kind == "restarting"]
    assert delays == ["0.05s", "0.1s", "0.2s"]
    # And the attempts really were that far apart (later, never earlier).
    gaps = [b.at - a.at for a, b in itertools.pairwise(status.recent_failures)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    assert sup.send("steady-neighbour", b"fine").reply.content == b"fine"


def _watch(sup, agent: str) -> list:
    """Collect an agent's events in the background until the test ends
    (the supervisor fixture closes the channel, which ends the stream)."""
    events: list = []
    call = sup.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=agent))

    def collect() -> None:
        try:
            for event in call:
                events.append(event)
        except grpc.RpcError:
            pass

    threading.Thread(target=collect, daemon=True).start()
    wait_until(lambda: events and events[0].kind == "watching", 10, "the event stream to open")
    return events


def test_hung_worker_is_killed_and_restarted(supervisor):
    sup = supervisor(FAST)
    pid = sup.deploy("frozen", "echo").instances[0].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        new_pid = _running_pid(sup, "frozen", not_pid=pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    status = sup.status("frozen")
    assert "health checks" in status.recent_failures[-1].reason
    assert new_pid != pid
    assert sup.send("frozen", b"thawed").reply.content == b"thawed"


def test_chaos_every_message_gets_exactly_one_outcome(supervisor):
    sup = supervisor("[restart]\ninitial_delay_s = 0.01\nmax_failures = 1000\n")
    names = [f"chaos-{i}" for i in range(3)]
    for name in names:
        sup.deploy(name, "echo")
    with LoadGenerator(sup, names, callers=4, timeout=10) as load:
        rng = random.Random(7)
        deadline = time.monotonic() + 30.0
        kills = 0
        while kills < 12 and time.monotonic() < deadline:
            status = sup.status(rng.choice(names))
            if status.instances:
                os.kill(status.instances[0].pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.15)  # pacing of the chaos, not synchronisation
    assert not any(thread.is_alive() for thread in load.threads)
    sent = load.sent
    outcomes = Counter("reply" if t.echoed else ("WRONG" if t.status == "ok" else t.status) for t in load.trips())
    assert kills >= 10
    # Every message sent has exactly one outcome, and every outcome is a
    # reply with the right content or an explicit error.
    assert sum(outcomes.values()) == sum(sent.values())
    assert outcomes["WRONG"] == 0
    assert set(outcomes) <= {"reply", "UNAVAILABLE"}, outcomes
    assert outcomes["reply"] > outcomes["UNAVAILABLE"]
    for name in names:
        _running_pid(sup, name)
        assert sup.send(name, b"after").reply.content == b"after"
