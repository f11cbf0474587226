"""The launcher (supervisor/launcher.py) in-process, with real workers: a slow
exit callback stalls nothing, and the fork server comes back with backoff
while the launcher reports whether workers can be started."""

from __future__ import annotations

import itertools
import os
import queue
import random
import shutil
import signal
import tempfile
import threading
import time

import grpc
import psutil
import pytest

from caxton.supervisor.backoff import Backoff
from caxton.supervisor.errors import WorkerStartError
from caxton.supervisor.launcher import Launcher, WorkerProcess
from caxton.supervisor.restart import RestartSettings

from .harness import alive, wait_until

START_TIMEOUT = 20.0


@pytest.fixture
def runtime_dir():
    # Short, under /tmp: worker socket paths must fit in sun_path.
    path = tempfile.mkdtemp(prefix="cx-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_launcher(runtime_dir):
    started: list[Launcher] = []

    def make(mode: str, **kwargs) -> Launcher:
        launcher = Launcher(runtime_dir, mode=mode, **kwargs)
        started.append(launcher)
        return launcher

    yield make
    for launcher in started:
        launcher.close()


def _fork_server_pids() -> list[int]:
    """Our fork servers: children of this process named caxton-forksrv."""
    pids = []
    for child in psutil.Process().children():
        try:
            if child.name() == "caxton-forksrv" and child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


@pytest.mark.parametrize("mode", ["exec", "fork"])
def test_a_blocked_exit_callback_stalls_neither_reaping_nor_starting(make_launcher, mode):
    launcher = make_launcher(mode)
    a = launcher.spawn(START_TIMEOUT)
    b = launcher.spawn(START_TIMEOUT)
    release = threading.Event()
    ran: list[tuple[str, str]] = []
    entered = threading.Event()

    def blocking(status) -> None:
        ran.append(("a", threading.current_thread().name))
        entered.set()
        release.wait(60)

    a.add_exit_callback(blocking)
    b.add_exit_callback(lambda status: ran.append(("b", threading.current_thread().name)))
    started: dict[str, object] = {}

    def start() -> None:
        try:
            started["process"] = launcher.spawn(START_TIMEOUT)
        except Exception as exc:  # reported by the assertion below
            started["error"] = exc

    starter = threading.Thread(target=start, daemon=True)
    try:
        a.kill()
        assert entered.wait(10), "A's exit callback never ran"
        b.kill()
        t0 = time.monotonic()
        assert b.wait_exit(2.0) is not None, "B was not reaped while A's exit callback was blocked"
        assert time.monotonic() - t0 < 2.0
        # In a thread: a launcher that stalls would hang spawn() for as long
        # as the callback blocks.
        starter.start()
        starter.join(10.0)
        assert [who for who, _ in ran] == ["a"]  # A's callback still blocks; B's waits behind it
        assert "process" in started, started.get("error",
                                                 "spawn() did not complete while A's exit callback was blocked")
        assert isinstance(started["process"], WorkerProcess) and started["process"].alive
    finally:
        release.set()
        if starter.is_alive():
            starter.join(START_TIMEOUT)
    # Callbacks run in order, never on the launcher thread.
    wait_until(lambda: len(ran) == 2, 5, "B's exit callback to run after A's")
    assert [who for who, _ in ran] == ["a", "b"]
    assert all(thread != "launcher" for _, thread in ran), ran


def _crashing_python(tmp_path) -> tuple[str, str]:
    """A stand-in for python that logs when it was started and exits 1 at once,
    whatever its arguments: a fork server that dies as it starts."""
    starts = tmp_path / "starts"
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\ndate +%s.%N >> {starts}\nexit 1\n")
    script.chmod(0o755)
    return str(script), str(starts)


def _start_times(path: str) -> list[float]:
    try:
        with open(path) as f:
            return [float(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def test_a_crash_looping_fork_server_backs_off_and_reports_it(make_launcher, tmp_path):
    python, starts = _crashing_python(tmp_path)
    created = time.monotonic()
    launcher = make_launcher("fork", python=python)
    changes: queue.Queue = queue.Queue()
    launcher.on_capacity_change(lambda up: changes.put((up, threading.current_thread().name)))
    assert changes.get(timeout=5)[0] is True  # the value when subscribing

    wait_until(lambda: not launcher.can_start_workers, 10, "the launcher to report it cannot start workers")
    up, thread = changes.get(timeout=5)
    assert up is False and thread != "launcher"

    t0 = time.monotonic()
    with pytest.raises(WorkerStartError) as failure:
        launcher.spawn(START_TIMEOUT)
    assert time.monotonic() - t0 < 1.0
    assert "fork server is restarting" in str(failure.value)
    assert "next attempt in" in str(failure.value)

    # Measured over a fixed window: how often it was restarted, not a wait
    # for something to happen.
    time.sleep(max(0.0, created + 2.0 - time.monotonic()))
    times = _start_times(starts)
    assert 3 <= len(times) <= 15, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each delay doubles, give or take 20 % of jitter and the time a start
    # takes: compared two steps apart (four times longer), gaps grow.
    assert all(later > earlier for earlier, later in zip(gaps, gaps[2:], strict=False)), gaps
    assert gaps[-1] > 3 * gaps[0], gaps


def test_exec_starts_that_keep_failing_are_reported(make_launcher, tmp_path):
    python, starts = _crashing_python(tmp_path)
    launcher = make_launcher("exec", python=python)
    for attempt in range(1, 7):
        with pytest.raises(WorkerStartError, match="exited with status 1 before it was ready"):
            launcher.spawn(START_TIMEOUT)
        # Every start is still tried; only the sixth failure opens the breaker.
        assert launcher.can_start_workers is (attempt < 6), attempt
    assert len(_start_times(starts)) == 6


def test_a_killed_fork_server_is_replaced(make_launcher):
    launcher = make_launcher("fork")
    first = launcher.spawn(START_TIMEOUT)
    [old] = wait_until(_fork_server_pids, 10, "the fork server")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not alive(old), 10, "the fork server to die")
    new = wait_until(lambda: [p for p in _fork_server_pids() if p != old], 10, "a new fork server")
    second = launcher.spawn(START_TIMEOUT)
    assert second.alive and second.pid not in new
    assert launcher.can_start_workers
    assert first.alive  # workers are not the fork server's children


def test_a_hung_fork_server_is_replaced_within_the_start(make_launcher):
    launcher = make_launcher("fork")
    launcher.spawn(START_TIMEOUT)
    [stuck] = wait_until(_fork_server_pids, 10, "the fork server")
    os.kill(stuck, signal.SIGSTOP)
    # The first attempt waits for the stuck server until the deadline; then
    # the keeper kills it and the start is tried again on its replacement.
    worker = launcher.spawn(5.0)
    assert worker.alive
    wait_until(lambda: not alive(stuck), 10, "the stuck fork server to be killed")
    assert launcher.can_start_workers


def test_backoff_keeps_retrying_at_the_longest_delay_and_recovers():
    settings = RestartSettings(initial_delay_s=0.05, max_delay_s=5.0, jitter=0.0, max_failures=3, window_s=60.0)
    backoff = Backoff(settings, random.Random(1))
    delays = [backoff.failed(float(t), "died") for t in range(4)]
    assert [r.delay_s for r in delays] == [0.05, 0.1, 0.2, 5.0]
    assert [r.gave_up for r in delays] == [False, False, False, True]
    assert backoff.failed(4.0, "died").delay_s == 5.0  # still retrying, slowly
    backoff.started(5.0)
    assert backoff.gave_up  # coming up is not yet proof
    backoff.succeeded(6.0)
    assert not backoff.gave_up
    retry = backoff.failed(7.0, "died")
    assert (retry.delay_s, retry.gave_up) == (0.05, False)  # a one-off failure is cheap again


def test_the_supervisor_is_not_serving_while_no_worker_can_start(tmp_path, runtime_dir):
    """The composition root reports the launcher's capacity on grpc.health.v1."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from caxton.supervisor.config import Config
    from caxton.supervisor.server import Supervisor

    python, _ = _crashing_python(tmp_path)
    config = Config(listen="127.0.0.1:0", state_dir=tmp_path / "state", runtime_dir=runtime_dir, worker_pool=0)
    supervisor = Supervisor(config, python=python)
    try:
        supervisor.start()
        with grpc.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def status(service: str = "") -> int:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, 10,
                       "the supervisor to report NOT_SERVING")
            assert status("caxton.v1.Messaging") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        supervisor.stop()
