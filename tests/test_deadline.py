"""The one deadline type (supervisor/deadline.py), on a fake clock."""

from __future__ import annotations

import math
import time

import pytest

from caxton.supervisor.deadline import Deadline


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_after_counts_down_and_expires(clock):
    deadline = Deadline.after(2.5, clock=clock)
    assert deadline.remaining() == 2.5
    assert not deadline.expired()
    clock.advance(2.0)
    assert deadline.remaining() == pytest.approx(0.5)
    assert not deadline.expired()
    clock.advance(0.5)
    assert deadline.expired()
    assert deadline.remaining() == 0.0


def test_remaining_never_goes_negative(clock):
    deadline = Deadline.after(1, clock=clock)
    clock.advance(10)
    assert deadline.remaining() == 0.0
    assert deadline.timeout() == 0.0
    assert Deadline.after(-3, clock=clock).remaining() == 0.0


def test_at_is_an_instant_on_the_clock(clock):
    deadline = Deadline.at(1003.0, clock=clock)
    assert deadline.remaining() == 3.0
    assert deadline == Deadline.after(3.0, clock=clock)


def test_never(clock):
    never = Deadline.never()
    assert not never.expired()
    assert never.remaining() == math.inf
    assert never.timeout() is None
    assert Deadline.after(1e9, clock=clock).timeout() == 1e9


def test_timeout_is_what_grpc_wants(clock):
    deadline = Deadline.after(4, clock=clock)
    clock.advance(1)
    assert deadline.timeout() == 3.0


def test_earliest_picks_the_sooner(clock):
    soon = Deadline.after(1, clock=clock)
    late = Deadline.after(5, clock=clock)
    assert soon.earliest(late) is soon
    assert late.earliest(soon) is soon
    assert Deadline.never().earliest(late) is late
    assert late.earliest(Deadline.never()) is late
    assert Deadline.never().earliest(Deadline.never()).timeout() is None


def test_remaining_ms_rounds_up_and_reserves_zero_for_never(clock):
    assert Deadline.never().remaining_ms() == 0
    assert Deadline.after(0.5, clock=clock).remaining_ms() == 500
    assert Deadline.after(0.0101, clock=clock).remaining_ms() == 11
    # Less than a millisecond left, or already passed: still a deadline.
    assert Deadline.after(0.0001, clock=clock).remaining_ms() == 1
    assert Deadline.after(-5, clock=clock).remaining_ms() == 1


def test_remaining_ms_fits_the_protocol_field(clock):
    assert Deadline.after(10**9, clock=clock).remaining_ms() == 0xFFFFFFFF


def test_immutable(clock):
    deadline = Deadline.after(1, clock=clock)
    with pytest.raises(AttributeError):
        deadline.at_s = 0  # type: ignore[misc]


def test_default_clock_is_monotonic():
    deadline = Deadline.after(60)
    assert deadline.at_s - time.monotonic() == pytest.approx(60, abs=1)
