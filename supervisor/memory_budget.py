"""The memory budget: the bytes the supervisor holds on its callers' behalf.

What a caller can make the supervisor hold until later is charged to one
account shared by all of them: messages waiting in mailboxes, modules being
validated or compiled, results a SendStream client has not read yet. A charge
that does not fit is refused: unary calls answer RESOURCE_EXHAUSTED naming
the budget, streams wait for room (flow control, not buffering).

The account covers what callers control, not the supervisor's own working
set (interpreter, gRPC, the agents' bookkeeping) nor the transient copies of
messages on their way through gRPC and to the workers: `memory_budget` in the
config is the target for the whole process, and callers may fill only part of
it (`lendable`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# What the supervisor keeps for itself out of the budget: its working set
# (60-180 MiB, growing with the number of agents) and what a flood has in
# transit beside what it holds (~100 MiB measured with 300 concurrent 1 MiB
# Sends, tests/test_floods.py). Callers get half the budget, and never more
# than the budget less this reserve.
RESERVED_BYTES = 192 << 20

# What one queued message costs beyond its content: the protobuf envelope,
# its Pending and the caller's callback (measured: 1.1 KiB each with 8,000
# queued through SendStream).
MESSAGE_OVERHEAD_BYTES = 1100


def lendable(budget_bytes: int) -> int:
    """How much of a memory budget callers may fill."""
    return max(0, min(budget_bytes // 2, budget_bytes - RESERVED_BYTES))


RoomCallback = Callable[[], None]


def mib(size: int) -> str:
    """A byte count for people: '512 MiB', '1.5 MiB', '300 bytes'."""
    if size < 1 << 20:
        return f"{size} bytes"
    value = size / (1 << 20)
    return f"{value:.0f} MiB" if value == int(value) or value >= 100 else f"{value:.1f} MiB"


class MemoryBudget:
    """A thread-safe byte account with a limit, and one-shot wake-ups for
    those waiting for room. `queue_bytes` bounds each agent's mailbox
    within it, so that one slow agent cannot take the whole budget."""

    def __init__(self, budget_bytes: int, queue_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.queue_bytes = queue_bytes
        self.limit = lendable(budget_bytes)
        self._used = 0
        self._lock = threading.Lock()
        self._waiting: list[RoomCallback] = []

    @property
    def used(self) -> int:
        return self._used

    def exhausted_message(self, size: int) -> str:
        """Why a charge of `size` bytes is refused."""
        if size > self.limit:
            return (f"{mib(size)} is more than the supervisor's memory budget lends to callers at once "
                    f"({mib(self.limit)} of memory_budget = {mib(self.budget_bytes)})")
        return (f"the supervisor's memory budget is full: {mib(self._used)} of {mib(self.limit)} held for callers "
                f"(memory_budget = {mib(self.budget_bytes)}); try again when earlier messages have been handled")

    def try_charge(self, size: int, on_room: RoomCallback | None = None) -> bool:
        """Charge `size` bytes if they fit. If not and `on_room` is given,
        it is called once (from whichever thread releases bytes) when room
        may have appeared; registering is atomic with the check, so no
        release is missed."""
        with self._lock:
            if self._used + size <= self.limit:
                self._used += size
                return True
            if on_room is not None:
                self._waiting.append(on_room)
            return False

    def charge(self, size: int) -> None:
        """Charge bytes that are already held and cannot be refused (a
        result that has arrived): the account may go over its limit, which
        holds back new charges until enough is released."""
        with self._lock:
            self._used += size

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size
            waiting, self._waiting = self._waiting, []
        for on_room in waiting:
            on_room()

    def forget(self, on_room: RoomCallback) -> None:
        """Withdraw a wake-up registered by try_charge (its waiter gave up)."""
        with self._lock:
            if on_room in self._waiting:
                self._waiting.remove(on_room)
