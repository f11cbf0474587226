"""Retry backoff for something that must always come back (the fork
server, the spare pool's refills): the agents' restart policy, except that
an open breaker means "retry slowly and report it" instead of "stop".

An agent that keeps crashing is left Failed for an operator; the machinery
that starts workers has nobody to wait for, so past the breaker it keeps
retrying at the longest delay, and the breaker closes again at the first
proven success. Pure: the caller passes the time and does the waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .restart import Decision, RestartPolicy, RestartSettings


@dataclass(frozen=True)
class Retry:
    delay_s: float  # wait this long before the next attempt
    gave_up: bool  # the breaker is open: attempts are at the slowest pace
    reason: str


class Backoff:
    def __init__(self, settings: RestartSettings, rng: random.Random | None = None):
        self.settings = settings
        self._policy = RestartPolicy(settings, rng)
        self._gave_up = False

    @property
    def gave_up(self) -> bool:
        return self._gave_up

    def failed(self, now: float, reason: str) -> Retry:
        """An attempt failed at `now`: when to try again."""
        verdict = self._policy.on_failure(now, reason)
        if verdict.decision is Decision.RESTART:
            return Retry(verdict.delay_s, False, verdict.reason)
        self._gave_up = True
        s = self.settings
        # Not the policy's own reason: nobody is waiting for an operator here.
        return Retry(s.max_delay_s, True, f"{verdict.failures_in_window} failures within {s.window_s:g}s "
                                          f"(limit {s.max_failures}): retrying every {s.max_delay_s:g}s")

    def started(self, now: float) -> None:
        """The thing came up at `now`: a long enough healthy run resets the
        backoff (the breaker stays as it is until succeeded())."""
        self._policy.on_start(now)

    def succeeded(self, now: float) -> None:
        """It did its job at `now`: close the breaker if it was open."""
        if self._gave_up:
            self._policy.reset()
            self._gave_up = False
        self._policy.on_start(now)
