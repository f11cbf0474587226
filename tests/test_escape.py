"""A worker contained as if wasmtime had a hole: an agent that can make
system calls of its own (the test-only escape probe, worker/escape_probe.py)
still cannot reach the network, signal or trace another worker, make
namespaces, read the supervisor's environment or write outside its paths.

Real supervisor, real workers, real wasmtime. The probe is linked only when
the supervisor's (so the worker's) environment has
CAXTON_WORKER_ESCAPE_PROBE=1, and imported only under a policy that names
it; both gates are tested too.
"""

from __future__ import annotations

import ctypes.util
import errno
import os
from collections.abc import Iterator

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import SupervisorProcess, module, wait_until

ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.skipif(ctypes.util.find_library("seccomp") is None,
                       reason="libseccomp (libseccomp.so.2) is not installed"),
    pytest.mark.skipif(not ROOT, reason="the escape attempts assume a root supervisor (workers on another uid, "
                       "in a network namespace of their own)"),
]

PROBE_ENV = {"CAXTON_WORKER_ESCAPE_PROBE": "1"}
PROBE_POLICY = """
default_policy = "escape-test"
[policies.escape-test]
allowed_imports = ["caxton.log", "caxton_test.escape"]
"""


def _start(tmp_path, worker_start: str, name: str, extra: str = "", env=PROBE_ENV) -> SupervisorProcess:
    config = f'worker_start = "{worker_start}"\n{PROBE_POLICY}{extra}'
    return SupervisorProcess(tmp_path / name, config=config, env=env).start()


@pytest.fixture
def probing(tmp_path, worker_start) -> Iterator[SupervisorProcess]:
    sup = _start(tmp_path, worker_start, "probing")
    try:
        yield sup
    finally:
        sup.stop()


def escape(sup: SupervisorProcess, agent: str, command: str) -> int:
    """What the probe got for `command`: the errno, 0 if it worked."""
    reply = sup.send(agent, command.encode()).reply.content
    return int.from_bytes(reply, "little", signed=True)


@pytest.fixture
def outside() -> Iterator[str]:
    """A path in /tmp, which any uid may create files in: only the filter
    stands between a worker and it."""
    path = f"/tmp/caxton-escape-probe-{os.getpid()}"
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_every_escape_attempt_is_refused(probing, outside):
    sup = probing
    pid = sup.deploy("escaper").instances[0].pid
    neighbour = sup.deploy("neighbour", "echo").instances[0].pid
    attempts = {
        f"tcp:{sup.port}": errno.EPERM,            # AF_INET refused by the filter
        f"kill:{neighbour}": errno.EPERM,          # signals to itself only
        f"kill:{sup.pid}": errno.EPERM,
        f"environ:{sup.pid}": errno.EACCES,        # another uid's /proc entry
        f"write:{outside}": errno.EPERM,           # no writable opens at all
        f"write:{sup.state_dir}/planted": errno.EPERM,
    }
    got = {command: escape(sup, "escaper", command) for command in attempts}
    assert got == attempts
    assert not os.path.exists(outside) and not (sup.state_dir / "planted").exists()
    # Refused, not fatal: the same worker answers, and so does the neighbour.
    status = sup.status("escaper")
    assert status.instances[0].pid == pid
    assert sup.send("neighbour", b"fine").reply.content == b"fine"
    # The probe reported each attempt as the agent's log.
    wait_until(lambda: sum("escape probe" in line for line in sup.log_text().splitlines()) >= len(attempts),
               10, "the probe's log lines")
    assert "SUCCEEDED" not in sup.log_text()


@pytest.mark.parametrize("command", ["unshare", "ptrace"])
def test_hostile_calls_kill_the_worker(probing, command):
    sup = probing
    neighbour = sup.deploy("neighbour", "echo").instances[0].pid
    first = sup.deploy("escaper").instances[0].pid
    target = f"{command}:{neighbour}" if command == "ptrace" else command
    with pytest.raises(grpc.RpcError) as info:
        escape(sup, "escaper", target)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    # The worker died of SIGSYS and the restart policy brings the agent back.
    status = wait_until(lambda: (s := sup.status("escaper")).instances and s.restarts == 1 and s, 20,
                        "the agent to be restarted")
    assert "SIGSYS" in status.recent_failures[-1].reason
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING
    assert status.instances[0].pid != first
    assert sup.send("neighbour", b"untouched").reply.content == b"untouched"
    assert sup.status("neighbour").instances[0].pid == neighbour


def test_without_the_filter_the_probe_does_get_through(tmp_path, worker_start, outside):
    """The probe is real: with the filter off, what only the filter stopped
    now works (the network namespace still stops TCP)."""
    sup = _start(tmp_path, worker_start, "unfiltered", "[sandbox]\nsyscall_filter = false\n")
    try:
        sup.deploy("escaper")
        assert escape(sup, "escaper", f"write:{outside}") == 0
        assert os.path.exists(outside)
        assert escape(sup, "escaper", f"tcp:{sup.port}") == errno.ENETUNREACH
    finally:
        sup.stop()


def test_the_probe_is_denied_by_default(shared_supervisor):
    with pytest.raises(grpc.RpcError) as info:
        shared_supervisor.deploy("escaper-default", "escaper")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "caxton_test.escape" in info.value.details() and "not allowed by policy" in info.value.details()


def test_the_probe_is_not_linked_without_its_environment(tmp_path, worker_start, monkeypatch):
    monkeypatch.delenv("CAXTON_WORKER_ESCAPE_PROBE", raising=False)
    sup = _start(tmp_path, worker_start, "ungated", env=None)
    try:
        with pytest.raises(grpc.RpcError) as info:
            sup.deploy("escaper", wasm=module("escaper"))
        assert "caxton_test" in info.value.details(), info.value.details()
    finally:
        sup.stop()
