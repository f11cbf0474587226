"""A worker's stderr: its own pipe, read by one supervisor thread and logged
as that worker's lines, escaped, capped and rate-limited."""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time

import pytest

from caxton.supervisor.worker_output import TRUNCATED, OutputLines, WorkerOutput, escape_bytes
from caxton.v1 import caxton_pb2

from .harness import alive, wait_until

# ------------------------------------------------------------ OutputLines (pure)


def test_complete_lines_come_out_and_a_partial_one_waits_for_its_newline():
    lines = OutputLines()
    assert lines.feed(b"one\ntwo\nthr", 0.0) == ["one", "two"]
    assert lines.feed(b"ee\n", 0.0) == ["three"]
    assert lines.feed(b"", 0.0) == []
    assert lines.feed(b"crlf\r\n", 0.0) == ["crlf"]


def test_an_unterminated_last_line_comes_out_at_end_of_file():
    lines = OutputLines()
    assert lines.feed(b"Traceback\n  last words", 0.0) == ["Traceback"]
    assert lines.finish(0.0) == ["  last words"]
    assert lines.finish(0.0) == []


def test_control_characters_and_terminal_sequences_are_escaped():
    lines = OutputLines()
    [line] = lines.feed(b"\x1b[2J\x1b]0;owned\x07 tab\there \x9b\x00\n", 0.0)
    assert line == "\\x1b[2J\\x1b]0;owned\\x07 tab\\there \\x9b\\x00"
    assert not any(ord(c) < 32 or ord(c) == 0x7F for c in line)


def test_a_forged_log_line_stays_inside_the_workers_own_line():
    forged = b"harmless\r2026-01-01 00:00:00,000 caxton.supervisor INFO all is well\n"
    [line] = OutputLines().feed(forged, 0.0)
    assert "\r" not in line and "\n" not in line
    assert line == "harmless\\r2026-01-01 00:00:00,000 caxton.supervisor INFO all is well"


def test_bytes_that_are_not_utf8_cannot_pass_for_escapes_the_worker_wrote():
    assert escape_bytes(b"caf\xc3\xa9 \xff\xfe") == "café \\xff\\xfe"
    # The worker writing a backslash escape itself gets its backslash doubled.
    assert escape_bytes(b"\\xff") == "\\\\xff"
    assert escape_bytes(b"\xff") != escape_bytes(b"\\xff")


def test_a_long_line_is_cut_and_its_rest_dropped():
    lines = OutputLines(max_line=10)
    assert lines.feed(b"0123456789\n", 0.0) == ["0123456789"]  # exactly the cap: whole
    assert lines.feed(b"0123456789abc", 0.0) == ["0123456789" + TRUNCATED]
    assert lines.feed(b"def" * 100, 0.0) == []  # the rest of that line
    assert lines.feed(b"ghi\nnext\n", 0.0) == ["next"]


def test_a_long_line_cut_inside_one_read_drops_up_to_its_newline():
    lines = OutputLines(max_line=4)
    assert lines.feed(b"abcdefgh\nok\n", 0.0) == ["abcd" + TRUNCATED, "ok"]


def test_a_flood_is_summarised_not_logged():
    lines = OutputLines(burst=3, lines_per_s=1.0, summary_interval_s=5.0)
    assert lines.feed(b"x\n" * 10, 0.0) == ["x", "x", "x"]
    assert lines.suppressed == 7
    assert lines.next_due() == 5.0
    assert lines.due(4.9) == []
    assert lines.due(5.0) == ["7 lines suppressed (over 1 lines/s)"]
    assert lines.suppressed == 0 and lines.next_due() is None


def test_the_summary_comes_before_the_next_line_let_through():
    lines = OutputLines(burst=2, lines_per_s=1.0, summary_interval_s=60.0)
    assert lines.feed(b"a\nb\nc\nd\n", 0.0) == ["a", "b"]
    assert lines.feed(b"e\n", 0.5) == []
    assert lines.feed(b"f\n", 1.0) == ["3 lines suppressed (over 1 lines/s)", "f"]
    assert lines.suppressed == 0


def test_a_flood_that_goes_on_is_summarised_every_interval():
    lines = OutputLines(burst=1, lines_per_s=0.001, summary_interval_s=5.0)
    assert lines.feed(b"first\n", 0.0) == ["first"]
    assert lines.feed(b"z\n" * 100, 1.0) == []
    assert lines.due(5.9) == []
    assert lines.due(6.0) == ["100 lines suppressed (over 0.001 lines/s)"]
    assert lines.next_due() is None
    assert lines.feed(b"z\n", 7.0) == []
    assert lines.next_due() == 12.0


def test_what_was_suppressed_is_summarised_at_end_of_file():
    lines = OutputLines(burst=1, lines_per_s=0.001)
    lines.feed(b"a\nb\n", 0.0)
    assert lines.finish(0.0) == ["1 line suppressed (over 0.001 lines/s)"]


def test_the_bucket_refills_at_its_rate_up_to_the_burst():
    lines = OutputLines(burst=2, lines_per_s=10.0, summary_interval_s=60.0)
    assert lines.feed(b"a\nb\nc\n", 0.0) == ["a", "b"]  # c suppressed
    out = lines.feed(b"d\ne\nf\n", 100.0)  # long quiet: the bucket is full again, but only 2 deep
    assert out == ["1 line suppressed (over 10 lines/s)", "d", "e"]
    assert lines.suppressed == 1


@pytest.mark.parametrize("seed", range(20))
def test_any_chunking_logs_the_first_lines_and_counts_every_other_one(seed):
    rng = random.Random(seed)
    lines = [b"%d:" % i + bytes(rng.choice(b"ab\x1b\xff") for _ in range(rng.choice([0, 3, 9, 30])))
             for i in range(rng.randrange(1, 60))]
    data = b"\n".join(lines) + rng.choice([b"\n", b""])
    burst = rng.randrange(1, 10)
    output = OutputLines(max_line=12, burst=burst, lines_per_s=0.0001, summary_interval_s=1000.0)
    logged: list[str] = []
    start = 0
    while start < len(data):
        size = rng.randrange(1, 40)
        logged += output.feed(data[start:start + size], 0.0)
        start += size
    logged += output.finish(0.0)

    def expected(line: bytes) -> str:
        return escape_bytes(line[:12]) + (TRUNCATED if len(line) > 12 else "")
    kept = [expected(line) for line in lines[:burst]]
    dropped = len(lines) - len(kept)
    summary = [f"{dropped} line{'s' if dropped != 1 else ''} suppressed (over 0.0001 lines/s)"] if dropped else []
    assert logged == kept + summary


# ------------------------------------------------------------ WorkerOutput (one thread, real pipes)


@pytest.fixture
def output():
    reader = WorkerOutput()
    yield reader
    reader.close(time.monotonic() + 5)


def _worker_messages(caplog) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.name == "caxton.worker"]


def test_one_thread_reads_every_pipe_and_closes_each_at_end_of_file(output, caplog):
    caplog.set_level(logging.INFO, logger="caxton.worker")
    threads_before = threading.active_count()
    pipes = []
    for pid in (101, 102, 103):
        r, w = os.pipe()
        stream = output.add(r)
        stream.pid = pid
        stream.agent = f"agent-{pid}"
        pipes.append((r, w))
    assert threading.active_count() == threads_before  # no thread per pipe
    for _r, w in pipes:
        os.write(w, b"hello\nno newline yet")
    wait_until(lambda: len(_worker_messages(caplog)) == 3, 5, "three lines logged")
    assert sorted(_worker_messages(caplog)) == [f"worker[{p}] agent=agent-{p}: hello" for p in (101, 102, 103)]
    for _r, w in pipes:
        os.close(w)
    wait_until(lambda: len(_worker_messages(caplog)) == 6, 5, "the unterminated lines at end of file")
    assert "worker[101] agent=agent-101: no newline yet" in _worker_messages(caplog)

    def closed(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return True
        return False
    # The reader closed every read end (fd numbers may be reused later: checked at once).
    wait_until(lambda: all(closed(r) for r, _ in pipes), 5, "the read ends to be closed")


def test_records_carry_the_workers_pid_and_agent_for_json_logs(output, caplog):
    caplog.set_level(logging.INFO, logger="caxton.worker")
    r, w = os.pipe()
    stream = output.add(r)
    stream.pid = 4242
    try:
        os.write(w, b"spare speaking\n")
        wait_until(lambda: _worker_messages(caplog), 5, "the line")
    finally:
        os.close(w)
    record = next(r for r in caplog.records if r.name == "caxton.worker")
    assert record.getMessage() == "worker[4242]: spare speaking"
    assert record.pid == 4242 and record.agent is None
    assert record.levelno == logging.WARNING


def test_close_stops_the_thread_and_closes_pipes_still_open(caplog):
    caplog.set_level(logging.INFO, logger="caxton.worker")
    reader = WorkerOutput()
    r, w = os.pipe()
    reader.add(r)
    os.write(w, b"before close\n")
    reader.close(time.monotonic() + 5)
    try:
        assert not any(t.name == "worker-output" and t.is_alive() for t in threading.enumerate())
        with pytest.raises(OSError):
            os.fstat(r)
        # What was written before close was still logged.
        assert "worker[?]: before close" in _worker_messages(caplog)
    finally:
        os.close(w)


# ------------------------------------------------------------ end to end: real supervisor, real workers


def _write_to_stderr_of(pid: int, data: bytes) -> None:
    """Write into a worker's fd 2 (its stderr pipe), as the worker would."""
    try:
        fd = os.open(f"/proc/{pid}/fd/2", os.O_WRONLY)
    except PermissionError as exc:
        pytest.skip(f"cannot open another process's stderr here: {exc}")
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_what_a_worker_writes_to_stderr_is_logged_as_its_own_escaped_lines(shared_supervisor):
    sup = shared_supervisor
    pid = sup.deploy("stderr-talker", "echo").instances[0].pid
    marker = f"m{os.getpid()}x{time.monotonic_ns()}"
    _write_to_stderr_of(pid, f"{marker} \x1b[31mred\x1b[0m\n".encode()
                        + f"{marker}\n2026-01-01 00:00:00,000 caxton.supervisor INFO forged {marker}\n".encode())
    wait_until(lambda: f"forged {marker}" in sup.log_text(), 10, "the worker's lines in the supervisor's log")
    lines = [line for line in sup.log_text().splitlines() if marker in line]
    assert len(lines) == 3
    prefix = f"caxton.worker WARNING worker[{pid}] agent=stderr-talker: "
    assert all(prefix in line for line in lines), lines
    assert lines[0].endswith(f"{prefix}{marker} \\x1b[31mred\\x1b[0m")
    # The forged line is the worker's line, never one of the supervisor's.
    assert lines[2].endswith(f"{prefix}2026-01-01 00:00:00,000 caxton.supervisor INFO forged {marker}")
    assert not any(line.startswith("2026-01-01") for line in sup.log_text().splitlines())
    assert "\x1b" not in sup.log_text()


def test_a_flooding_worker_is_summarised_and_its_pipe_closed_when_it_exits(supervisor):
    sup = supervisor("worker_pool = 0\n")
    pid = sup.deploy("flooder", "echo").instances[0].pid
    stderr_pipe = os.readlink(f"/proc/{pid}/fd/2")
    assert stderr_pipe.startswith("pipe:")

    def supervisor_holds_the_pipe() -> bool:
        fds = os.listdir(f"/proc/{sup.pid}/fd")
        return any(_readlink(f"/proc/{sup.pid}/fd/{fd}") == stderr_pipe for fd in fds)
    assert supervisor_holds_the_pipe()
    _write_to_stderr_of(pid, b"".join(b"flood line %d\n" % i for i in range(3000)))
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name="flooder"), timeout=30)
    wait_until(lambda: not alive(pid), 10, "the worker to exit")
    wait_until(lambda: "lines suppressed" in sup.log_text(), 10, "the flood's summary at end of file")
    logged = [line for line in sup.log_text().splitlines() if f"worker[{pid}] agent=flooder: flood line" in line]
    assert 0 < len(logged) < 3000
    [summary] = [line for line in sup.log_text().splitlines() if "lines suppressed" in line]
    assert f"worker[{pid}] agent=flooder: " in summary
    suppressed = int(re.search(r": (\d+) lines suppressed", summary).group(1))
    assert len(logged) + suppressed == 3000
    # The supervisor closed its end of the worker's stderr at end of file.
    wait_until(lambda: not supervisor_holds_the_pipe(), 10, "the supervisor to close the worker's stderr pipe")


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
