"""The runtime's logic in-process: real Runtime, Agent, Rollout, Mailbox and
SQLite store around fake workers (tests/fakes.py). Milliseconds per test;
the end-to-end suites cover the same paths with real processes."""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import replace

import grpc
import pytest

from caxton.supervisor import admission as admission_module
from caxton.supervisor.caps import Caps
from caxton.supervisor.config import Config
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from caxton.supervisor.events import EventBus
from caxton.supervisor.lifecycle import AgentState
from caxton.supervisor.restart import BreakerState, RestartSettings
from caxton.supervisor.runtime import Runtime
from caxton.supervisor.specs import DeploySpec, LimitOverrides, ReloadSpec, RestartOverrides
from caxton.supervisor.store import StateStore, VersionRecord
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


# ------------------------------------------------------------ caps, quotas, idempotent deploy (issue 12)

MIB = 1 << 20
SMALL_CAPS = Caps(memory_bytes=8 * MIB, fuel=10**6, timeout_ms=1000, max_message_bytes=4096, replicas=3,
                  label_length=8, agents=3, workers=4, committed_memory_bytes=24 * MIB)


def make_runtime(tmp_path, launch, caps: Caps = SMALL_CAPS, **settings) -> Runtime:
    limits = replace(Config().limits, memory_bytes=2 * MIB, fuel=1000, timeout_ms=100, max_message_bytes=1024)
    config = replace(Config(), state_dir=tmp_path / "state", restart=FAST_RESTARTS, caps=caps, limits=limits,
                     **settings)
    return Runtime(config, StateStore(config.state_dir), launch, EventBus())


@pytest.fixture
def capped(tmp_path, launch):
    runtime = make_runtime(tmp_path, launch)
    yield runtime
    runtime.shutdown(5.0)
    runtime.store.close()


def nothing_stored(runtime: Runtime) -> bool:
    return runtime.store.agent_names() == [] and not any(runtime.store.modules.modules_dir.iterdir())


@pytest.mark.parametrize("spec, words", [
    (dict(limits=LimitOverrides(memory_bytes=(1 << 64) - 1)), ["limits.memory_bytes", "18446744073709551615",
                                                               "8388608 (8 MiB)", "caps.memory"]),
    (dict(limits=LimitOverrides(fuel=10**6 + 1)), ["limits.fuel", "1000001", "1000000", "caps.fuel"]),
    (dict(limits=LimitOverrides(timeout_ms=49 * 86_400_000)), ["limits.timeout_ms", "4233600000", "1000"]),
    (dict(limits=LimitOverrides(max_message_bytes=4097)), ["limits.max_message_bytes", "4097", "4096 (4 KiB)"]),
    (dict(limits=LimitOverrides(fuel=0)), ["limits.fuel", "at least 1"]),
    (dict(replicas=4), ["replicas", "4", "3", "caps.replicas"]),
    (dict(replicas=0), ["replicas", "at least 1"]),
    (dict(label="123456789"), ["label", "9 characters", "8", "caps.label_length"]),
    (dict(label="a\x1b[2J"), ["label", "printable", "'\\x1b'"]),
], ids=["memory", "fuel", "timeout", "message", "fuel-zero", "replicas", "replicas-zero", "label-long",
        "label-escape"])
def test_a_value_above_its_cap_is_refused_and_leaves_nothing(capped, launch, spec, words):
    with pytest.raises(InvalidArgument) as refused:
        capped.deploy(DeploySpec(name="over", module=module("echo"), **spec))
    for word in words:
        assert word in refused.value.message, (word, refused.value.message)
    assert nothing_stored(capped) and not launch.started


def test_the_host_wide_quotas_count_every_agent(capped):
    """agents 3, workers 4, committed memory 24 MiB (memory limit x replicas)."""
    capped.deploy(DeploySpec(name="a", module=module("echo"), limits=LimitOverrides(memory_bytes=8 * MIB),
                             replicas=2))
    capped.deploy(DeploySpec(name="b", module=module("echo")))
    with pytest.raises(ResourceExhausted, match=r"caps\.committed_memory"):
        capped.deploy(DeploySpec(name="c", module=module("echo"), limits=LimitOverrides(memory_bytes=8 * MIB)))
    with pytest.raises(ResourceExhausted, match=r"5, above the cap of 4.*caps\.workers"):
        capped.deploy(DeploySpec(name="c", module=module("echo"), replicas=2))
    capped.deploy(DeploySpec(name="c", module=module("echo")))
    with pytest.raises(ResourceExhausted, match=r"holds 3 agents and its cap is 3"):
        capped.deploy(DeploySpec(name="d", module=module("echo")))
    # A reload that grows committed memory past the quota is refused; the
    # version it would have added is never recorded.
    with pytest.raises(ResourceExhausted, match=r"caps\.committed_memory"):
        capped.hot_reload(ReloadSpec(name="b", module=module("uppercase"), limits=LimitOverrides(memory_bytes=7 * MIB)))
    assert [v.version for v in capped.store.versions("b")] == [1]
    capped.hot_reload(ReloadSpec(name="b", module=module("uppercase"), limits=LimitOverrides(memory_bytes=6 * MIB)))
    # Removing frees what the agent held.
    capped.remove("a", 5.0)
    capped.deploy(DeploySpec(name="d", module=module("echo"), replicas=2))


def test_a_repeated_deploy_changes_nothing(capped, launch):
    spec = DeploySpec(name="again", module=module("echo"), label="b7", replicas=2,
                      restart=RestartOverrides(max_failures=2))
    first = capped.deploy(spec)
    second = capped.deploy(spec)
    assert second.status.state is AgentState.RUNNING
    assert second.report.module_sha256 == first.report.module_sha256
    assert len(launch.started) == 2 and [v.version for v in capped.store.versions("again")] == [1]
    with pytest.raises(AlreadyExists, match="different label"):
        capped.deploy(replace(spec, label="b8"))
    with pytest.raises(AlreadyExists, match="different module_sha256, limits"):
        capped.deploy(replace(spec, module=module("uppercase"), limits=LimitOverrides(fuel=5)))
    with pytest.raises(AlreadyExists, match="different restart"):
        capped.deploy(replace(spec, restart=RestartOverrides()))
    # Even at a quota a retry succeeds: it asks for nothing new.
    capped.deploy(DeploySpec(name="filler", module=module("echo"), replicas=2))
    assert capped.deploy(spec).status.state is AgentState.RUNNING


class HeldLaunch:
    """Launches through `inner` once `release` is set; `fail_first` makes the
    first launch fail as a broken worker would."""

    def __init__(self, inner: FakeLaunch, *, fail_first: bool = False) -> None:
        self.inner = inner
        self.fail_first = fail_first
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, version: VersionRecord):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        if self.fail_first and self.calls == 1:
            raise ValueError("a defect in the launch path")
        return self.inner(version)


@pytest.mark.parametrize("first_fails", [False, True], ids=["first-succeeds", "first-fails"])
def test_a_retry_that_overtakes_the_first_deploy_gets_its_outcome(tmp_path, launch, first_fails):
    held = HeldLaunch(launch, fail_first=first_fails)
    runtime = make_runtime(tmp_path, held)
    spec = DeploySpec(name="raced", module=module("echo"))
    outcomes: dict[str, object] = {}

    def deploy(which: str) -> None:
        try:
            outcomes[which] = runtime.deploy(spec).status.state
        except Exception as exc:
            outcomes[which] = exc

    try:
        first = threading.Thread(target=deploy, args=("first",))
        first.start()
        assert held.entered.wait(5)
        retry = threading.Thread(target=deploy, args=("retry",))
        retry.start()
        retry.join(0.3)
        assert retry.is_alive(), f"the retry answered before the first deploy ended: {outcomes}"
        held.release.set()
        first.join(10)
        retry.join(10)
        assert outcomes["retry"] is AgentState.RUNNING
        if first_fails:
            assert isinstance(outcomes["first"], ValueError)
            assert held.calls == 2  # the retry deployed it afresh
        else:
            assert outcomes["first"] is AgentState.RUNNING and held.calls == 1
        assert runtime.store.agent_names() == ["raced"]
    finally:
        held.release.set()
        runtime.shutdown(5.0)
        runtime.store.close()


def test_a_deploy_that_fails_for_any_reason_leaves_no_trace(tmp_path, launch):
    """A defect (not a CaxtonError) in the first start once left the record
    behind, and the supervisor crashed on it at every start after."""
    broken = HeldLaunch(launch, fail_first=True)
    broken.release.set()
    runtime = make_runtime(tmp_path, broken)
    try:
        with pytest.raises(ValueError, match="defect"):
            runtime.deploy(DeploySpec(name="unlucky", module=module("echo")))
        assert nothing_stored(runtime)
        with pytest.raises(NotFound):
            runtime.get("unlucky")
        assert runtime.deploy(DeploySpec(name="unlucky", module=module("echo"))).status.state is AgentState.RUNNING
    finally:
        runtime.shutdown(5.0)
        runtime.store.close()


def test_validation_runs_a_few_at_a_time(tmp_path, launch, monkeypatch):
    runtime = make_runtime(tmp_path, launch, validation_concurrency=2)
    gate = threading.Event()
    active: list[int] = [0, 0]  # now, most at once
    lock = threading.Lock()
    real_validate = admission_module.validate

    def held_validate(*args, **kwargs):
        with lock:
            active[0] += 1
            active[1] = max(active)
        try:
            assert gate.wait(10)
            return real_validate(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(admission_module, "validate", held_validate)
    callers = [threading.Thread(target=runtime.validate, args=(module("echo"), "")) for _ in range(4)]
    try:
        for caller in callers:
            caller.start()
        wait_until(lambda: active[0] == 2, 5, "two validations to run")
        callers[0].join(0.2)
        assert active == [2, 2], "a third validation ran beside the first two"
        monkeypatch.setattr(admission_module, "VALIDATION_WAIT_S", 0.05)
        with pytest.raises(Unavailable, match="2 at a time"):
            runtime.validate(module("echo"), "")
    finally:
        gate.set()
        for caller in callers:
            caller.join(10)
        runtime.shutdown(5.0)
        runtime.store.close()
    assert active == [0, 2]


def _corrupt(runtime: Runtime, statement: str, *args) -> None:
    db = sqlite3.connect(runtime.store.state_dir / "caxton.db")
    try:
        with db:
            assert db.execute(statement, args).rowcount == 1
    finally:
        db.close()


def test_restore_brings_back_what_it_can_and_fails_the_rest(tmp_path, launch, caplog):
    """Damaged records come back FAILED with the reason, can be removed and
    deployed again; an agent above today's caps (stored under looser ones)
    comes back running, with a warning."""
    loose = make_runtime(tmp_path, launch, caps=Caps())
    for name in ("intact", "damaged", "generous"):
        loose.deploy(DeploySpec(name=name, module=module("echo"), replicas=4 if name == "generous" else 1))
    loose.shutdown(5.0)
    loose.store.close()
    _corrupt(loose, "UPDATE versions SET limits = '{\"fuel\": \"plenty\"}' WHERE agent = 'damaged'")

    again = make_runtime(tmp_path, launch)
    try:
        with caplog.at_level(logging.WARNING, logger="caxton.restore"):
            again.restore()
        assert "generous above today's caps" in caplog.text and "replicas = 4 (caps.replicas = 3)" in caplog.text
        assert again.status("intact").state is AgentState.RUNNING
        assert again.status("generous").state is AgentState.RUNNING and len(launch.alive("generous")) == 4
        damaged = again.status("damaged")
        assert damaged.state is AgentState.FAILED
        assert damaged.last_error == ("cannot be restored: versions.limits of damaged v1: fuel is 'plenty', "
                                      "not an integer")
        with pytest.raises(FailedPrecondition, match="remove it and deploy it again"):
            again.start("damaged")
        with pytest.raises(FailedPrecondition, match="remove it"):
            again.hot_reload(ReloadSpec(name="damaged", module=module("echo")))
        # At the quota of 4 workers already (generous): a new agent is refused ...
        with pytest.raises(ResourceExhausted):
            again.deploy(DeploySpec(name="new", module=module("echo")))
        again.remove("damaged", 5.0)
        again.remove("generous", 5.0)
        # ... and the damaged one's name is free for a fresh deploy.
        assert again.deploy(DeploySpec(name="damaged", module=module("echo"))).status.state is AgentState.RUNNING
    finally:
        again.shutdown(5.0)
        again.store.close()
