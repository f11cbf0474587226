"""An agent's status (supervisor/status.py) when a worker leaves service
while its figures are asked for: pure, with fake instances."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from caxton.supervisor.config import Limits
from caxton.supervisor.lifecycle import AgentState
from caxton.supervisor.recovery import BreakerView
from caxton.supervisor.restart import BreakerState, RestartSettings
from caxton.supervisor.status import AgentView, snapshot
from caxton.supervisor.store import VersionRecord
from caxton.supervisor.worker_client import WorkerCallError, WorkerStats

MIB = 1 << 20


@dataclass
class Answer:
    stats: WorkerStats | None  # None: the probe failed

    def result(self) -> WorkerStats:
        if self.stats is None:
            raise WorkerCallError("reading its statistics", "the worker is shutting down", timed_out=False)
        return self.stats


@dataclass
class Instance:
    """What status.snapshot reads of a WorkerInstance."""

    version: int
    answers: bool = True
    retired: bool = False
    pid: int = os.getpid()
    handled: int = 0
    enforcement: tuple[str, ...] = ()
    started_at: float = time.monotonic()

    def figures(self, deadline: object) -> Answer:
        return Answer(WorkerStats(MIB, 0, 0, 0) if self.answers else None)


def view(*instances: Instance) -> AgentView:
    version = VersionRecord("a", 1, "", "0" * 64, Limits(memory_bytes=MIB), 0.0)
    return AgentView(
        name="a", state=AgentState.RUNNING, version=version, policy="default", replicas=len(instances),
        restart=RestartSettings(), uptime_s=1.0, messages=0, errors=0, restarts=0, last_error="",
        next_restart_in_s=0.0, breaker=BreakerView(BreakerState.CLOSED, None, "", 0.0), recent_failures=(),
        instances=instances,
    )


def versions(status) -> list[tuple[int, int]]:
    return [(i.version, i.memory_bytes) for i in status.instances]


def test_a_worker_retired_while_asked_is_left_out_and_the_status_made_from_a_new_view():
    old, kept, fresh = Instance(1), Instance(1), Instance(2)
    before = view(old, kept)
    # The rollout retires `old` (and is ending it) and puts `fresh` in service.
    old.answers, old.retired = False, True
    status = snapshot(before, [], retake=lambda: view(kept, fresh))
    assert versions(status) == [(1, MIB), (2, MIB)]


def test_a_worker_in_service_that_does_not_answer_is_listed_without_figures():
    silent = Instance(1, answers=False)
    status = snapshot(view(Instance(1), silent), [], retake=lambda: view(Instance(1), silent))
    assert versions(status) == [(1, MIB), (1, 0)]


def test_without_a_new_view_a_retired_worker_is_listed_without_figures():
    old = replace(Instance(1), answers=False, retired=True)
    assert versions(snapshot(view(Instance(1), old), [])) == [(1, MIB), (1, 0)]
