"""The runtime's logic in-process: real Runtime, Agent, Rollout, Mailbox and
SQLite store around fake workers (tests/fakes.py). Milliseconds per test;
the end-to-end suites cover the same paths with real processes."""

from __future__ import annotations

import threading
from dataclasses import replace

import grpc
import pytest

from caxton.supervisor.config import Config
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from caxton.supervisor.events import EventBus
from caxton.supervisor.lifecycle import AgentState
from caxton.supervisor.restart import BreakerState, RestartSettings
from caxton.supervisor.runtime import Runtime
from caxton.supervisor.specs import DeploySpec, LimitOverrides, ReloadSpec, RestartOverrides
from caxton.supervisor.store import StateStore
from caxton.v1 import caxton_pb2

from .fakes import FakeLaunch
from .harness import module, wait_until

FAST_RESTARTS = RestartSettings(initial_delay_s=0.001, max_delay_s=0.01, jitter=0.0, max_failures=3, window_s=60)


@pytest.fixture
def launch() -> FakeLaunch:
    return FakeLaunch()


@pytest.fixture
def runtime(tmp_path, launch):
    config = replace(Config(), state_dir=tmp_path / "state", restart=FAST_RESTARTS)
    store = StateStore(config.state_dir)
    runtime = Runtime(config, store, launch, EventBus())
    yield runtime
    runtime.shutdown(5.0)
    store.close()


def send(runtime: Runtime, receiver: str, content: bytes, timeout: float = 5.0) -> tuple:
    """Submit one message and wait for its outcome (code, error, reply)."""
    done = threading.Event()
    outcome: list = []

    def callback(code, error, reply):
        outcome.append((code, error, reply))
        done.set()

    runtime.router.submit(caxton_pb2.AgentMessage(receiver=receiver, content=content), Deadline.after(timeout),
                          callback)
    assert done.wait(timeout), "no outcome before the deadline"
    return outcome[0]


def desired(runtime: Runtime, name: str) -> str:
    return next(r.desired_state for r in runtime.store.agents() if r.name == name)


def test_deploy_send_stop_start_remove(runtime, launch):
    deployed = runtime.deploy(DeploySpec(name="echo", module=module("echo"), limits=LimitOverrides(fuel=5)))
    assert deployed.status.state is AgentState.RUNNING
    assert deployed.status.limits.fuel == 5
    assert send(runtime, "echo", b"hi") == (grpc.StatusCode.OK, "", b"hi")
    assert runtime.stop("echo", 5.0).state is AgentState.STOPPED
    assert desired(runtime, "echo") == "stopped"
    assert runtime.start("echo").state is AgentState.RUNNING
    assert desired(runtime, "echo") == "running"
    runtime.remove("echo", 5.0)
    with pytest.raises(NotFound):
        runtime.status("echo")
    assert runtime.store.agents() == []


def test_a_name_with_a_trailing_newline_is_refused(runtime):
    with pytest.raises(InvalidArgument, match="invalid agent name"):
        runtime.deploy(DeploySpec(name="a\n", module=module("echo")))
    assert runtime.store.agents() == []


def test_a_failed_first_start_leaves_no_trace(runtime, launch):
    launch.refuse.add(1)
    with pytest.raises(FailedPrecondition, match="caxton_init returned 7"):
        runtime.deploy(DeploySpec(name="refuses", module=module("echo")))
    assert runtime.store.agents() == []
    with pytest.raises(NotFound):
        runtime.get("refuses")


def test_counters_do_not_lose_updates_across_replicas(runtime):
    """Four replicas' dispatchers count into one agent at once."""
    runtime.deploy(DeploySpec(name="busy", module=module("echo"), replicas=4))
    total = 4000
    done = threading.Semaphore(0)
    for n in range(total):
        runtime.router.submit(caxton_pb2.AgentMessage(receiver="busy", content=b"%d" % n), Deadline.never(),
                       lambda code, error, reply: done.release())
    for _ in range(total):
        assert done.acquire(timeout=10)
    status = runtime.status("busy")
    assert (status.messages, status.errors) == (total, 0)
    assert sum(v.messages for v in status.versions) == total


def test_a_start_that_overlaps_a_stop_is_the_last_word_on_disk(runtime, launch):
    """Defect: StartAgent while StopAgent drains; the start runs second, so
    the agent runs and the stored desired state must say 'running'."""
    launch.gate = threading.Event()
    runtime.deploy(DeploySpec(name="overlap", module=module("echo")))
    outcome: list = []
    runtime.router.submit(caxton_pb2.AgentMessage(receiver="overlap", content=b"held"), Deadline.never(),
                   lambda *result: outcome.append(result))
    stopper = threading.Thread(target=runtime.stop, args=("overlap", 10.0))
    stopper.start()
    wait_until(lambda: runtime.get("overlap").state is AgentState.DRAINING, 5, "the stop to drain")
    starter = threading.Thread(target=runtime.start, args=("overlap",))
    starter.start()
    launch.gate.set()  # the held message finishes; the stop completes; the start follows
    stopper.join(10)
    starter.join(10)
    assert outcome == [(grpc.StatusCode.OK, "", b"held")]
    assert runtime.get("overlap").state is AgentState.RUNNING
    assert desired(runtime, "overlap") == "running"


def test_rollback_goes_to_the_last_version_that_served(runtime, launch):
    runtime.deploy(DeploySpec(name="roll", module=module("version1")))
    launch.refuse.add(2)
    with pytest.raises(FailedPrecondition, match="v1 keeps serving"):
        runtime.hot_reload(ReloadSpec(name="roll", module=module("init_fails")))
    reloaded = runtime.hot_reload(ReloadSpec(name="roll", module=module("version2")))
    assert (reloaded.rollout.from_version, reloaded.rollout.to_version) == (1, 3)
    back = runtime.rollback("roll", None, 5.0)
    assert (back.rollout.from_version, back.rollout.to_version) == (3, 1)
    assert [v.version for v in back.status.versions] == [1]
    assert [(v.version, v.stable) for v in runtime.store.versions("roll")] == [(1, True), (2, False), (3, True)]


def test_crashes_restart_then_the_breaker_opens(runtime, launch):
    runtime.deploy(DeploySpec(name="crashy", module=module("echo"), replicas=2))
    for expected_restarts in (1, 2, 3):
        victim = launch.alive("crashy")[0]
        victim.crash()
        wait_until(lambda victim=victim: len(launch.alive("crashy")) == 2 and victim not in launch.alive("crashy"), 5,
                   "the replica to be replaced")
        assert runtime.status("crashy").restarts == expected_restarts
    launch.alive("crashy")[0].crash()  # the 4th failure in the window: more than max_failures
    wait_until(lambda: runtime.get("crashy").state is AgentState.FAILED, 5, "the breaker to open")
    wait_until(lambda: not launch.alive("crashy"), 5, "the surviving replica to be ended")
    with pytest.raises(Unavailable, match="circuit open"):
        send(runtime, "crashy", b"x")


# ------------------------------------------------------------ the breaker heals (issue 11)

def _open_breaker(runtime: Runtime, launch: FakeLaunch, name: str) -> None:
    """Two failures in the window (max_failures = 1): the breaker opens."""
    first = launch.alive(name)[0]
    first.crash()
    wait_until(lambda: (alive := launch.alive(name)) and first not in alive and
               len(alive) == runtime.get(name).replicas, 5, "the first crash to be restarted")
    launch.alive(name)[0].crash()
    wait_until(lambda: runtime.get(name).state is AgentState.FAILED, 5, "the breaker to open")


def _deploy_breakable(runtime: Runtime, name: str, cooldown_s: float, **restart) -> None:
    runtime.deploy(DeploySpec(name=name, module=module("echo"), replicas=2, restart=RestartOverrides(
        max_failures=1, breaker_cooldown_s=cooldown_s, breaker_cooldown_max_s=60.0, **restart)))


def test_an_open_breaker_half_opens_after_the_cooldown_and_closes(runtime, launch):
    events = runtime.events.subscribe("healing")
    _deploy_breakable(runtime, "healing", cooldown_s=0.3)
    _open_breaker(runtime, launch, "healing")
    status = runtime.status("healing")
    assert status.breaker.state is BreakerState.OPEN
    assert 0 < status.next_restart_in_s <= 0.3
    assert 0 < status.breaker.next_attempt_in_s <= 0.3
    assert "circuit open" in status.breaker.reason
    with pytest.raises(Unavailable, match=r"circuit breaker open, next attempt in 0\.\ds"):
        send(runtime, "healing", b"x")

    wait_until(lambda: runtime.get("healing").state is AgentState.RUNNING, 5, "the breaker to close by itself")
    healed = runtime.status("healing")
    assert healed.breaker.state is BreakerState.CLOSED
    assert len(healed.instances) == 2  # the probe worker and one more
    assert send(runtime, "healing", b"back") == (grpc.StatusCode.OK, "", b"back")
    kinds = [e.kind for e in iter(lambda: events.next(0.0), None)]
    assert kinds.index("breaker-open") < kinds.index("breaker-half-open") < kinds.index("breaker-closed")


def test_a_failed_probe_reopens_the_breaker_for_twice_as_long(runtime, launch):
    events = runtime.events.subscribe("relapse")
    _deploy_breakable(runtime, "relapse", cooldown_s=0.2)
    _open_breaker(runtime, launch, "relapse")
    launch.refuse.add(1)  # from now on caxton_init fails: the probe cannot pass
    wait_until(lambda: runtime.status("relapse").breaker.reason.startswith("probe failed"), 5,
               "the probe to fail")
    reopened = runtime.status("relapse")
    assert reopened.state is AgentState.FAILED and reopened.breaker.state is BreakerState.OPEN
    assert 0.2 < reopened.next_restart_in_s <= 0.4  # the cool-down doubled
    assert "caxton_init returned 7" in reopened.last_error
    launch.refuse.clear()
    wait_until(lambda: runtime.get("relapse").state is AgentState.RUNNING, 5, "the next probe to pass")
    kinds = [e.kind for e in iter(lambda: events.next(0.0), None) if e.kind.startswith("breaker")]
    assert kinds == ["breaker-open", "breaker-half-open", "breaker-open", "breaker-half-open", "breaker-closed"]


def test_stop_while_failed_calls_the_retries_off_and_start_closes_at_once(runtime, launch):
    _deploy_breakable(runtime, "called-off", cooldown_s=30.0)
    _open_breaker(runtime, launch, "called-off")
    assert runtime.stop("called-off", 5.0).state is AgentState.STOPPED
    assert desired(runtime, "called-off") == "stopped"
    assert runtime.status("called-off").next_restart_in_s == 0.0
    started = runtime.start("called-off")
    assert started.state is AgentState.RUNNING and started.breaker.state is BreakerState.CLOSED
    assert len(launch.alive("called-off")) == 2


def test_without_auto_recover_an_open_breaker_waits_for_an_operator(runtime, launch):
    _deploy_breakable(runtime, "manual", cooldown_s=0.05, auto_recover=False)
    _open_breaker(runtime, launch, "manual")
    status = runtime.status("manual")
    assert status.breaker.state is BreakerState.OPEN
    assert status.next_restart_in_s == 0.0  # nothing scheduled
    assert runtime.start("manual").state is AgentState.RUNNING
