"""The worker's system-call filter and network namespace.

The filter itself is checked in a throwaway interpreter (the real kernel,
the real libseccomp, no supervisor): what it allows, refuses and kills. Then
real workers: /proc says they are filtered, unprivileged and in a network
namespace of their own, status names those layers, and the config flag
turns the filter off.
"""

from __future__ import annotations

import ctypes.util
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from .harness import ROOT as REPO

ROOT = os.geteuid() == 0
HAVE_LIBSECCOMP = ctypes.util.find_library("seccomp") is not None
needs_libseccomp = pytest.mark.skipif(not HAVE_LIBSECCOMP, reason="libseccomp (libseccomp.so.2) is not installed")
needs_root = pytest.mark.skipif(not ROOT, reason="network namespaces and another uid need a root supervisor")

# Runs in a fresh interpreter under the worker's filter; prints one line per
# check, "name outcome".
_UNDER_FILTER = textwrap.dedent("""
    import errno, os, socket, sys, threading
    from caxton.worker import seccomp

    def outcome(action):
        try:
            action()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "ok"

    def new_thread():
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()

    def fork():
        if os.fork() == 0:
            os._exit(0)

    tmp = sys.argv[1]
    seccomp.install(seccomp.rules(os.getpid()))
    checks = {
        "unix-socket": lambda: socket.socket(socket.AF_UNIX).close(),
        "tcp-socket": lambda: socket.socket(socket.AF_INET).close(),
        "udp6-socket": lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close(),
        "read-open": lambda: open("/proc/self/status").close(),
        "write-open": lambda: open(os.path.join(tmp, "w"), "w").close(),
        "append-existing": lambda: open(os.path.join(tmp, "existing"), "a").close(),
        "thread": new_thread,
        "fork": fork,
        "kill-self": lambda: os.kill(os.getpid(), 0),
        "kill-parent": lambda: os.kill(os.getppid(), 0),
        "setuid": lambda: os.setuid(0),
    }
    for name, action in checks.items():
        print(name, outcome(action), flush=True)
    if len(sys.argv) > 2:
        import ctypes
        print("hostile", sys.argv[2], flush=True)
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.argv[2] == "unshare":
            libc.unshare(0x40000000)
        else:
            libc.ptrace(16, os.getppid(), None, None)
        print("survived", flush=True)
""")


def _under_filter(tmp_path, *hostile: str) -> subprocess.CompletedProcess:
    (tmp_path / "existing").write_text("")
    return subprocess.run([sys.executable, "-c", _UNDER_FILTER, str(tmp_path), *hostile], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


@needs_libseccomp
def test_the_filter_allows_what_a_worker_needs_and_refuses_the_rest(tmp_path):
    result = _under_filter(tmp_path)
    assert result.returncode == 0, result.stderr
    outcomes = dict(line.split() for line in result.stdout.splitlines())
    assert outcomes == {
        "unix-socket": "ok",
        "tcp-socket": "EPERM",
        "udp6-socket": "EPERM",
        "read-open": "ok",
        "write-open": "EPERM",
        "append-existing": "EPERM",
        "thread": "ok",
        "fork": "EPERM",
        "kill-self": "ok",
        "kill-parent": "EPERM",
        "setuid": "EPERM",
    }
    assert not (tmp_path / "w").exists()


@needs_libseccomp
@pytest.mark.parametrize("call", ["unshare", "ptrace"])
def test_hostile_calls_kill_the_process(tmp_path, call):
    result = _under_filter(tmp_path, call)
    assert result.returncode == -signal.SIGSYS, (result.returncode, result.stdout, result.stderr)
    assert f"hostile {call}" in result.stdout and "survived" not in result.stdout


# A filter prepared ahead (as a spare worker does, worker/server.py) names the
# pid it was built in. Prints, per process, what apply() said and whether it
# may still signal itself and its parent.
_PREPARED = textwrap.dedent("""
    import errno, os, sys
    from caxton.worker import seccomp

    def may_signal(pid):
        try:
            os.kill(pid, 0)
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "ok"

    def filtered():
        return [l for l in open("/proc/self/status") if l.startswith("Seccomp:")][0].split()[1]

    seccomp.prepare()
    child = os.fork()
    if child == 0:
        # The parent's filter names the parent: the child builds its own.
        print("child", seccomp.apply(True), may_signal(os.getpid()), may_signal(os.getppid()), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    if sys.argv[1] == "off":
        print("parent", seccomp.apply(False), filtered(), flush=True)
    else:
        print("parent", seccomp.apply(True), may_signal(os.getpid()), may_signal(os.getppid()), flush=True)
""")


@needs_libseccomp
@pytest.mark.parametrize("parent", ["on", "off"])
def test_a_prepared_filter_is_loaded_only_by_the_process_it_was_built_for(parent):
    result = subprocess.run([sys.executable, "-c", _PREPARED, parent], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "child ['os:seccomp'] ok EPERM"
    assert lines[1] == ("parent ['os:seccomp'] ok EPERM" if parent == "on" else "parent [] 0")


def test_without_libseccomp_the_worker_serves_and_says_so():
    # In a child: had the stand-in failed, the filter would land on pytest.
    script = textwrap.dedent("""
        import ctypes.util
        ctypes.util.find_library = lambda name: "libseccomp-missing.so.9"
        from caxton.worker import seccomp
        seccomp._SONAME = "libseccomp-missing.so.9"
        print(seccomp.apply(True), seccomp.apply(True), seccomp.apply(False))
        print([l for l in open("/proc/self/status") if l.startswith("Seccomp:")][0].split()[1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    warning = "['os:seccomp-unavailable(libseccomp not found)']"
    assert result.stdout.splitlines() == [f"{warning} {warning} []", "0"]
    # Logged once, however many times it is asked.
    assert result.stderr.count("no system-call filter for this worker: libseccomp not found") == 1


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@needs_libseccomp
def test_a_worker_is_filtered_before_agent_code_runs(shared_supervisor):
    sup = shared_supervisor
    status = sup.deploy("filtered", "echo")
    pid = status.instances[0].pid
    layers = set(status.instances[0].enforcement)
    assert "os:seccomp" in layers, layers
    proc = _status(pid)
    assert proc["Seccomp"].strip() == "2"
    assert proc["NoNewPrivs"].strip() == "1"
    # Every thread, including those that existed before the filter (TSYNC).
    for tid in os.listdir(f"/proc/{pid}/task"):
        assert _status(int(tid))["Seccomp"].strip() == "2", f"thread {tid} is not filtered"
    assert sup.send("filtered", b"through the filter").reply.content == b"through the filter"


@needs_libseccomp
@needs_root
def test_a_worker_has_no_capabilities_and_no_network(shared_supervisor):
    sup = shared_supervisor
    status = sup.deploy("netless", "echo")
    pid = status.instances[0].pid
    layers = set(status.instances[0].enforcement)
    assert {"os:seccomp", "os:netns"} <= layers, layers
    assert any(layer.startswith("os:uid=") for layer in layers), layers
    proc = _status(pid)
    assert proc["CapEff"].strip() == "0000000000000000"
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink(f"/proc/{sup.pid}/ns/net")
    # Only a downed loopback in there.
    interfaces = [line.split(":")[0].strip() for line in open(f"/proc/{pid}/net/dev").read().splitlines()[2:]]
    assert interfaces == ["lo"]


@needs_libseccomp
def test_the_filter_can_be_turned_off(supervisor):
    sup = supervisor("[sandbox]\nsyscall_filter = false\n")
    status = sup.deploy("unfiltered", "echo")
    assert not any("seccomp" in layer for layer in status.instances[0].enforcement)
    assert _status(status.instances[0].pid)["Seccomp"].strip() == "0"
    assert sup.send("unfiltered", b"hi").reply.content == b"hi"
