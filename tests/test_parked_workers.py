"""Idle workers are parked (frozen) and woken by the next call: real
supervisor, real workers, with the cgroup freezer and with SIGSTOP."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from caxton.supervisor.config import Config
from caxton.v1 import caxton_pb2
from tests.harness import wait_until, worker_pids_of

SPARES = Config().worker_pool  # the spare pool's size by default

PARKING = """
park_after_s = 0.3
health_interval_s = 0.1
[sandbox]
cgroups = "{cgroups}"
"""


def _cgroup_dir(pid: int) -> Path | None:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return None


def frozen(pid: int) -> bool:
    """Frozen by the cgroup freezer, or stopped by SIGSTOP."""
    if _all_threads_stopped(pid):
        return True
    directory = _cgroup_dir(pid)
    if directory is None or not (directory / "cgroup.freeze").exists():
        return False
    return "frozen 1" in (directory / "cgroup.events").read_text().splitlines()


def _all_threads_stopped(pid: int) -> bool:
    """SIGSTOP stops a process's threads one by one: the process shows as
    stopped while some of its threads are still on their way to sleep."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        # Some kernels show a SIGSTOPped thread as "t" rather than "T".
        if stat[stat.rindex(")") + 2] not in "tT":
            return False
    return True


def wake_ups(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each is a
    thread going to sleep, so an idle process that keeps waking up counts
    up, and a frozen one does not."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


@pytest.fixture(params=["auto", "off"], ids=["cgroup-freezer", "sigstop"])
def parking_supervisor(request, supervisor):
    if request.param == "auto" and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("no cgroup v2 hierarchy on this host")
    return supervisor(PARKING.format(cgroups=request.param))


def test_an_idle_worker_is_parked_and_stops_waking_up(parking_supervisor):
    sup = parking_supervisor
    sup.deploy("echo", "echo")
    assert sup.send("echo", b"hi").reply.content == b"hi"
    pid = sup.worker_pids()[0]
    wait_until(lambda: frozen(pid), 10, "the idle worker to be parked")
    before = wake_ups(pid)
    # A measurement window, not a synchronisation: an unparked idle worker
    # wakes about ten times a second (gRPC's pollers), a parked one never.
    window_ends = time.monotonic() + 2.0
    while time.monotonic() < window_ends:
        assert frozen(pid) and wake_ups(pid) == before
        time.sleep(0.1)


def test_a_message_thaws_a_parked_worker_and_it_parks_again(parking_supervisor):
    sup = parking_supervisor
    sup.deploy("counter", "counter")
    pid = sup.worker_pids()[0]
    for round_ in range(3):
        wait_until(lambda: frozen(pid), 10, f"the worker to be parked (round {round_})")
        reply = sup.send("counter", b"tick", timeout=10)
        assert reply.reply.content  # the same worker answered, in order
    assert sup.worker_pids() == [pid]


def test_status_and_scrapes_of_a_parked_agent_do_not_wake_it(parking_supervisor):
    sup = parking_supervisor
    sup.deploy("echo", "echo")
    assert sup.send("echo", b"hi").reply.content == b"hi"
    pid = sup.worker_pids()[0]
    wait_until(lambda: frozen(pid), 10, "the worker to be parked")
    # Parked before anyone asked for its figures since the message: the
    # first status thaws it once to ask.
    assert sup.status("echo").instances[0].messages == 1
    wait_until(lambda: frozen(pid), 10, "the worker to be parked again")
    for _ in range(3):
        status = sup.status("echo")
        sup.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=10)
        # The figures it gave last: it has not run since.
        assert status.state == caxton_pb2.AGENT_STATE_RUNNING
        assert status.instances[0].memory_bytes > 0 and status.instances[0].messages == 1
        assert frozen(pid)


def test_parked_workers_stop_and_drain_on_shutdown(parking_supervisor):
    sup = parking_supervisor
    for name in ("a", "b"):
        sup.deploy(name, "echo")
    pids = sup.worker_pids()
    for pid in pids:
        wait_until(lambda pid=pid: frozen(pid), 10, "every worker parked")
    sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="a"), timeout=10)
    assert sup.status("a").state == caxton_pb2.AGENT_STATE_STOPPED
    assert sup.stop(timeout=30) == 0
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_parked_worker_killed_from_outside_is_restarted(parking_supervisor):
    sup = parking_supervisor
    sup.deploy("echo", "echo")
    pid = sup.worker_pids()[0]
    wait_until(lambda: frozen(pid), 10, "the worker to be parked")
    psutil.Process(pid).kill()
    wait_until(lambda: sup.worker_pids() and sup.worker_pids() != [pid], 20, "a new worker")
    assert sup.send("echo", b"again", timeout=10).reply.content == b"again"


_SYS_PIDFD_GETFD = 438  # the same number on every architecture
_libc = ctypes.CDLL(None, use_errno=True)


def _socket_peers(pid: int) -> Counter[int]:
    """How many Unix sockets process `pid` holds to each peer process (by
    SO_PEERCRED, read from a copy of each descriptor: pidfd_getfd). Counted
    by peer, because the supervisor's sockets also include ones it is still
    closing, whatever the moment they are counted."""
    peers: Counter[int] = Counter()
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            copy = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if copy < 0:
                continue  # closed while we looked
            try:
                sock = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)  # not a socket
                continue
            with sock:
                if sock.family == socket.AF_UNIX:
                    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                    peers[struct.unpack("3i", cred)[0]] += 1
    finally:
        os.close(pidfd)
    return peers


def _settled(sup, agents: int) -> bool:
    """Every agent's worker parked, and the spare pool full again."""
    workers = sup.worker_pids()
    spares = set(worker_pids_of(sup.pid, include_spares=True)) - set(workers)
    return len(workers) == agents and len(spares) == SPARES and all(frozen(pid) for pid in workers)


def test_a_parked_worker_keeps_one_socket_of_the_supervisor_however_it_started(parking_supervisor):
    """A parked worker needs no channel from the API loop (about 57 KiB of
    the supervisor's and a socket each): only its control channel stays. A
    worker that came from the spare pool with that channel connected ahead
    and its stream open once kept both for life, because the pool's exit
    callback held the spare."""
    sup = parking_supervisor
    for name in ("first", "second"):
        wait_until(lambda: _settled(sup, len(sup.worker_pids())), 20, "the spare pool to refill")
        sup.deploy(name, "echo")
    for n in range(4):
        # Each from the pool: wait until it has its spares again.
        wait_until(lambda n=n: _settled(sup, 2 + n), 20, "the spare pool to refill")
        sup.deploy(f"more-{n}", "echo")
        assert sup.send(f"more-{n}", b"hi").reply.content == b"hi"
    wait_until(lambda: _settled(sup, 6) and all(_socket_peers(sup.pid)[pid] == 1 for pid in sup.worker_pids()),
               20, "one socket of the supervisor's per parked worker")
