"""worker/allocator.py: a worker gives the free pages of its C heap back
once its Load has been answered. Checked here on this process's own heap:
freed small blocks below a block still in use stay resident until trimmed."""

from __future__ import annotations

import ctypes
import os

import pytest

from caxton.internal.v1 import worker_pb2
from caxton.worker import allocator
from caxton.worker.service import WorkerService

from .call_context import CallContext
from .harness import EXAMPLES

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


def test_a_worker_gives_back_what_its_load_freed_once_the_load_has_ended() -> None:
    service = WorkerService(on_exit=lambda status: None)
    context = CallContext()
    loaded = service.Load(
        worker_pb2.LoadRequest(
            agent="echo", module_path=str(EXAMPLES / "echo.wat"),
            limits=worker_pb2.Limits(memory_bytes=1 << 20, fuel=1_000_000, timeout_ms=1000),
            # Leave this process's limits, user and system calls alone.
            os_limits=worker_pb2.OsLimits(uid=-1, gid=-1, no_syscall_filter=True),
        ),
        context,
    )
    try:
        assert not loaded.error and loaded.init_code == 0
        # Not during the call, which would delay its answer: at its end.
        assert context.callbacks == [allocator.release_freed_memory]
    finally:
        service.Shutdown(worker_pb2.ShutdownRequest(), context)
