"""A worker process of its own, with no supervisor: started the way the
launcher's exec mode starts one, talked to only through a WorkerClient (the
`worker` and `client` fixtures, for the tests of the supervisor's side of
the worker protocol: test_worker_client.py, test_loop_delivery.py)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import wasmtime

from caxton.supervisor.config import Limits
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.worker_client import WorkerClient, WorkerOsLimits

from .harness import module

START_TIMEOUT_S = 30.0
MIB = 1 << 20


class Worker:
    """A worker process started the way the launcher's exec mode does."""

    def __init__(self, tmp_path: Path):
        self.socket_path = str(tmp_path / "w.sock")
        ready_r, ready_w = os.pipe()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-m", "caxton.worker", "--socket", self.socket_path,
                 "--ready-fd", str(ready_w), "--parent-pid", str(os.getpid())],
                pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
        try:
            readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT_S)
            assert readable and os.read(ready_r, 64).startswith(b"ready"), "the worker did not start"
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(ready_r)
        self.pid = self.popen.pid

    def load(self, client: WorkerClient, module_name: str, tmp_path: Path, **limits) -> None:
        wasm = tmp_path / f"{module_name}.wasm"
        wasm.write_bytes(wasmtime.wat2wasm(module(module_name).decode()))
        result = client.load(str(wasm), "", Limits(**{"memory_bytes": 16 * MIB, **limits}), WorkerOsLimits(),
                             Deadline.after(START_TIMEOUT_S))
        assert result.error == "" and result.init_code == 0

    def cpu_s(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait(START_TIMEOUT_S)


@pytest.fixture
def worker(tmp_path):
    started = Worker(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def client(worker):
    connected = WorkerClient(worker.socket_path, "slow", 1)
    yield connected
    connected.close()
