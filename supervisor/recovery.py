"""Restart supervision of one agent: when a worker fails, when to try again.

The decision is the pure `RestartPolicy` (restart.py); this module owns the
clock and the timer around it, so the agent only reports failures and gets
called back when a restart is due. Callers hold the agent's state lock
around every call here, so a failure, a cancel and a reset never race; the
timer callback itself runs on the timer's own thread, never on the
launcher's.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .restart import Decision, RestartPolicy, RestartSettings, Verdict


class Recovery:
    def __init__(self, settings: RestartSettings, on_due: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._policy = RestartPolicy(settings)
        self._on_due = on_due
        self._clock = clock
        self._timer: threading.Timer | None = None
        self._due: float | None = None  # clock time of the pending attempt
        self.restarts = 0

    @property
    def pending(self) -> bool:
        """A restart is scheduled and has not run yet."""
        return self._timer is not None

    def next_attempt_in(self) -> float:
        """Seconds until the pending restart (0 when none is pending)."""
        return max(0.0, self._due - self._clock()) if self._due is not None else 0.0

    def started(self) -> None:
        """Workers came up healthy: the start of a healthy run."""
        self._policy.on_start(self._clock())

    def failed(self, reason: str) -> Verdict:
        """A worker died, hung or could not be restarted. On RESTART the
        callback is scheduled after the verdict's delay; on GIVE_UP nothing
        is scheduled and the caller fails the agent."""
        verdict = self._policy.on_failure(self._clock(), reason)
        if verdict.decision is Decision.RESTART:
            self.restarts += 1
            self._due = self._clock() + verdict.delay_s
            self._timer = threading.Timer(verdict.delay_s, self._on_due)
            self._timer.daemon = True
            self._timer.start()
        return verdict

    def cancel(self) -> None:
        """Drop the pending restart, if any (stop, remove, operator start).
        The due callback calls this too, under the agent's lock, to mark the
        attempt as taken."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due = None

    def reset(self) -> None:
        """Operator reset: cancel, close the breaker, backoff from step one."""
        self.cancel()
        self._policy.reset()

    def recent_failures(self) -> list[tuple[float, str]]:
        """(clock time, reason) of the failures the breaker still counts."""
        return self._policy.recent_failures
