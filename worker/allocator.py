"""The C allocator, asked to give back the memory a worker's start freed.

Loading an agent (reading and hashing the module, compiling or deserializing
it, linking, the first instance) frees about a quarter of a MiB of small
blocks that glibc's malloc keeps in its heaps, resident and private to the
worker, for the rest of the worker's life. An idle worker never needs it
again, and a host runs thousands of them, so the worker hands the free pages
back once its Load has been answered: `malloc_trim(0)`, ~0.1-0.3 ms.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


_trim = _malloc_trim()


def release_freed_memory() -> None:
    """Return the allocator's free pages to the system (where it can)."""
    if _trim is not None:
        _trim(0)
