"""A supervisor that cannot start says why in one line, exits 1, and leaves
nothing behind: no traceback, no worker-socket directory in /tmp, no fork
server or worker."""

from __future__ import annotations

import glob
import socket
import subprocess
import sys

import psutil
import pytest

from .harness import ROOT, wait_until


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _children_of(pid: int) -> list[int]:
    """Processes started for the supervisor `pid` (the fork server and
    workers name it with --parent-pid), alive now."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "--parent-pid" in cmdline and str(pid) in cmdline:
            found.append(proc.pid)
    return found


def _start(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run a supervisor that is expected to fail; returns its result and the
    /tmp/caxton-* directories that appeared meanwhile."""
    before = set(glob.glob("/tmp/caxton-*"))
    proc = subprocess.Popen([sys.executable, "-m", "caxton.supervisor", "--state-dir", str(tmp_path / "state"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The fork server and spares die with it (the parent-death signal).
    wait_until(lambda: not _children_of(proc.pid), 10, "the failed supervisor's children to end")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), \
        set(glob.glob("/tmp/caxton-*")) - before


@pytest.mark.parametrize("flag", ["--listen", "--health-listen"])
def test_an_address_in_use_is_one_line_and_leaves_nothing(tmp_path, flag):
    taken = _listening_socket()
    try:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [flag, address] if flag == "--listen" else ["--listen", "127.0.0.1:0", flag, address]
        result, left = _start(tmp_path, *args)
    finally:
        taken.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    suffix = "" if flag == "--listen" else " (health_listen)"
    assert lines[-1] == f"caxton-supervisor: cannot listen on {address}{suffix}"
    assert left == set()
