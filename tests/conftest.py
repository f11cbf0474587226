"""Fixtures that start real supervisors, and a final check for orphans."""

from __future__ import annotations

import pytest

# A worker process with no supervisor, for the tests of the worker protocol.
from .bare_worker import client, worker  # noqa: F401  (fixtures)
from .harness import SupervisorProcess, leftover_workers, wait_until

# Every end-to-end test runs with workers forked from the fork server and
# with workers started by exec.
WORKER_START_MODES = ["fork", "exec"]


@pytest.fixture(scope="session", params=WORKER_START_MODES)
def worker_start(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def shared_supervisor(tmp_path_factory, worker_start):
    """One supervisor for the tests that only deploy and message; each test
    uses agent names of its own."""
    state = tmp_path_factory.mktemp(f"shared-{worker_start}") / "state"
    supervisor = SupervisorProcess(state, config=f'worker_start = "{worker_start}"\n').start()
    yield supervisor
    supervisor.stop()


@pytest.fixture
def supervisor(tmp_path, worker_start):
    """A fresh supervisor for a test that restarts, kills or configures it.
    Extra TOML settings may be given; the worker start mode is added."""
    started: list[SupervisorProcess] = []

    def make(config: str = "", state_dir=None) -> SupervisorProcess:
        config = f'worker_start = "{worker_start}"\n' + config
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
