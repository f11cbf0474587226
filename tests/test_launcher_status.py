"""ExitStatus.describe (supervisor/process.py): how a worker's end is worded."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from caxton.supervisor.process import ExitStatus


@pytest.mark.parametrize(
    "returncode, text",
    [
        (0, "exited with status 0"),
        (1, "exited with status 1"),
        (3, "exited with status 3"),
        (255, "exited with status 255"),
    ],
)
def test_exit_codes(returncode, text):
    status = ExitStatus(returncode)
    assert status.signal is None
    assert status.describe() == text


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGINT, signal.SIGXCPU],
)
def test_signals(sig):
    status = ExitStatus(-int(sig))
    assert status.signal == int(sig)
    assert status.describe() == f"killed by {sig.name}"


def test_sigkill_exact():
    assert ExitStatus(-9).describe() == "killed by SIGKILL"


def test_unknown_signal_number():
    assert ExitStatus(-200).describe() == "killed by signal 200"


def test_is_frozen_and_comparable():
    assert ExitStatus(3) == ExitStatus(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExitStatus(3).returncode = 4  # type: ignore[misc]


def test_wait_ready_handles_descriptors_past_select_limit():
    """A supervisor with hundreds of agents holds descriptors numbered past
    1024, where select() fails; readiness must still be seen."""
    import os
    import resource

    from caxton.supervisor.process import WorkerProcess

    high = 1500
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= high:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (high + 10, max(high + 10, hard)))
    read_end, write_end = os.pipe()
    os.dup2(read_end, high)
    os.close(read_end)
    try:
        os.write(write_end, b"ready\n")
        WorkerProcess(os.getpid(), "/nonexistent.sock", high).wait_ready(timeout=2)
        with pytest.raises(OSError):
            os.fstat(high)  # wait_ready closed it
    finally:
        os.close(write_end)
