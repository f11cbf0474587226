"""Parking policy (supervisor/parking.py), with a fake freezer and clock."""

from __future__ import annotations

import signal

import pytest

from caxton.supervisor.parking import CgroupFreezer, Parking, SignalFreezer


class FakeFreezer:
    name = "fake"

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.fail = False

    def freeze(self) -> None:
        if self.fail:
            raise OSError(13, "Permission denied")
        self.steps.append("freeze")

    def thaw(self) -> None:
        self.steps.append("thaw")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[Parking, FakeFreezer, Clock]:
    freezer, clock = FakeFreezer(), Clock()
    return Parking(freezer, label="w", clock=clock), freezer, clock


def test_parks_only_after_the_quiet_spell(parts):
    parking, freezer, clock = parts
    clock.now += 29.9
    assert not parking.park_if_idle(30.0)
    clock.now += 0.1
    assert parking.park_if_idle(30.0)
    assert parking.parked and freezer.steps == ["freeze"]
    assert not parking.park_if_idle(30.0)  # already parked: frozen once
    assert freezer.steps == ["freeze"]


def test_a_call_thaws_first_and_restarts_the_quiet_spell(parts):
    parking, freezer, clock = parts
    clock.now += 60
    assert parking.park_if_idle(30.0)
    with parking.awake():
        assert not parking.parked
        assert freezer.steps == ["freeze", "thaw"]
        clock.now += 100
        assert not parking.park_if_idle(30.0)  # never while a call runs
    clock.now += 29
    assert not parking.park_if_idle(30.0)
    clock.now += 1
    assert parking.park_if_idle(30.0)
    assert parking.parked_count == 2


def test_overlapping_calls_keep_it_awake_until_the_last_ends(parts):
    parking, freezer, clock = parts
    parking.enter()
    parking.enter()
    parking.leave()
    clock.now += 100
    assert not parking.park_if_idle(1.0)
    parking.leave()
    clock.now += 1
    assert parking.park_if_idle(1.0)


def test_a_freezer_that_fails_stops_parking_for_good(parts, caplog):
    parking, freezer, clock = parts
    freezer.fail = True
    clock.now += 100
    assert not parking.park_if_idle(1.0)
    freezer.fail = False
    assert not parking.park_if_idle(1.0)
    assert not parking.parked and freezer.steps == []
    assert "will not be parked again" in caplog.text


def test_signal_freezer_stops_and_continues():
    sent: list[int] = []
    freezer = SignalFreezer(sent.append)
    freezer.freeze()
    freezer.thaw()
    assert sent == [signal.SIGSTOP, signal.SIGCONT]


def test_cgroup_freezer_writes_the_freeze_file(tmp_path):
    freezer = CgroupFreezer(tmp_path)
    freezer.freeze()
    assert (tmp_path / "cgroup.freeze").read_text() == "1"
    freezer.thaw()
    assert (tmp_path / "cgroup.freeze").read_text() == "0"
