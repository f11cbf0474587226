"""The runtime directory: a killed supervisor's is swept by the next start;
a live one's never is; a configured one is used by one supervisor at a time.

The sweep is exercised on a private parent directory (never /tmp itself,
where other supervisors of the suite are running), except in the end-to-end
test, which sweeps /tmp as a real start does and checks only the directory
of the supervisor it killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from caxton.supervisor.runtime_dir import LOCK_NAME, RuntimeDirectory, sweep_stale
from caxton.supervisor.settings import ConfigError
from tests.harness import SupervisorProcess, module


def test_a_killed_supervisors_directory_is_removed_when_the_next_one_starts(tmp_path):
    first = SupervisorProcess(tmp_path / "first", config='worker_start = "fork"\n').start()
    try:
        left = first.runtime_dir
        assert left.startswith("/tmp/caxton-") and os.path.exists(os.path.join(left, LOCK_NAME))
        os.kill(first.proc.pid, signal.SIGKILL)  # no chance to clean up (not the harness's kill)
        first.proc.wait(10)
        assert os.path.isdir(left)
        second = SupervisorProcess(tmp_path / "second", config='worker_start = "fork"\n').start()
        try:
            assert not os.path.exists(left)
            assert f"removed {left}, the runtime directory of a supervisor that did not stop cleanly" in \
                second.log_text()
            # A third start leaves the live second one's directory, which
            # goes on serving.
            third = SupervisorProcess(tmp_path / "third", config='worker_start = "fork"\n').start()
            third.stop()
            assert os.path.isdir(second.runtime_dir)
            second.deploy("echo", wasm=module("echo"))
            assert second.send("echo", b"still here").reply.content == b"still here"
        finally:
            second.stop()
        assert not os.path.exists(second.runtime_dir)
    finally:
        first.kill()


def _holder(directory: str) -> subprocess.Popen:
    """Another process holding `directory`'s lock, as a live supervisor does."""
    code = textwrap.dedent(f"""
        import sys
        from caxton.supervisor.runtime_dir import RuntimeDirectory
        held = RuntimeDirectory.open({directory!r})
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()


def test_the_sweep_takes_only_unlocked_directories_of_ours(tmp_path):
    parent = tmp_path / "tmp"
    parent.mkdir()
    dead = RuntimeDirectory.open("", parent=str(parent))
    os.close(dead._lock_fd)  # its supervisor died: the kernel let the lock go
    dead._lock_fd = -1
    alive = parent / "caxton-alive"
    holder = _holder(str(alive))
    unlocked_but_no_lock_file = parent / "caxton-old"
    unlocked_but_no_lock_file.mkdir()
    not_ours_by_name = parent / "other-thing"
    not_ours_by_name.mkdir()
    (not_ours_by_name / LOCK_NAME).write_text("1\n")
    try:
        assert sweep_stale(str(parent)) == [dead.path]
        assert sorted(p.name for p in parent.iterdir()) == ["caxton-alive", "caxton-old", "other-thing"]
    finally:
        _end(holder)
    # Once its holder has ended, the live one's goes at the next sweep.
    assert sweep_stale(str(parent)) == [str(alive)]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another uid needs root")
def test_the_sweep_leaves_another_users_directory(tmp_path):
    parent = tmp_path / "tmp"
    parent.mkdir()
    theirs = RuntimeDirectory.open("", parent=str(parent))
    os.close(theirs._lock_fd)
    theirs._lock_fd = -1
    os.chown(theirs.path, 65534, 65534)
    assert sweep_stale(str(parent)) == []
    assert os.path.isdir(theirs.path)


def test_a_configured_directory_in_use_is_refused_with_its_holder_named(tmp_path):
    configured = str(tmp_path / "run")
    holder = _holder(configured)
    try:
        with pytest.raises(ConfigError) as refused:
            RuntimeDirectory.open(configured)
        assert str(refused.value) == f"runtime_dir: {configured} is in use by another supervisor (pid {holder.pid})"
    finally:
        _end(holder)
    # Free again (its holder ended without closing): taken, kept on close.
    taken = RuntimeDirectory.open(configured)
    taken.close()
    assert os.path.isdir(configured)


def test_a_second_supervisor_on_the_same_configured_directory_exits_saying_why(tmp_path):
    config = f'worker_start = "fork"\nruntime_dir = "{tmp_path / "run"}"\n'
    first = SupervisorProcess(tmp_path / "first", config=config).start()
    try:
        second = SupervisorProcess(tmp_path / "second", config=config)
        with pytest.raises(AssertionError, match="exited with 1 while starting"):
            second.start(timeout=30)
        assert f"runtime_dir: {tmp_path / 'run'} is in use by another supervisor (pid {first.proc.pid})" in \
            second.log_text()
        # The first one's sockets were left alone: it still serves.
        first.deploy("echo", wasm=module("echo"))
        assert first.send("echo", b"mine").reply.content == b"mine"
    finally:
        first.stop()
