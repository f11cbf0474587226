"""Worker uids: one uid from a configured range per live worker process.

Where the supervisor is root, each worker switches to a uid (and a gid of
the same number) that no other live worker holds, so no worker can signal,
`ptrace` or read the files of another. A uid is handed out when its worker
process starts (spares hold theirs while they wait) and taken back only
once that process has been reaped: until then the kernel still knows a
process with that uid, and a new holder could reach it.

Released uids are handed out again last (the allocator walks the range
round-robin), so a recycled uid has usually been unused for a long time.

Pure bookkeeping: no I/O, no locking (the launcher serialises calls).
"""

from __future__ import annotations

from .errors import WorkerStartError

# What `[sandbox] uid_range` may name: uid 0 is root, and 2^32 - 1 is the
# kernel's "no uid" (-1).
LOWEST_UID = 1
HIGHEST_UID = 2**32 - 2


class UidsExhausted(WorkerStartError):
    """Every uid in the range is held by a live (or not yet reaped) worker."""


class UidAllocator:
    """Hands out the uids `first..last` (inclusive), each to one holder at a time."""

    def __init__(self, first: int, last: int):
        if not LOWEST_UID <= first <= last <= HIGHEST_UID:
            raise ValueError(f"a uid range is {LOWEST_UID} <= first <= last <= {HIGHEST_UID}, not {first}-{last}")
        self.first = first
        self.last = last
        self._held: set[int] = set()
        self._next = first  # where the round-robin search starts

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def held(self) -> int:
        """How many uids are held now."""
        return len(self._held)

    def take(self) -> int:
        """A uid nobody holds; raises UidsExhausted when there is none."""
        if len(self._held) >= self.size:
            raise UidsExhausted(
                f"all {self.size} uids of sandbox.uid_range ({self.first}-{self.last}) "
                "are held by live workers; widen the range or run fewer workers")
        uid = self._next
        # Terminates: at least one uid in the range is free.
        while uid in self._held:
            uid = self.first if uid == self.last else uid + 1
        self._held.add(uid)
        self._next = self.first if uid == self.last else uid + 1
        return uid

    def release(self, uid: int) -> None:
        """Take `uid` back: its holder has been reaped (or never ran as it).
        Releasing a uid that is not held is a bug in the caller."""
        try:
            self._held.remove(uid)
        except KeyError:
            raise ValueError(f"uid {uid} is not held") from None
