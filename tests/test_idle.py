"""Idle agents cost (almost) nothing: the health sweep asks a worker only when
nothing else has shown it alive (supervisor/health.py), and a hung worker is
still found.

The schedule is pure policy and is tested directly with a hand-driven clock;
HealthMonitor.check_once is tested with stand-in instances that count the
probes they are sent (its one I/O is the probe); the end-to-end test_recovery
test_hung_worker_is_killed_and_restarted covers a real stopped worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from caxton.supervisor.health import IDLE_SWEEPS, HealthMonitor, ProbeSchedule
from caxton.supervisor.worker_client import WorkerCallError, WorkerStats

INTERVAL = 5.0


def _sweeps(schedule: ProbeSchedule, worker: str, handled: list[int], answers: bool = True) -> list[bool]:
    """Run one sweep per entry of `handled` (the worker's count at that
    sweep), INTERVAL apart; returns whether each sweep asked the worker."""
    asked = []
    for i, count in enumerate(handled):
        now = (i + 1) * INTERVAL
        due = schedule.due(worker, count, now)
        asked.append(due)
        if due:
            if answers:
                schedule.answered(worker, now)
            else:
                schedule.missed(worker)
    return asked


def test_an_idle_worker_is_asked_once_every_idle_sweeps_intervals():
    schedule = ProbeSchedule(INTERVAL)
    asked = _sweeps(schedule, "w", [0] * (3 * IDLE_SWEEPS + 1))
    # The first sweep sees it loaded (an answer), then every IDLE_SWEEPS-th.
    assert [i for i, a in enumerate(asked) if a] == [IDLE_SWEEPS, 2 * IDLE_SWEEPS, 3 * IDLE_SWEEPS]


def test_a_worker_completing_batches_is_never_asked():
    schedule = ProbeSchedule(INTERVAL)
    assert not any(_sweeps(schedule, "w", list(range(3 * IDLE_SWEEPS))))


def test_a_worker_that_goes_quiet_is_asked_once_then_at_the_idle_pace():
    schedule = ProbeSchedule(INTERVAL)
    handled = [0] * 5 + [1, 2, 3] + [3] * (2 * IDLE_SWEEPS)
    asked = _sweeps(schedule, "w", handled)
    # Sweep 8 is the first without a completed batch: the worker may be
    # stuck in the next one, so it is asked; then it is idle.
    assert [i for i, a in enumerate(asked) if a] == [8, 8 + IDLE_SWEEPS]


def test_a_worker_that_missed_a_check_is_asked_every_sweep_until_it_answers():
    schedule = ProbeSchedule(INTERVAL)
    asked = _sweeps(schedule, "w", [0] * (IDLE_SWEEPS + 4), answers=False)
    assert asked[IDLE_SWEEPS:] == [True] * 4
    assert schedule.missed("w") == 5
    schedule.answered("w", 1000.0)
    assert not schedule.due("w", 0, 1000.0 + INTERVAL)


def test_forgotten_workers_start_over():
    schedule = ProbeSchedule(INTERVAL)
    _sweeps(schedule, "w", [0] * IDLE_SWEEPS, answers=False)
    schedule.keep_only([])
    assert not schedule.due("w", 0, 10_000.0)  # seen afresh: not asked at once


# ------------------------------------------------------------ the monitor


@dataclass
class _Probe:
    answers: bool

    def result(self) -> WorkerStats:
        if not self.answers:
            raise WorkerCallError("answering a health check", "Deadline Exceeded", timed_out=True)
        return WorkerStats(0, 0, 0, 0)


@dataclass
class _Client:
    answers: bool = True
    probes: int = 0

    def probe(self, deadline: object) -> _Probe:
        self.probes += 1
        return _Probe(self.answers)


@dataclass(eq=False)
class _Instance:
    """What HealthMonitor reads of a WorkerInstance."""

    agent: str
    version: int = 1
    pid: int = 1
    handled: int = 0
    alive: bool = True
    client: _Client = field(default_factory=_Client)
    kill_reason: str = ""
    quiet_for: float = 0.0  # what the instance's parking would measure
    parked: bool = False

    @property
    def parking(self) -> _Instance:
        return self

    def park_if_idle(self, after_s: float) -> bool:
        if self.parked or self.quiet_for < after_s:
            return False
        self.parked = True
        return True

    def probe(self, deadline: object) -> _Probe:
        return self.client.probe(deadline)

    def kill(self, reason: str) -> None:
        self.kill_reason = reason
        self.alive = False


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(instances: list[_Instance], clock: _Clock, park_after_s: float = 0.0) -> HealthMonitor:
    return HealthMonitor(lambda: instances, interval_s=INTERVAL, timeout_s=1.0, failures=2,  # type: ignore[arg-type,return-value]
                         park_after_s=park_after_s, clock=clock)


def _run_sweeps(monitor: HealthMonitor, clock: _Clock, count: int, each: Callable[[], None] | None = None) -> None:
    for _ in range(count):
        clock.now += INTERVAL
        if each is not None:
            each()
        monitor.check_once()


def test_a_worker_stuck_in_a_batch_is_killed_within_failures_sweeps_of_going_quiet():
    stuck = _Instance("stuck")
    clock = _Clock()
    monitor = _monitor([stuck], clock)

    def work() -> None:
        stuck.handled += 1

    _run_sweeps(monitor, clock, 3, work)
    stuck.client.answers = False  # it took another batch and hangs in it
    _run_sweeps(monitor, clock, 2)
    assert not stuck.alive and "did not answer 2 health checks" in stuck.kill_reason
    assert stuck.client.probes == 2


def test_idle_workers_are_probed_rarely_and_busy_ones_not_at_all():
    idle, busy = _Instance("idle"), _Instance("busy")
    clock = _Clock()
    monitor = _monitor([idle, busy], clock)

    def work() -> None:
        busy.handled += 1

    _run_sweeps(monitor, clock, 2 * IDLE_SWEEPS + 1, work)
    # Before: one probe per sweep each, 2 * (2 * IDLE_SWEEPS + 1) in all.
    assert (idle.client.probes, busy.client.probes) == (2, 0)
    assert not idle.kill_reason and not busy.kill_reason


def test_a_hung_idle_worker_is_still_killed():
    hung = _Instance("hung", client=_Client(answers=False))
    clock = _Clock()
    monitor = _monitor([hung], clock)
    _run_sweeps(monitor, clock, IDLE_SWEEPS + 1)
    assert hung.alive and hung.client.probes == 1  # one miss of the two allowed
    _run_sweeps(monitor, clock, 1)  # a missed check is followed up the next sweep
    assert not hung.alive and "did not answer 2 health checks in a row" in hung.kill_reason


def test_a_worker_that_answers_after_a_miss_is_not_killed():
    flaky = _Instance("flaky", client=_Client(answers=False))
    clock = _Clock()
    monitor = _monitor([flaky], clock)
    _run_sweeps(monitor, clock, IDLE_SWEEPS + 1)
    flaky.client.answers = True
    _run_sweeps(monitor, clock, 1)
    flaky.client.answers = False
    _run_sweeps(monitor, clock, IDLE_SWEEPS - 1)  # back on the idle cadence: not asked
    assert flaky.alive and flaky.client.probes == 2


def test_idle_workers_are_parked_and_parked_ones_are_not_asked():
    clock = _Clock()
    quiet, busy = _Instance("quiet", quiet_for=31.0), _Instance("busy", quiet_for=0.0)
    monitor = _monitor([quiet, busy], clock, park_after_s=30.0)

    def work() -> None:
        busy.handled += 1

    _run_sweeps(monitor, clock, IDLE_SWEEPS * 3, work)
    assert quiet.parked and not busy.parked
    assert quiet.client.probes == 0  # parked at the first sweep, never asked


def test_parking_off_parks_nothing():
    clock = _Clock()
    quiet = _Instance("quiet", quiet_for=1000.0)
    _run_sweeps(_monitor([quiet], clock), clock, IDLE_SWEEPS + 1)
    assert not quiet.parked and quiet.client.probes == 1
