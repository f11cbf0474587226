"""Worker output: what a worker writes to its stderr, logged as that worker's lines.

A worker's stderr is a pipe the supervisor reads (never the supervisor's own
log), so nothing a worker writes can pass for a line of the supervisor's:
- `OutputLines` (pure) turns the bytes one worker wrote into log messages:
  split into lines, control characters and bytes that are not UTF-8 shown
  as escapes, each line capped at MAX_LINE_BYTES, and the worker's lines
  rate-limited by a token bucket, a flood summarised as "N lines suppressed";
- `WorkerOutput` is the one thread that reads every worker's pipe (epoll:
  no thread per worker) and logs the lines as `worker[PID] agent=NAME: ...`.

The fork server's own stderr stays the supervisor's: it is trusted and runs
no agent code.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from .logs import escape

log = logging.getLogger("caxton.worker")

# A line longer than this is cut here, and the rest of it dropped.
MAX_LINE_BYTES = 4096
TRUNCATED = "…(truncated)"
# The token bucket: a worker may write BURST_LINES at once (a traceback
# fits), then LINES_PER_S on average; the lines over that are counted and
# summarised at most once per SUMMARY_INTERVAL_S while the flood lasts.
BURST_LINES = 200
LINES_PER_S = 20.0
SUMMARY_INTERVAL_S = 5.0
_READ_BYTES = 65536

# Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape); they
# are shown as \xNN, which cannot be confused with text the worker wrote:
# escape() doubles every backslash of that.
_UNDECODABLE = {0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}


def escape_bytes(raw: bytes) -> str:
    """`raw` as one line of text: control characters and bytes that are not
    UTF-8 shown as escapes, so it can neither end a log line nor drive a terminal."""
    return escape(raw.decode("utf-8", "surrogateescape")).translate(_UNDECODABLE)


class OutputLines:
    """One worker's output stream as log messages (pure: the caller passes
    the time). `feed` the bytes as they come, `finish` at end of file."""

    def __init__(self, *, max_line: int = MAX_LINE_BYTES, burst: int = BURST_LINES,
                 lines_per_s: float = LINES_PER_S, summary_interval_s: float = SUMMARY_INTERVAL_S):
        self.max_line = max_line
        self.burst = burst
        self.lines_per_s = lines_per_s
        self.summary_interval_s = summary_interval_s
        self.suppressed = 0  # lines dropped by the rate limit, not yet summarised
        self._partial = bytearray()
        self._dropping = False  # inside a line already cut: drop up to its newline
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._summary_due = 0.0

    def feed(self, data: bytes, now: float) -> list[str]:
        """The messages for the complete lines in `data` (and any summary due)."""
        out: list[str] = []
        if not self._has_token(now):
            # Flooding: count the lines at C speed instead of looking at
            # each, so a flood costs the reader thread (and the supervisor's
            # GIL) next to nothing.
            self._suppress_all(data, now, out)
            out.extend(self.due(now))
            return out
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            self._take(data[start:newline], now, out, complete=True)
            start = newline + 1
        self._take(data[start:], now, out, complete=False)
        out.extend(self.due(now))
        return out

    def finish(self, now: float) -> list[str]:
        """End of file: the last, unterminated line and what was suppressed."""
        out: list[str] = []
        if self._partial:
            self._line(bytes(self._partial), now, out)
            self._partial.clear()
        if self.suppressed:
            out.append(self._summary())
        return out

    def due(self, now: float) -> list[str]:
        """The summary of suppressed lines, when one is due."""
        if self.suppressed and now >= self._summary_due:
            return [self._summary()]
        return []

    def next_due(self) -> float | None:
        """When the next summary is due (None: nothing suppressed)."""
        return self._summary_due if self.suppressed else None

    def _take(self, piece: bytes, now: float, out: list[str], *, complete: bool) -> None:
        if self._dropping:
            if complete:
                self._dropping = False
            return
        self._partial += piece
        if len(self._partial) > self.max_line:
            self._line(bytes(self._partial[:self.max_line]), now, out, cut=True)
            self._partial.clear()
            self._dropping = not complete
        elif complete:
            self._line(bytes(self._partial), now, out)
            self._partial.clear()

    def _suppress_all(self, data: bytes, now: float, out: list[str]) -> None:
        """What `feed` does with `data` when no line may be logged now."""
        newlines = data.count(b"\n")
        if newlines:
            # Each newline ends a line, except one that ends a line already cut (and counted).
            lines = newlines - (1 if self._dropping else 0)
            if lines:
                if not self.suppressed:
                    self._summary_due = now + self.summary_interval_s
                self.suppressed += lines
            self._dropping = False
            self._partial.clear()
            data = data[data.rindex(b"\n") + 1:]
        self._take(data, now, out, complete=False)

    def _line(self, raw: bytes, now: float, out: list[str], *, cut: bool = False) -> None:
        if not self._allowed(now):
            if not self.suppressed:
                self._summary_due = now + self.summary_interval_s
            self.suppressed += 1
            return
        if self.suppressed:
            out.append(self._summary())
        out.append(escape_bytes(raw.rstrip(b"\r")) + (TRUNCATED if cut else ""))

    def _has_token(self, now: float) -> bool:
        """Refill the bucket for the time passed; True if a line may be logged."""
        if self._refilled_at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled_at) * self.lines_per_s)
        self._refilled_at = now
        return self._tokens >= 1.0

    def _allowed(self, now: float) -> bool:
        if self._has_token(now):
            self._tokens -= 1.0
            return True
        return False

    def _summary(self) -> str:
        count, self.suppressed = self.suppressed, 0
        return f"{count} line{'s' if count != 1 else ''} suppressed (over {self.lines_per_s:g} lines/s)"


class OutputStream:
    """One worker's pipe as the reader sees it. `pid` and `agent` name the
    worker in its lines; the launcher and the instance fill them in."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pid = 0
        self.agent = ""
        self.lines = OutputLines()

    def prefix(self) -> str:
        who = f"worker[{self.pid or '?'}]"
        return f"{who} agent={escape(self.agent)}" if self.agent else who


class WorkerOutput:
    """The one thread that reads every worker's stderr pipe and logs it."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._streams: dict[int, OutputStream] = {}
        # Streams with suppressed lines not yet summarised (reader thread only).
        self._suppressing: set[OutputStream] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="worker-output", daemon=True)
        self._thread.start()

    def add(self, fd: int) -> OutputStream:
        """Read the pipe `fd` from now on; the reader owns it and closes it
        at end of file (when every writer has exited) or at `close`."""
        os.set_blocking(fd, False)
        stream = OutputStream(fd)
        with self._lock:
            if self._closing:
                os.close(fd)
                return stream
            self._streams[fd] = stream
            self._epoll.register(fd, select.EPOLLIN)
        return stream

    def close(self, deadline: float) -> None:
        """Log what is already written, then stop the thread and close every pipe."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for fd in list(self._streams):
                self._drop(fd)
        if not self._thread.is_alive():
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self) -> None:
        while True:
            events = self._epoll.poll(self._timeout())
            for fd, _mask in events:
                if fd == self._wake_r:
                    _drain(fd)
                    continue
                self._read(fd)
            now = time.monotonic()
            for stream in list(self._suppressing):
                self._emit(stream, stream.lines.due(now))
            with self._lock:
                closing = self._closing
            if closing and not events:
                return

    def _timeout(self) -> float:
        """Until the next summary is due (-1: none; 0 while closing, to
        drain what is readable and stop)."""
        with self._lock:
            if self._closing:
                return 0.0
        dues = [due for stream in self._suppressing if (due := stream.lines.next_due()) is not None]
        return max(0.0, min(dues) - time.monotonic()) if dues else -1

    def _read(self, fd: int) -> None:
        with self._lock:
            stream = self._streams.get(fd)
        if stream is None:
            return
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.monotonic()
        if data:
            self._emit(stream, stream.lines.feed(data, now))
            return
        self._emit(stream, stream.lines.finish(now))
        with self._lock:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        """Under the lock: forget and close one pipe."""
        if self._streams.pop(fd, None) is not None:
            self._epoll.unregister(fd)
            os.close(fd)

    def _emit(self, stream: OutputStream, messages: list[str]) -> None:
        if stream.lines.suppressed:
            self._suppressing.add(stream)
        else:
            self._suppressing.discard(stream)
        for message in messages:
            log.warning("%s: %s", stream.prefix(), message,
                        extra={"pid": stream.pid or None, "agent": stream.agent or None})


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
