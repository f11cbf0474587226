"""The C allocator, told to give freed memory back to the system.

glibc's malloc serves a large block (a 1 MiB message, a module) from a
mapping of its own, and returns it when it is freed, but only until the first
such block is freed: then it raises that threshold (up to 32 MiB), and large
blocks come from its heaps, whose freed memory stays with the process. Under
a flood of 1 MiB messages the supervisor's RSS then stayed at several times
what it held, long after the flood. A fixed threshold keeps large blocks in
mappings of their own for good, so RSS follows what is actually held (and the
memory budget means something). Blocks under the threshold, which is nearly
everything else, are unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("caxton.allocator")

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's own defaults, fixed: the trim threshold (free memory at the top of
# a heap beyond which it is returned) too, since raising the mmap threshold
# had raised it with it before this runs.
MMAP_THRESHOLD_BYTES = 128 << 10
TRIM_THRESHOLD_BYTES = 128 << 10


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("not glibc: malloc left as it is")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
