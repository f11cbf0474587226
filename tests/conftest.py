"""Fixtures that start real supervisors, and a final check for orphans."""

from __future__ import annotations

import pytest

from .harness import SupervisorProcess, leftover_workers, wait_until


@pytest.fixture(scope="session")
def shared_supervisor(tmp_path_factory):
    """One supervisor for the tests that only deploy and message; each test
    uses agent names of its own."""
    supervisor = SupervisorProcess(tmp_path_factory.mktemp("shared") / "state").start()
    yield supervisor
    supervisor.stop()


@pytest.fixture
def supervisor(tmp_path):
    """A fresh supervisor for a test that restarts, kills or configures it."""
    started: list[SupervisorProcess] = []

    def make(config: str | None = None, state_dir=None) -> SupervisorProcess:
        sup = SupervisorProcess(state_dir or tmp_path / f"state{len(started)}", config=config)
        started.append(sup)
        return sup.start()

    yield make
    for sup in started:
        sup.stop()


@pytest.fixture(scope="session", autouse=True)
def no_orphans():
    """After the whole suite, no worker of any supervisor we started may live."""
    yield
    wait_until(lambda: not leftover_workers(), 10, "every worker process to exit")
