"""Same-page merging: forked workers carry the `MADV_MERGEABLE` mark on what
they inherit from the fork server, and on nothing they map themselves.

Whether the host's ksmd then merges anything is the host's business (and
these tests do not turn it on): they check the mark, which the kernel shows
as "mg" in a mapping's VmFlags (/proc/PID/smaps).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from caxton.supervisor.ksm import host_merges_pages, start_note
from caxton.worker.page_merging import Mapping, mergeable, parse_maps

from .harness import SupervisorProcess, worker_pids_of

MIB = 1 << 20


@dataclass(frozen=True)
class Area:
    start: int
    end: int
    perms: str
    path: str
    marked: bool


def _areas(pid: int) -> list[Area]:
    """The mappings of process `pid`, with whether each is marked mergeable."""
    areas: list[Area] = []
    header: Mapping | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("VmFlags:"):
                assert header is not None
                areas.append(Area(header.start, header.end, header.perms, header.path, "mg" in line.split()[1:]))
                header = None
            elif not line.split()[0].endswith(":"):
                header = parse_maps([line])[0]
    return areas


def _marked_bytes(areas: list[Area]) -> int:
    return sum(a.end - a.start for a in areas if a.marked)


def _fork_server_pid(sup: SupervisorProcess) -> int:
    (pid,) = set(worker_pids_of(sup.pid, include_fork_server=True)) - set(sup.worker_pids())
    return pid


# -------------------------------------------------------------- pure selection

def _line(perms: str, path: str = "") -> str:
    return f"7f0000000000-7f0000001000 {perms} 00000000 00:00 0          {path}\n"


def test_maps_lines_are_parsed_with_and_without_a_path():
    (anon, lib) = parse_maps([_line("rw-p"), _line("r-xp", "/usr/lib/libc.so.6")])
    assert anon == Mapping(0x7f0000000000, 0x7f0000001000, "rw-p", "")
    assert lib.path == "/usr/lib/libc.so.6" and lib.perms == "r-xp"
    (spaced,) = parse_maps([_line("rw-p", "/tmp/a file (deleted)")])
    assert spaced.path == "/tmp/a file (deleted)"


@pytest.mark.parametrize("perms, path, offered", [
    ("rw-p", "", True),                              # anonymous: Python's object arenas
    ("rw-p", "[heap]", True),
    ("rw-p", "/usr/lib/libpython3.11.so", True),     # a library's writable data
    ("rw-p", "[stack]", False),
    ("rw-s", "/dev/shm/x", False),                   # shared: not copied on write
    ("r--p", "/usr/lib/x.so", False),
    ("r-xp", "/usr/lib/x.so", False),
    ("---p", "", False),                             # a guard or reservation
    ("r--p", "[vvar]", False),
])
def test_only_private_writable_memory_is_offered(perms, path, offered):
    assert mergeable(parse_maps([_line(perms, path)])[0]) is offered


def test_the_start_note_says_what_the_host_does():
    assert "on (" in start_note(True, "fork", True)
    assert "ksmd is not running" in start_note(True, "fork", False)
    assert "no KSM" in start_note(True, "fork", None)
    assert "merge_pages = false" in start_note(False, "fork", True)
    assert "exec-started" in start_note(True, "exec", True)


def test_the_host_state_is_read_from_sysfs(tmp_path):
    run = tmp_path / "run"
    run.write_text("1\n")
    assert host_merges_pages(str(run)) is True
    run.write_text("2\n")  # stopped, merged pages undone
    assert host_merges_pages(str(run)) is False
    assert host_merges_pages(str(tmp_path / "absent")) is None


# ------------------------------------------------------------ real processes

_CHILD = textwrap.dedent("""
    import ctypes, mmap, os, sys
    from caxton.worker.page_merging import offer_inherited_pages
    result = offer_inherited_pages()
    assert not result.error and result.mappings > 0, result
    # Private anonymous memory, as an agent's linear memory is, mapped
    # after the marking.
    later = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    later.write(b"x" * (1 << 20))
    address = ctypes.addressof(ctypes.c_char.from_buffer(later))
    pid = os.fork()
    if pid == 0:
        print(os.getpid(), address, flush=True)
        sys.stdin.read()             # until the test has looked
        os._exit(0)
    os.waitpid(pid, 0)
""")


def test_a_child_inherits_the_mark_on_what_was_marked_and_not_on_what_was_mapped_later():
    process = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        child, address = map(int, process.stdout.readline().split())
        areas = _areas(child)
        heap = [a for a in areas if a.path == "[heap]"]
        assert heap and all(a.marked for a in heap)
        (later,) = [a for a in areas if a.start <= address < a.end]
        assert later.perms == "rw-p" and not later.marked
        assert not any(a.marked for a in areas if a.path == "[stack]" or not a.perms.startswith("rw"))
    finally:
        process.stdin.close()
        process.wait(timeout=30)
    assert process.returncode == 0


def test_forked_workers_inherit_the_mark_by_default(tmp_path):
    sup = SupervisorProcess(tmp_path / "state", config='worker_start = "fork"\n').start()
    try:
        status = sup.deploy("merged", "echo")
        assert sup.send("merged", b"hi").reply.content == b"hi"
        worker = _areas(status.instances[0].pid)
        server = _areas(_fork_server_pid(sup))
        # Python's heap and object arenas: megabytes, in the fork server and
        # in what the worker inherited of them.
        assert _marked_bytes(server) > 8 * MIB
        assert _marked_bytes(worker) > 8 * MIB
        assert any(a.marked for a in worker if a.path == "[heap]")
        # What the worker mapped itself is not: all but the marked mappings
        # hold the agent's memory, the store, thread stacks and new arenas.
        own = [a for a in worker if a.perms == "rw-p" and not a.path and not a.marked]
        assert sum(a.end - a.start for a in own) > MIB
        assert "same-page merging: " in sup.log_text()
    finally:
        sup.stop()


def test_merge_pages_false_marks_nothing(tmp_path):
    sup = SupervisorProcess(tmp_path / "state",
                            config='worker_start = "fork"\n\n[sandbox]\nmerge_pages = false\n').start()
    try:
        status = sup.deploy("unmerged", "echo")
        assert sup.send("unmerged", b"hi").reply.content == b"hi"
        assert _marked_bytes(_areas(status.instances[0].pid)) == 0
        assert _marked_bytes(_areas(_fork_server_pid(sup))) == 0
        assert "same-page merging: off ([sandbox] merge_pages = false)" in sup.log_text()
    finally:
        sup.stop()

