"""One uid per worker: each live worker (and spare) holds a uid of its own
from `[sandbox] uid_range`, given back only once its holder is reaped."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import threading

import grpc
import pytest

from caxton.supervisor.launcher import Launcher
from caxton.supervisor.uids import UidAllocator, UidsExhausted
from caxton.v1 import caxton_pb2

from .harness import alive, wait_until

ROOT = os.geteuid() == 0
NEEDS_ROOT = pytest.mark.skipif(not ROOT, reason="workers switch to a uid of their own only under a root supervisor")
START_TIMEOUT = 20.0


def ids(pid: int, field: str) -> list[int]:
    """The real, effective, saved and filesystem ids from /proc/PID/status."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(f"{field}:"):
            return [int(value) for value in line.split()[1:]]
    raise KeyError(field)


def groups(pid: int) -> list[str]:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Groups:"):
            return line.split()[1:]
    raise KeyError("Groups")


# ------------------------------------------------------------ the launcher in-process


class RecordingUids(UidAllocator):
    """Remembers, at each release, whether the holder's pid still existed
    (alive or an unreaped zombie)."""

    def __init__(self, first: int, last: int):
        super().__init__(first, last)
        self.holders: dict[int, int] = {}  # uid -> pid, filled in by the test
        self.released: list[tuple[int, bool]] = []
        self.released_event = threading.Event()

    def release(self, uid: int) -> None:
        pid = self.holders.get(uid)
        self.released.append((uid, pid is not None and os.path.exists(f"/proc/{pid}")))
        super().release(uid)
        self.released_event.set()


@pytest.fixture
def runtime_dir():
    path = tempfile.mkdtemp(prefix="cx-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_uid_is_given_back_only_after_its_worker_is_reaped(runtime_dir, mode):
    uids = RecordingUids(620000, 620000)  # room for one worker
    launcher = Launcher(runtime_dir, mode=mode, uids=uids)
    try:
        first = launcher.spawn(START_TIMEOUT)
        assert first.uid == 620000
        uids.holders[first.uid] = first.pid
        with pytest.raises(UidsExhausted, match="sandbox.uid_range"):
            launcher.spawn(START_TIMEOUT)
        assert uids.held == 1 and uids.released == []
        first.kill()
        assert first.wait_exit(10) is not None
        assert uids.released_event.wait(10)
        # Released once, and only when no process with that pid was left
        # (not even a zombie): it had been reaped.
        assert uids.released == [(620000, False)]
        second = launcher.spawn(START_TIMEOUT)
        assert second.uid == 620000 and second.pid != first.pid
    finally:
        launcher.close()
    assert uids.held == 0


def test_a_failed_start_gives_its_uid_back(runtime_dir):
    uids = UidAllocator(620010, 620010)
    launcher = Launcher(runtime_dir, mode="exec", python="/nonexistent/python", uids=uids)
    try:
        for _ in range(3):
            with pytest.raises(Exception, match="cannot start worker"):
                launcher.spawn(START_TIMEOUT)
            assert uids.held == 0
    finally:
        launcher.close()


def test_without_a_range_workers_get_no_uid_of_their_own(runtime_dir):
    launcher = Launcher(runtime_dir, mode="exec")
    try:
        worker = launcher.spawn(START_TIMEOUT)
        assert worker.uid == -1
        assert ids(worker.pid, "Gid") == [os.getgid()] * 4
    finally:
        launcher.close()


@NEEDS_ROOT
@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_worker_takes_its_group_at_start_and_stays_root_until_load(runtime_dir, mode):
    launcher = Launcher(runtime_dir, mode=mode, uids=UidAllocator(620020, 620020))
    try:
        worker = launcher.spawn(START_TIMEOUT)
        assert worker.uid == 620020
        # The gid of its uid's number, and no supplementary group, before
        # any thread of its own started (see worker/limits.py take_group)...
        assert ids(worker.pid, "Gid") == [620020] * 4
        assert groups(worker.pid) == []
        # ...but still root: Load compiles and caches the module first.
        assert ids(worker.pid, "Uid") == [0] * 4
    finally:
        launcher.close()


@NEEDS_ROOT
@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_without_a_uid_of_its_own_a_worker_takes_the_configured_group_at_start(runtime_dir, mode):
    nobody = pwd.getpwnam("nobody")
    launcher = Launcher(runtime_dir, mode=mode, gid=nobody.pw_gid)
    try:
        worker = launcher.spawn(START_TIMEOUT)
        assert worker.uid == -1
        assert ids(worker.pid, "Gid") == [nobody.pw_gid] * 4
        assert groups(worker.pid) == []
        assert ids(worker.pid, "Uid") == [0] * 4
    finally:
        launcher.close()


# ------------------------------------------------------------ real supervisors


@NEEDS_ROOT
def test_each_live_worker_runs_as_a_uid_of_its_own(shared_supervisor):
    sup = shared_supervisor
    statuses = [sup.deploy(f"uid-own-{n}", "echo") for n in range(4)]
    seen = set()
    for status in statuses:
        pid = status.instances[0].pid
        uid = ids(pid, "Uid")
        gid = ids(pid, "Gid")
        assert len(set(uid)) == 1 and uid == gid, (uid, gid)  # real, effective, saved, fs; gid the same number
        assert 600000 <= uid[0] <= 665535
        assert groups(pid) == []
        assert f"os:uid={uid[0]}" in status.instances[0].enforcement
        seen.add(uid[0])
    assert len(seen) == 4


@NEEDS_ROOT
def test_the_range_bounds_live_workers_and_a_uid_is_reused_after_its_worker_is_reaped(supervisor):
    sup = supervisor('worker_pool = 0\n[sandbox]\nuid_range = "630000-630001"\n')
    first = sup.deploy("uid-a", "echo").instances[0].pid
    second = sup.deploy("uid-b", "echo").instances[0].pid
    assert {ids(first, "Uid")[0], ids(second, "Uid")[0]} == {630000, 630001}
    held_by_first = ids(first, "Uid")[0]
    with pytest.raises(grpc.RpcError) as refused:
        sup.deploy("uid-c", "echo")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "sandbox.uid_range (630000-630001)" in refused.value.details()
    assert "/" not in refused.value.details().split("sandbox.uid_range")[0]  # no host paths
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name="uid-a"), timeout=30)
    wait_until(lambda: not alive(first), 10, "the first worker to be reaped")
    # The exit callback that gives the uid back runs just after the reaping.

    def deploy_when_a_uid_is_free() -> caxton_pb2.AgentStatus | None:
        try:
            return sup.deploy("uid-d", "echo")
        except grpc.RpcError as exc:
            if "sandbox.uid_range" in (exc.details() or ""):
                return None
            raise
    status = wait_until(deploy_when_a_uid_is_free, 10, "a deploy once the first worker's uid is free")
    assert ids(status.instances[0].pid, "Uid")[0] == held_by_first
    assert sup.send("uid-d", b"still works").reply.content == b"still works"


@NEEDS_ROOT
def test_with_the_range_off_every_worker_runs_as_the_configured_user(supervisor):
    sup = supervisor('[sandbox]\nuid_range = ""\nuser = "nobody"\n')
    pids = [sup.deploy(f"uid-off-{n}", "echo").instances[0].pid for n in range(2)]
    nobody = pwd.getpwnam("nobody")
    assert [ids(pid, "Uid")[0] for pid in pids] == [nobody.pw_uid, nobody.pw_uid]
    assert [ids(pid, "Gid") for pid in pids] == [[nobody.pw_gid] * 4] * 2
    assert [groups(pid) for pid in pids] == [[], []]
