"""The memory budget (supervisor/memory_budget.py) and mailboxes bounded in bytes.

Pure logic, in process: the account, the mailbox's byte bounds, and the
wake-ups that let a stream wait for room instead of failing.
"""

from __future__ import annotations

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.errors import ResourceExhausted, Unavailable
from caxton.supervisor.mailbox import Mailbox, Pending
from caxton.supervisor.memory_budget import MESSAGE_OVERHEAD_BYTES, MemoryBudget, lendable
from caxton.v1 import caxton_pb2

MIB = 1 << 20


class Wakeups:
    """An on_room callback that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def pending(size: int, *, retained: int = 0, held_by_caller: bool = False) -> Pending:
    message = caxton_pb2.AgentMessage(receiver="a", content=b"x" * size)
    return Pending(message, Deadline.never(), lambda *outcome: None, retained, held_by_caller)


class _Taker:
    def keep_taking(self) -> bool:
        return True

    def wake(self) -> None:
        pass


def take_all(box: Mailbox) -> list[Pending]:
    return box.take(10_000, 1 << 40, _Taker()) or []


# ------------------------------------------------------------ the account


def test_callers_get_half_the_budget_and_never_the_reserve():
    assert lendable(512 * MIB) == 256 * MIB
    assert lendable(256 * MIB) == 64 * MIB
    assert lendable(4096 * MIB) == 2048 * MIB


def test_a_charge_fits_or_is_refused_and_release_makes_room():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    assert budget.try_charge(40 * MIB)
    assert not budget.try_charge(30 * MIB)
    assert budget.used == 40 * MIB
    budget.release(40 * MIB)
    assert budget.try_charge(30 * MIB)


def test_a_refused_charge_is_woken_once_when_bytes_are_released():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    budget.try_charge(60 * MIB)
    woken = Wakeups()
    assert not budget.try_charge(10 * MIB, woken)
    budget.release(MIB)
    budget.release(MIB)
    assert woken.count == 1


def test_a_forgotten_wakeup_is_not_called():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    budget.try_charge(60 * MIB)
    woken = Wakeups()
    budget.try_charge(10 * MIB, woken)
    budget.forget(woken)
    budget.release(60 * MIB)
    assert woken.count == 0


def test_messages_name_the_setting_to_change():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    budget.try_charge(64 * MIB)
    assert "memory_budget = 256 MiB" in budget.exhausted_message(MIB)
    assert "more than the supervisor's memory budget lends to callers at once" in budget.exhausted_message(65 * MIB)


# ------------------------------------------------------------ mailboxes in bytes


def test_queued_messages_are_charged_until_taken():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    box = Mailbox(limit=100)
    box.put(pending(1000), budget)
    box.put(pending(2000), budget)
    assert budget.used == box.queued_bytes == 3000 + 2 * MESSAGE_OVERHEAD_BYTES
    take_all(box)
    assert budget.used == box.queued_bytes == 0


def test_a_mailbox_is_bounded_in_bytes_by_queue_bytes():
    budget = MemoryBudget(1024 * MIB, 2 * MIB)
    box = Mailbox(limit=100)
    box.put(pending(MIB), budget)
    with pytest.raises(ResourceExhausted, match=r"queue full: .* \(queue_bytes = 2 MiB\)") as info:
        box.put(pending(MIB), budget)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(box) == 1


def test_an_empty_mailbox_takes_a_message_bigger_than_queue_bytes():
    budget = MemoryBudget(1024 * MIB, MIB)
    box = Mailbox(limit=100)
    assert box.put(pending(2 * MIB), budget)


def test_the_budget_bounds_all_mailboxes_together():
    budget = MemoryBudget(256 * MIB, 48 * MIB)  # 64 MiB to lend
    first, second = Mailbox(limit=100), Mailbox(limit=100)
    for _ in range(40):
        first.put(pending(MIB), budget)
    with pytest.raises(ResourceExhausted, match="memory budget is full"):
        for _ in range(40):
            second.put(pending(MIB), budget)
    assert budget.used <= budget.limit


def test_a_message_that_can_never_fit_is_refused_even_for_a_waiter():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    with pytest.raises(ResourceExhausted, match="lends to callers at once"):
        Mailbox(limit=100).put(pending(65 * MIB), budget, Wakeups())


def test_put_many_charges_the_prefix_within_queue_bytes_once():
    budget = MemoryBudget(1024 * MIB, 2 * MIB + 3 * MESSAGE_OVERHEAD_BYTES)
    box = Mailbox(limit=100)
    assert box.put_many([pending(MIB) for _ in range(3)], budget) == 2
    assert budget.used == box.queued_bytes == 2 * (MIB + MESSAGE_OVERHEAD_BYTES)
    take_all(box)
    assert budget.used == 0


def test_put_many_lets_an_empty_mailbox_take_a_first_message_bigger_than_queue_bytes():
    budget = MemoryBudget(1024 * MIB, MIB)
    box = Mailbox(limit=100)
    assert box.put_many([pending(2 * MIB), pending(10)], budget) == 1
    assert box.put_many([pending(10)], budget) == 0  # no longer empty, and over queue_bytes


def test_put_many_stops_before_a_message_that_can_never_fit():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    box = Mailbox(limit=100)
    assert box.put_many([pending(10), pending(65 * MIB), pending(10)], budget) == 1


def test_put_many_takes_nothing_when_the_budget_cannot_hold_the_prefix():
    budget = MemoryBudget(256 * MIB, 48 * MIB)  # 64 MiB to lend
    assert budget.try_charge(63 * MIB)
    box = Mailbox(limit=100)
    assert box.put_many([pending(MIB // 2) for _ in range(4)], budget) == 0
    assert (budget.used, len(box)) == (63 * MIB, 0)
    assert box.put(pending(MIB // 2), budget)  # put(), one at a time, takes what still fits
    assert box.put_many([pending(MIB // 2)], budget) == 0
    assert budget.used == 63 * MIB + MIB // 2 + MESSAGE_OVERHEAD_BYTES


def test_retained_bytes_are_charged_with_the_message():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    Mailbox(limit=100).put(pending(1000, retained=5000), budget)
    assert budget.used == 6000 + MESSAGE_OVERHEAD_BYTES


def test_a_message_held_by_its_caller_stays_charged_until_released():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    box = Mailbox(limit=100)
    held = pending(1000, held_by_caller=True)
    box.put(held, budget)
    take_all(box)
    assert box.queued_bytes == 0
    assert budget.used == held.cost
    held.release()
    held.release()
    assert budget.used == 0


# ------------------------------------------------------------ waiting for room


def test_a_full_mailbox_wakes_its_waiter_when_a_worker_takes():
    box = Mailbox(limit=1)
    box.put(pending(10))
    woken = Wakeups()
    assert box.put(pending(10), on_room=woken) is False
    assert woken.count == 0
    take_all(box)
    assert woken.count == 1
    assert box.put(pending(10), on_room=woken) is True


def test_a_full_budget_wakes_its_waiter_when_another_mailbox_is_taken():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    first, second = Mailbox(limit=100), Mailbox(limit=100)
    while first.put(pending(MIB), budget, Wakeups()):
        pass
    woken = Wakeups()
    assert second.put(pending(MIB), budget, woken) is False
    take_all(first)
    assert woken.count == 1
    assert second.put(pending(MIB), budget, woken) is True


def test_closing_wakes_waiters_who_then_learn_why():
    box = Mailbox(limit=1)
    box.put(pending(10))
    woken = Wakeups()
    box.put(pending(10), on_room=woken)
    box.close("agent 'a' is draining and takes no new messages")
    assert woken.count == 1
    with pytest.raises(Unavailable, match="draining"):
        box.put(pending(10), on_room=woken)


def test_failing_the_queue_gives_its_bytes_back_and_wakes_waiters():
    budget = MemoryBudget(256 * MIB, 64 * MIB)
    box = Mailbox(limit=1)
    box.put(pending(MIB), budget)
    woken = Wakeups()
    box.put(pending(10), budget, woken)
    assert box.fail_all(grpc.StatusCode.UNAVAILABLE, "stopped") == 1
    assert budget.used == 0 and woken.count == 1
