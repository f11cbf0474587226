"""A rollout in flight: its record as it changes, and the operator's commands.

`Steering` is what the thread driving a rollout and everyone else share:
the record (what status shows, kept in the store at every change, each
change an event), the commands an operator sends (promote, abort, pause,
resume), and the wake-up when a candidate worker fails. The driving thread
waits on it with a deadline, so a command or a failure is acted on at once
and the analysis still runs on time when nothing happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .errors import FailedPrecondition
from .rollout_status import RolloutRecord, RolloutState

ACTIONS = ("promote", "abort", "pause", "resume")

class Steering:
    def __init__(self, record: RolloutRecord, *, save: Callable[[RolloutRecord], None],
                 publish: Callable[[str, int, str], None]) -> None:
        self._record = record
        self._save = save
        self._publish = publish  # (kind, version, message)
        self._cond = threading.Condition()
        self._command = ""
        self._failure = ""
        self.done = threading.Event()
        # Each version's messages when the rollout began, so that status can
        # show each one's share of the traffic since.
        self.baseline: dict[int, int] = {}

    @property
    def record(self) -> RolloutRecord:
        with self._cond:
            return self._record

    def update(self, event: str = "", message: str = "", *, keep: bool = True, **changes: object) -> RolloutRecord:
        """Change the record, keep it in the store (unless not `keep`), and
        publish `event` (if any) with `message` (default: the record's reason)."""
        with self._cond:
            record = replace(self._record, **changes)  # type: ignore[arg-type]
            if record.state.ended and not record.ended_at:
                record = replace(record, ended_at=time.time())
            self._record = record
        if keep:
            self._save(record)
        if event:
            self._publish(event, record.candidate_version, message or record.reason)
        return record

    # ------------------------------------------------------------ commands

    def command(self, action: str) -> None:
        """An operator's command; FailedPrecondition if it makes no sense now."""
        with self._cond:
            state = self._record.state
            # A promoted rollout may still be in flight: blue-green keeps the
            # old set warm, and an abort goes back to it.
            if self.done.is_set() or (state.ended and action != "abort" and action != "shutdown"):
                raise FailedPrecondition(f"the rollout of {self._record.agent!r} has ended ({state.value})")
            if action == "pause" and state is not RolloutState.PROGRESSING:
                raise FailedPrecondition(f"the rollout of {self._record.agent!r} is {state.value}, not progressing")
            if action == "resume" and state is not RolloutState.PAUSED:
                raise FailedPrecondition(f"the rollout of {self._record.agent!r} is {state.value}, not paused")
            self._command = action
            self._cond.notify_all()

    def failed(self, reason: str) -> None:
        """A candidate worker exited (never blocks: exit-callback thread)."""
        with self._cond:
            if not self._failure:
                self._failure = reason
            self._cond.notify_all()

    def wait(self, timeout: float) -> tuple[str, str]:
        """Wait up to `timeout` for a command or a failure; returns (the
        command taken, the failure) — either may be empty."""
        with self._cond:
            if not self._command and not self._failure:
                self._cond.wait(timeout)
            command, self._command = self._command, ""
            return command, self._failure
