"""Deadline: the one way the supervisor says "by when".

A deadline is a point on the monotonic clock, or never. It is carried as it
is from the caller's RPC through the mailbox to the worker, and turned into
what each consumer wants only at the last moment: seconds for a wait,
grpc's `timeout=`, whole milliseconds for the private worker protocol. So
there are no mixed units and no ad-hoc floors on the way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]

# The most milliseconds the worker protocol's uint32 fields can carry
# (about 49 days): anything further away is as good as never.
_MAX_MS = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant on `clock` (time.monotonic unless a test injects its own);
    `at_s` is math.inf for a deadline that never comes."""

    at_s: float
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, *, clock: Clock = time.monotonic) -> Deadline:
        """`seconds` from now (zero or negative: already expired)."""
        return cls(clock() + seconds, clock)

    @classmethod
    def at(cls, monotonic_s: float, *, clock: Clock = time.monotonic) -> Deadline:
        """At an instant already read from `clock`."""
        return cls(monotonic_s, clock)

    @classmethod
    def never(cls) -> Deadline:
        return _NEVER

    def remaining(self) -> float:
        """Seconds left, never negative; math.inf for never."""
        if self.at_s == math.inf:
            return math.inf
        return max(0.0, self.at_s - self.clock())

    def expired(self) -> bool:
        return self.at_s != math.inf and self.clock() >= self.at_s

    def earliest(self, other: Deadline) -> Deadline:
        return other if other.at_s < self.at_s else self

    def timeout(self) -> float | None:
        """What grpc's and threading's `timeout=` want: seconds left, or None
        for never."""
        return None if self.at_s == math.inf else self.remaining()

    def remaining_ms(self) -> int:
        """Whole milliseconds left, for the worker protocol where 0 means "no
        deadline": 0 only for never. A deadline that has passed, or is less
        than a millisecond away, is 1 ms, so it is never mistaken for none."""
        if self.at_s == math.inf:
            return 0
        return min(_MAX_MS, max(1, math.ceil((self.at_s - self.clock()) * 1000)))


_NEVER = Deadline(math.inf)
