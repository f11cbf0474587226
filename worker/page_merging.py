"""Same-page merging: the memory a forked worker inherits, offered to the
kernel so that identical copies of it are kept once.

Why: an idle worker's private memory (5.3 MiB on Python 3.11) is almost all
pages it inherited from the fork server and then wrote a few words to.
CPython writes reference counts and bytecode counters wherever code runs
(bench/README.md, eighth session: of 1,258 private pages, 911 differ from
the fork server's copy in at most four words). Every idle worker running the
same code writes the same words, so the page is identical from worker to
worker, yet copy-on-write has given each worker its own copy. The kernel's
same-page merging (KSM) finds identical pages among memory marked
`MADV_MERGEABLE` and keeps one write-protected copy; a write to it copies
the page again, as a fork's copy-on-write does.

The fork server marks its private writable mappings (its heap, the Python
object arenas, the writable data of the libraries it loaded) once, before it
forks any worker. Each worker's copies of those mappings carry the mark;
nothing a worker maps later does: its agent's linear memory, the store,
new arenas and thread stacks are never offered (but for the one stack glibc
may keep cached from the rehearsal's thread and hand to one of the
worker's: it is an inherited mapping like the others). What the worker
writes into free space of an inherited mapping (a message's bytes, say) is
offered with it: a whole page identical to one of another worker's would be
merged, and that worker's next write to it would take a little longer (the
side channel KSM is known for). docs/operations.md sets out this trade-off
for operators; `[sandbox] merge_pages = false` turns the marking off.

The mark alone merges nothing: the host's `ksmd` does, if the operator runs
it (`/sys/kernel/mm/ksm/run`), at the scan rate the operator sets. Where it
does not run, the mark costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

_MADV_MERGEABLE = 12


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps: [start, end), its permissions and path."""

    start: int
    end: int
    perms: str
    path: str


@dataclass(frozen=True)
class MarkResult:
    """What `offer_inherited_pages` marked; `error` names why it marked
    nothing (the kernel has no KSM), else it is empty."""

    mappings: int
    bytes: int
    error: str = ""


def parse_maps(lines: Iterable[str]) -> list[Mapping]:
    """/proc/PID/maps lines as Mappings (the path may be empty)."""
    mappings = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        path = fields[5].strip() if len(fields) == 6 else ""
        mappings.append(Mapping(int(start, 16), int(end, 16), fields[1], path))
    return mappings


def mergeable(mapping: Mapping) -> bool:
    """Private, writable memory that children inherit copy-on-write: anonymous
    mappings (Python's object arenas among them), the heap, and libraries'
    writable data. Not the stack, nor the kernel's pseudo-mappings ([vvar],
    [vdso], ...): the kernel refuses or ignores them."""
    if not (mapping.perms.startswith("rw") and mapping.perms[3:4] == "p"):
        return False
    return not mapping.path.startswith("[") or mapping.path == "[heap]"


def offer_inherited_pages() -> MarkResult:
    """Mark this process's private writable mappings `MADV_MERGEABLE`; called
    by the fork server before its first fork, so every worker inherits the
    mark on what it inherits and on nothing else."""
    with open("/proc/self/maps") as f:
        chosen = [m for m in parse_maps(f) if mergeable(m)]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    marked = total = 0
    for mapping in chosen:
        if libc.madvise(mapping.start, mapping.end - mapping.start, _MADV_MERGEABLE) == 0:
            marked += 1
            total += mapping.end - mapping.start
            continue
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            # A kernel with KSM accepts the advice for any mapping (it
            # skips those it cannot merge): this one was built without.
            return MarkResult(0, 0, f"madvise(MADV_MERGEABLE): {os.strerror(err)} (a kernel without KSM?)")
        # ENOMEM: the mapping went away since /proc/self/maps was read;
        # the others are still worth marking.
    return MarkResult(marked, total)

