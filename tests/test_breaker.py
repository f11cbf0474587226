"""The circuit breaker heals by itself, with real supervisors and workers.

The issue's bad day: agents with replicas under continuous load while
workers are SIGKILLed every 0.3 s (the issue ran 20 s; 8 s here keeps the
suite short and still opens breakers), then no operator action: every agent
answers again within the cool-down plus 5 s. And a module that keeps failing
to start: the breaker opens, half-opens after the cool-down, fails its
probe, and the next cool-down is twice as long.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time
from collections import Counter

import grpc

from caxton.v1 import caxton_pb2

from .harness import LoadGenerator, module, wait_until

COOLDOWN_MAX_S = 2.0


def _deploy(sup, name: str, wasm: bytes, replicas: int = 1) -> None:
    sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(name=name, module=wasm, replicas=replicas), timeout=60)


def _answers(sup, name: str) -> bool:
    try:
        return sup.send(name, b"after", timeout=5).reply.content == b"after"
    except grpc.RpcError:
        return False


def test_after_a_kill_storm_every_agent_comes_back_without_an_operator(supervisor):
    sup = supervisor(f"[restart]\ninitial_delay_s = 0.01\nbreaker_cooldown_s = 1\n"
                     f"breaker_cooldown_max_s = {COOLDOWN_MAX_S}\n")
    names = [f"storm-{i}" for i in range(3)]
    for name in names:
        _deploy(sup, name, module("echo"), replicas=2)
    rng = random.Random(11)
    kills = 0
    with LoadGenerator(sup, names, callers=4, timeout=10) as load:
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            status = sup.status(rng.choice(names))
            if status.instances:
                os.kill(rng.choice(status.instances).pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.3)  # the pace of the storm, not synchronisation
    calm = time.monotonic()
    outcomes = Counter("reply" if t.echoed else ("WRONG" if t.status == "ok" else t.status) for t in load.trips())
    # Every message had exactly one outcome: the right reply or a clear error.
    assert sum(outcomes.values()) == sum(load.sent.values())
    assert outcomes["WRONG"] == 0
    assert set(outcomes) <= {"reply", "UNAVAILABLE"}, outcomes
    assert kills >= 20
    assert "circuit breaker open" in sup.log_text(), "the storm should have opened at least one breaker"
    # No operator action: each agent runs again with all its replicas, and
    # answers, within the cool-down + 5 s.
    for name in names:
        wait_until(functools.partial(_recovered, sup, name), max(0.0, calm + COOLDOWN_MAX_S + 5.0 - time.monotonic()),
                   f"{name} to run again by itself")
        assert _answers(sup, name)


def _recovered(sup, name: str) -> bool:
    status = sup.status(name)
    return (status.state == caxton_pb2.AGENT_STATE_RUNNING and status.breaker.state == "closed"
            and len(status.instances) == 2)


def _time_bomb(expires_unix_ms: int) -> bytes:
    """The echo agent, except that caxton_init fails (returns 9) once the
    wall clock has passed `expires_unix_ms`: it starts now and never again."""
    wat = module("echo").decode()
    wat = wat.replace("(module\n", '(module\n  (import "caxton" "now_ms" (func $now_ms (result i64)))\n', 1)
    init = '''  (func (export "caxton_init") (result i32)
    (i32.const 0))'''
    assert init in wat
    return wat.replace(init, f'''  (func (export "caxton_init") (result i32)
    (if (result i32) (i64.gt_u (call $now_ms) (i64.const {expires_unix_ms}))
      (then (i32.const 9)) (else (i32.const 0))))''').encode()


def test_a_module_that_keeps_failing_reopens_the_breaker_for_longer(supervisor):
    sup = supervisor("[restart]\nmax_failures = 1\nbreaker_cooldown_s = 1\nbreaker_cooldown_max_s = 10\n")
    events: list[str] = []
    stream = sup.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent="doomed"), timeout=60)

    def read() -> None:
        try:
            events.extend(event.kind for event in stream)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: events[:1] == ["watching"], 10, "the event stream")
    try:
        expires = int(time.time() * 1000) + 1000
        _deploy(sup, "doomed", _time_bomb(expires))
        wait_until(lambda: time.time() * 1000 > expires + 50, 5, "the module's expiry")
        (worker,) = [i.pid for i in sup.status("doomed").instances]
        os.kill(worker, signal.SIGKILL)  # the restart now fails: caxton_init returns 9

        wait_until(lambda: sup.status("doomed").breaker.state == "open", 10, "the breaker to open")
        opened = sup.status("doomed")
        assert opened.state == caxton_pb2.AGENT_STATE_FAILED
        assert 0 < opened.breaker.next_attempt_in_s <= 1.0
        assert opened.next_restart_in_s > 0
        assert opened.breaker.opened_at > 0
        try:
            sup.send("doomed", b"x", timeout=5)
            raise AssertionError("a failed agent answered")
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "next attempt in" in refused.details()

        wait_until(lambda: sup.status("doomed").breaker.reason.startswith("probe failed"), 10,
                   "the probe to fail after the cool-down")
        reopened = sup.status("doomed")
        assert reopened.breaker.state == "open"
        assert "caxton_init returned 9" in reopened.breaker.reason
        assert 1.0 < reopened.breaker.next_attempt_in_s <= 2.0  # twice the first cool-down
        wait_until(lambda: events.count("breaker-open") >= 2, 5, "the second breaker-open event")
        breaker_events = [kind for kind in events if kind.startswith("breaker")]
        assert breaker_events[:3] == ["breaker-open", "breaker-half-open", "breaker-open"]
    finally:
        stream.cancel()
