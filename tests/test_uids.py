"""The worker uid allocator (pure): one holder per uid, reuse only after release."""

from __future__ import annotations

import pytest

from caxton.supervisor.config import ConfigError, config_from_table
from caxton.supervisor.errors import WorkerStartError
from caxton.supervisor.uids import HIGHEST_UID, UidAllocator, UidsExhausted


def test_hands_out_distinct_uids_from_the_range_in_order():
    uids = UidAllocator(600000, 600009)
    taken = [uids.take() for _ in range(10)]
    assert taken == list(range(600000, 600010))
    assert uids.held == 10 and uids.size == 10


def test_a_full_range_is_exhausted_with_an_error_naming_the_setting():
    uids = UidAllocator(600000, 600002)
    for _ in range(3):
        uids.take()
    with pytest.raises(UidsExhausted) as raised:
        uids.take()
    assert isinstance(raised.value, WorkerStartError)
    message = str(raised.value)
    assert "sandbox.uid_range" in message and "600000-600002" in message and "3 uids" in message
    # Still exhausted, and nothing changed by the refusal.
    with pytest.raises(UidsExhausted):
        uids.take()
    assert uids.held == 3


def test_a_released_uid_is_handed_out_again_only_after_every_unused_one():
    uids = UidAllocator(10, 14)
    first = uids.take()
    uids.release(first)
    # Round-robin: the other four come first, then the released one.
    assert [uids.take() for _ in range(4)] == [11, 12, 13, 14]
    assert uids.take() == first


def test_a_held_uid_is_never_handed_out_twice():
    uids = UidAllocator(1, 4)
    held = {uids.take() for _ in range(4)}
    uids.release(2)
    assert uids.take() == 2
    with pytest.raises(UidsExhausted):
        uids.take()
    assert held == {1, 2, 3, 4}


def test_exhausted_then_one_released_gives_exactly_that_one():
    uids = UidAllocator(100, 199)
    for _ in range(100):
        uids.take()
    uids.release(157)
    assert uids.take() == 157
    with pytest.raises(UidsExhausted):
        uids.take()


def test_the_search_wraps_around_the_end_of_the_range():
    uids = UidAllocator(5, 7)
    assert [uids.take() for _ in range(3)] == [5, 6, 7]
    uids.release(6)
    uids.release(5)
    assert uids.take() == 5  # the search starts over at the beginning
    assert uids.take() == 6
    uids.release(7)
    assert uids.take() == 7


def test_churn_keeps_every_live_uid_unique():
    uids = UidAllocator(1000, 1015)
    live: list[int] = []
    for step in range(2000):
        if len(live) < 16 and (step % 3 or not live):
            uid = uids.take()
            assert uid not in live and 1000 <= uid <= 1015
            live.append(uid)
        else:
            uids.release(live.pop(step % len(live)))
        assert uids.held == len(live)


def test_a_range_of_one():
    uids = UidAllocator(600123, 600123)
    assert uids.take() == 600123
    with pytest.raises(UidsExhausted):
        uids.take()
    uids.release(600123)
    assert uids.take() == 600123


def test_releasing_a_uid_not_held_is_refused():
    uids = UidAllocator(1, 3)
    with pytest.raises(ValueError, match="not held"):
        uids.release(2)
    uid = uids.take()
    uids.release(uid)
    with pytest.raises(ValueError, match="not held"):
        uids.release(uid)


@pytest.mark.parametrize("first, last", [(0, 5), (10, 9), (1, HIGHEST_UID + 1), (-3, 4)])
def test_bad_ranges_are_refused(first, last):
    with pytest.raises(ValueError, match="uid range"):
        UidAllocator(first, last)


def test_the_widest_range_is_allowed():
    uids = UidAllocator(1, HIGHEST_UID)
    assert uids.size == HIGHEST_UID
    assert uids.take() == 1


# ------------------------------------------------------------ [sandbox] uid_range


def test_uid_range_defaults_on_and_reads_first_dash_last():
    assert config_from_table({}).sandbox.uid_range == (600000, 665535)
    assert config_from_table({"sandbox": {"uid_range": "700000-700099"}}).sandbox.uid_range == (700000, 700099)


def test_an_empty_uid_range_turns_it_off():
    assert config_from_table({"sandbox": {"uid_range": ""}}).sandbox.uid_range is None


@pytest.mark.parametrize("value", ["700000", "5-4", "0-10", "a-b", "-5", "1-4294967295", "1--2"])
def test_a_bad_uid_range_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r'^sandbox\.uid_range: expected "FIRST-LAST"'):
        config_from_table({"sandbox": {"uid_range": value}})


def test_a_uid_range_that_is_not_a_string_is_refused():
    with pytest.raises(ConfigError, match=r"^sandbox\.uid_range: expected a string"):
        config_from_table({"sandbox": {"uid_range": [600000, 665535]}})
