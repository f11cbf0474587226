"""The installed product: one `caxton` import package, safe beside supervisord,
and workers that never import from the directory the supervisor started in.

The first test installs the project (not editable) into a fresh virtual
environment next to `supervisor` (supervisord's distribution, which owns the
top-level import name `supervisor`), then runs the installed supervisor with
the example agents from an unrelated directory. The project's own runtime
dependencies are borrowed from the test environment through a `.pth` line,
so the test does not download wasmtime and grpc again.
"""

from __future__ import annotations

import os
import select
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import ROOT, alive, wait_until, worker_pids_of

START_TIMEOUT_S = 60.0


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("the installed supervisor did not report its port in time")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the installed supervisor exited with {proc.wait()} while starting")
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if "listening on " in line:
                return int(line.rsplit(":", 1)[1])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def _run_supervisor(bin_dir: Path, cwd: Path, state: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [str(bin_dir / "caxton-supervisor"), "--listen", "127.0.0.1:0", "--state-dir", str(state), *extra],
            cwd=cwd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
        )
    try:
        return proc, _read_port(proc, START_TIMEOUT_S)
    except BaseException:
        _stop(proc)
        raise


def _send(bin_dir: Path, address: str, agent: str, text: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "caxton"), "--address", address, "--token-file", str(state / "admin.token"),
                           "send", agent, text], capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def test_pip_install_beside_supervisord_runs_the_examples(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The runtime dependencies, borrowed (a .pth line adds the directory but
    # runs none of its .pth files, so the editable `caxton` stays out).
    Path(purelib, "borrowed-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    supervisord = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "supervisor"],
        capture_output=True, text=True, timeout=300,
    )
    if supervisord.returncode != 0:
        pytest.skip(f"cannot install supervisord from the package index here: {supervisord.stderr[-300:]}")
    subprocess.run(
        # Built in isolation: the test environment's own setuptools may be older
        # than the build needs (the index is reachable: supervisord came from it).
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    # Both packages import, each as itself.
    probe = subprocess.run(
        [str(python), "-I", "-c",
         "import supervisor.supervisord, caxton.supervisor.runtime, caxton.worker.sandbox, caxton.client.cli, caxton;"
         "print(caxton.__file__)"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(purelib), "caxton must come from the installed copy, not the checkout"

    bin_dir = venv / "bin"
    version = subprocess.run([str(bin_dir / "caxton-supervisor"), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("caxton-supervisor ")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc, port = _run_supervisor(bin_dir, elsewhere, elsewhere / "state", tmp_path / "installed.log",
                                 "--deploy-examples")
    try:
        result = _send(bin_dir, f"127.0.0.1:{port}", "uppercase", "installed", elsewhere / "state")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"INSTALLED"
        workers = worker_pids_of(proc.pid)
        # One worker per example agent, from the installed package data.
        assert len(workers) == len(list((ROOT / "examples" / "agents").glob("*.wat")))
    finally:
        _stop(proc)
    wait_until(lambda: not any(alive(pid) for pid in workers), 10, "the installed supervisor's workers to exit")


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_planted_module_in_the_start_directory_never_runs(tmp_path, mode):
    """A `worker.py` or `caxton/` package in the directory the supervisor
    starts in must not run in place of the worker or the fork server."""
    planted = tmp_path / "start-here"
    marker = tmp_path / "planted-code-ran"
    trap = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\nraise SystemExit(99)\n"
    for path in ("worker.py", "worker/__init__.py", "worker/__main__.py", "caxton/__init__.py",
                 "caxton/worker/__init__.py", "caxton/worker/__main__.py", "caxton/worker/forkserver.py"):
        (planted / path).parent.mkdir(parents=True, exist_ok=True)
        (planted / path).write_text(trap)
    (planted / "config.toml").write_text(f'worker_start = "{mode}"\n')
    bin_dir = Path(sys.executable).parent
    proc, port = _run_supervisor(bin_dir, planted, tmp_path / "state", tmp_path / "planted.log",
                                 "--config", "config.toml", "--deploy-examples")
    try:
        result = _send(bin_dir, f"127.0.0.1:{port}", "echo", "still ours", tmp_path / "state")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"still ours"
        assert not marker.exists(), f"planted code ran: {marker.read_text()}"
    finally:
        _stop(proc)
