"""worker/allocator.py: a worker gives the free pages of its C heap back
once its Load has been answered. Checked here on this process's own heap:
freed small blocks below a block still in use stay resident until trimmed."""

from __future__ import annotations

import ctypes
import os

import pytest

from caxton.worker import allocator

BLOCK = 1024  # well under glibc's mmap threshold: these come from the heap
BLOCKS = 16 * 1024  # 16 MiB


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(allocator._trim is None, reason="the C library has no malloc_trim (not glibc)")
def test_free_heap_pages_are_given_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    assert all(blocks)
    for block in blocks:  # make every page resident
        ctypes.memset(block, 1, BLOCK)
    # The highest block stays, so free() cannot shrink the heap by itself.
    top = max(blocks)
    try:
        for block in blocks:
            if block != top:
                libc.free(block)
        before = _resident_bytes()
        allocator.release_freed_memory()
        given_back = before - _resident_bytes()
    finally:
        libc.free(top)
    assert given_back >= BLOCKS * BLOCK // 2, f"only {given_back} bytes given back"
