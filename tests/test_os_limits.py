"""The OS layer around each worker: identity, rlimits, cgroups, OOM kills."""

from __future__ import annotations

import os

import grpc
import psutil
import pytest

from caxton.v1 import caxton_pb2

from .harness import wait_until

ROOT = os.geteuid() == 0
CGROUP_V1_MEMORY = (os.access("/sys/fs/cgroup/memory", os.W_OK)
                    and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"))


def rlimit(pid: int, name: str) -> tuple[int, int]:
    """(soft, hard) from /proc/PID/limits: reading another user's limits
    with prlimit needs CAP_SYS_RESOURCE, which a container may not grant."""
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith(name):
            soft, hard = line[len(name):].split()[:2]
            return tuple(-1 if v == "unlimited" else int(v) for v in (soft, hard))
    raise KeyError(name)


def test_status_lists_the_enforcement_layers(shared_supervisor):
    sup = shared_supervisor
    status = sup.deploy("layers", "echo")
    layers = set(status.instances[0].enforcement)
    assert {"wasm:memory-limit", "wasm:fuel", "wasm:epoch-timeout"} <= layers
    assert {"os:parent-death-signal", "os:no-new-privs",
            "os:rlimit-core", "os:rlimit-data", "os:rlimit-nofile"} <= layers


@pytest.mark.skipif(not ROOT, reason="switching workers to an unprivileged user needs a root supervisor")
def test_workers_run_as_the_configured_user_when_the_uid_range_is_off(supervisor):
    # The default gives each worker a uid of its own (test_worker_identity.py).
    status = supervisor('[sandbox]\nuid_range = ""\n').deploy("unprivileged", "echo")
    worker = psutil.Process(status.instances[0].pid)
    assert f"os:uid={worker.uids().real}" in status.instances[0].enforcement
    assert worker.uids().real != 0 and worker.uids().effective != 0
    assert worker.username() == "nobody"
    # The parent-death signal was re-armed after the switch (credential
    # changes clear it): the worker still dies with its supervisor, which
    # test_forkserver and test_agent_lifecycle check by SIGKILLing it.
    assert rlimit(worker.pid, "Max open files") == (256, 256)


def test_worker_rlimits_follow_the_config(supervisor):
    sup = supervisor('[sandbox]\nopen_files = 100\ncpu_seconds = 3600\nuser = ""\nuid_range = ""\n')
    status = sup.deploy("rlimited", "echo")
    worker = psutil.Process(status.instances[0].pid)
    assert rlimit(worker.pid, "Max open files") == (100, 100)
    assert rlimit(worker.pid, "Max cpu time") == (3600, 3601)
    assert rlimit(worker.pid, "Max core file size") == (0, 0)
    soft, hard = rlimit(worker.pid, "Max data size")
    assert soft == hard and soft > 64 << 20
    assert "os:rlimit-cpu" in status.instances[0].enforcement
    assert not any(layer.startswith("os:uid") for layer in status.instances[0].enforcement)
    assert sup.send("rlimited", b"fine").reply.content == b"fine"


@pytest.mark.skipif(not (ROOT and CGROUP_V1_MEMORY),
                    reason="needs writable cgroup v1 memory, cpu and pids controllers (root); "
                    "cgroup v2 needs a host where systemd delegates a subtree, which this machine does not have")
def test_each_worker_gets_its_own_cgroup_v1(shared_supervisor):
    status = shared_supervisor.deploy("cgrouped", "echo", memory_bytes=32 << 20)
    pid = status.instances[0].pid
    assert {"cgroup-v1:memory", "cgroup-v1:cpu", "cgroup-v1:pids"} <= set(status.instances[0].enforcement)
    lines = dict(line.split(":", 2)[1:] for line in open(f"/proc/{pid}/cgroup").read().splitlines())
    memory_dir = "/sys/fs/cgroup/memory" + lines["memory"]
    assert f"caxton-{shared_supervisor.pid}/w" in memory_dir
    limit = int(open(f"{memory_dir}/memory.limit_in_bytes").read())
    assert limit == (32 << 20) + (192 << 20)
    assert int(open("/sys/fs/cgroup/pids" + lines["pids"] + "/pids.max").read()) == 64


@pytest.mark.skipif(not (ROOT and CGROUP_V1_MEMORY), reason="needs a writable cgroup v1 memory controller (root)")
def test_kernel_oom_kill_is_reported_as_such(supervisor):
    # Give the worker process nothing beyond the agent's own memory limit:
    # an agent that fills all the linear memory it is allowed then pushes
    # the worker (which needs a few MiB of its own) past its cgroup limit,
    # and the kernel kills it.
    # The worker comes from the spare pool: a spare is born in a cgroup of
    # its own, which gets the agent's limit when it is taken, so all of the
    # worker's memory counts, its start-up memory included.
    sup = supervisor('[sandbox]\nmemory_overhead = "0"\n')
    sup.deploy("hog-os", "hog", memory_bytes=512 << 20, timeout_ms=30_000)
    sup.deploy("hog-neighbour", "echo")
    with pytest.raises(grpc.RpcError) as info:
        sup.send("hog-os", b"511", timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "OOM killer" in info.value.details()
    # The restart policy brings it back, and status says what happened.
    status = wait_until(lambda: (s := sup.status("hog-os")).instances and s, 10, "the agent to be restarted")
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING and status.restarts == 1
    assert "OOM killer" in status.recent_failures[-1].reason
    assert "cgroup memory limit" in status.recent_failures[-1].reason
    assert sup.send("hog-os", b"1").reply.content == b"ok"
    # The supervisor and the neighbour are fine.
    assert sup.send("hog-neighbour", b"still here").reply.content == b"still here"
