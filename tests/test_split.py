"""The traffic split: sticky conversations, a deterministic weight, the
share's ends overriding the pins, and a bounded memory of conversations."""

from __future__ import annotations

import math
import threading
import time

import pytest

from caxton.supervisor.split import Split


def lanes(split: Split, ids) -> list[bool]:
    return [split.to_candidate(i) for i in ids]


def test_default_sends_everything_to_stable():
    split = Split()
    assert split.share == 0.0
    assert not any(lanes(split, ["", "a", "b", ""] * 10))
    assert split.conversations() == 0


@pytest.mark.parametrize("share", [-0.1, 1.01, math.nan, math.inf])
def test_a_share_out_of_range_is_refused(share):
    with pytest.raises(ValueError, match="between 0.0 and 1.0"):
        Split(share)
    split = Split(0.5)
    with pytest.raises(ValueError, match="between 0.0 and 1.0"):
        split.set_share(share)
    assert split.share == 0.5


def test_max_conversations_must_be_positive():
    with pytest.raises(ValueError, match="max_conversations"):
        Split(0.5, max_conversations=0)


@pytest.mark.parametrize("share", [0.01, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.99])
def test_the_weight_is_round_n_share_plus_or_minus_one_at_every_n(share):
    split = Split(share)
    to_candidate = 0
    for n in range(1, 5001):
        to_candidate += split.to_candidate("")
        assert abs(to_candidate - round(n * share)) <= 1, (n, to_candidate)
    assert split.conversations() == 0  # id-less messages pin nothing


def test_the_weight_is_deterministic():
    first, second = Split(0.3), Split(0.3)
    assert lanes(first, [""] * 200) == lanes(second, [""] * 200)
    # and not a lump: the candidate's messages are spread out
    assert lanes(Split(0.5), [""] * 6) == [True, False, True, False, True, False]


def test_the_weight_holds_across_a_share_change():
    split = Split(0.1)
    first = sum(lanes(split, [""] * 100))
    split.set_share(0.4)
    second = sum(lanes(split, [""] * 100))
    assert first == 10
    assert abs(second - 40) <= 1
    assert abs(first + second - 50) <= 1


def test_a_conversation_stays_on_its_lane():
    split = Split(0.5)
    chosen = {c: split.to_candidate(c) for c in ("a", "b", "c", "d")}
    assert set(chosen.values()) == {True, False}  # by weight: both lanes got some
    for _ in range(20):
        for c, lane in chosen.items():
            assert split.to_candidate(c) is lane
    assert split.conversations() == 4


def test_a_conversation_counts_once_toward_the_weight():
    # New conversations and id-less messages share one accumulator; a pinned
    # conversation's later messages do not move it.
    with_chatter, without = Split(0.25), Split(0.25)
    sequence = []
    for n in range(40):
        sequence.append(with_chatter.to_candidate(f"conv-{n}"))
        for _ in range(5):
            with_chatter.to_candidate(f"conv-{n}")
    assert sequence == lanes(without, [f"conv-{n}" for n in range(40)])
    assert sum(sequence) == 10


def test_pins_hold_as_the_share_grows():
    split = Split(0.05)
    early = {f"early-{n}": split.to_candidate(f"early-{n}") for n in range(100)}
    assert sum(early.values()) == 5
    for share in (0.25, 0.5, 0.95):
        split.set_share(share)
        assert {c: split.to_candidate(c) for c in early} == early
    # New conversations take the new weight (0.95 now).
    late = lanes(split, [f"late-{n}" for n in range(100)])
    assert abs(sum(late) - 95) <= 1


def test_zero_and_one_override_the_pins_and_keep_them():
    split = Split(0.5)
    pinned = {c: split.to_candidate(c) for c in ("a", "b")}
    assert pinned == {"a": True, "b": False}
    split.set_share(0.0)  # rolled back
    assert lanes(split, ["a", "b", "new", ""]) == [False] * 4
    split.set_share(1.0)  # the full step
    assert lanes(split, ["a", "b", "new", ""]) == [True] * 4
    assert split.conversations() == 2  # nothing pinned at the ends
    split.set_share(0.5)
    assert lanes(split, ["a", "b"]) == [True, False]


def test_the_least_recently_used_conversation_is_forgotten():
    split = Split(0.5, max_conversations=3)
    # Choices alternate candidate, stable, candidate, ...
    assert lanes(split, ["a", "b", "c"]) == [True, False, True]
    assert split.to_candidate("a") is True  # a is now the most recent; b the least
    assert split.to_candidate("d") is False  # the 4th pin evicts b
    assert split.conversations() == 3
    assert split.to_candidate("b") is True  # chosen afresh (the next choice), no longer stable
    assert split.conversations() == 3  # and c went out for it
    assert split.to_candidate("a") is True  # still pinned: a fresh choice would be stable
    assert split.to_candidate("") is False  # the accumulator did not move for a
    assert split.to_candidate("c") is True  # c is new again: the next choice


class Yielding(str):
    """A conversation id that lets other threads run whenever it is hashed,
    which the split does between looking a conversation up and pinning it:
    without the lock, two threads would pin one conversation differently."""

    def __hash__(self) -> int:
        time.sleep(0)  # releases the GIL
        return str.__hash__(self)


def test_concurrent_callers_share_one_exact_accumulator_and_one_set_of_pins():
    split = Split(0.3)
    threads, per_thread = 4, 1000
    counts: list[int] = []
    seen: list[list[bool]] = []
    barrier = threading.Barrier(threads)

    def caller() -> None:
        barrier.wait(10)
        n = 0
        mine = []
        for i in range(per_thread):
            n += split.to_candidate("")
            mine.append(split.to_candidate(Yielding(f"c{i}")))
        counts.append(n)
        seen.append(mine)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(counts) == threads
    assert all(s == seen[0] for s in seen)  # each conversation on one lane, whoever asked
    assert split.conversations() == per_thread
    # Every id-less message and every new conversation went through one accumulator.
    choices = threads * per_thread + per_thread
    assert abs(sum(counts) + sum(seen[0]) - round(choices * 0.3)) <= 1
