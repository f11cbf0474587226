"""Restart policy for agent workers: exponential backoff plus a circuit breaker.

The shape follows Erlang/OTP's supervisor restart intensity (a sliding window
of failure timestamps that either allows a restart or gives up), systemd's
RestartSteps/RestartMaxDelaySec and Kubernetes' CrashLoopBackOff (delays that
double up to a cap, reset after a healthy run). The first step is
milliseconds, not seconds: a one-off crash of a worker should cost almost
nothing, while a crash loop backs off quickly and, past the breaker limit,
stops burning CPU: the agent is Failed.

The circuit breaker heals by itself, as Nygard's pattern, resilience4j and
Envoy's outlier ejection do: open, then after a cool-down half-open (one
probe worker, no user traffic), then closed if the probe passes, or open
again with twice the cool-down (up to a cap) if it does not. A healthy run
of `reset_after_s` brings the cool-down back to its first step. With
`auto_recover = false` an open breaker stays open until an operator starts
the agent again, as before.

Everything here is pure: the caller passes the monotonic time (`now`) into
every call and may inject the random source, so the policy can be tested
with plain floats and a seeded rng, and the supervisor decides where the
clock and the sleeping live.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple, get_type_hints

from .settings import Table


@dataclass(frozen=True)
class RestartSettings:
    """How one agent's worker is restarted. Immutable so that one instance
    can be shared by every agent's policy and loaded once from config."""

    initial_delay_s: float = 0.01  # first restart after 10 ms
    factor: float = 2.0
    max_delay_s: float = 30.0
    jitter: float = 0.2  # +-20 % uniform jitter, applied to each delay
    reset_after_s: float = 30.0  # running healthy this long resets the backoff
    max_failures: int = 5  # breaker: more than this many failures ...
    window_s: float = 60.0  # ... within this window opens the breaker
    breaker_cooldown_s: float = 30.0  # open this long before the probe ...
    breaker_cooldown_max_s: float = 600.0  # ... doubling per re-open up to this
    auto_recover: bool = True  # False: an open breaker waits for an operator

    def check(self) -> None:
        """Raise ValueError naming the first bad field.

        Comparisons are written as `not (ok)` so that NaN, which compares
        false to everything, is rejected rather than slipping through.
        """
        if not 0 <= self.initial_delay_s < math.inf:
            raise ValueError(f"initial_delay_s: expected a finite number >= 0, got {self.initial_delay_s!r}")
        if not 1 <= self.factor < math.inf:
            raise ValueError(f"factor: expected a finite number >= 1, got {self.factor!r}")
        if not 0 <= self.max_delay_s < math.inf:
            raise ValueError(f"max_delay_s: expected a finite number >= 0, got {self.max_delay_s!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter: expected 0 <= jitter < 1, got {self.jitter!r}")
        if not 0 < self.reset_after_s < math.inf:
            raise ValueError(f"reset_after_s: expected a finite number > 0, got {self.reset_after_s!r}")
        if not (isinstance(self.max_failures, int) and self.max_failures >= 1):
            raise ValueError(f"max_failures: expected an integer >= 1, got {self.max_failures!r}")
        if not 0 < self.window_s < math.inf:
            raise ValueError(f"window_s: expected a finite number > 0, got {self.window_s!r}")
        if not 0 < self.breaker_cooldown_s < math.inf:
            raise ValueError(f"breaker_cooldown_s: expected a finite number > 0, got {self.breaker_cooldown_s!r}")
        if not self.breaker_cooldown_s <= self.breaker_cooldown_max_s < math.inf:
            raise ValueError(f"breaker_cooldown_max_s: expected a finite number >= breaker_cooldown_s "
                             f"({self.breaker_cooldown_s!r}), got {self.breaker_cooldown_max_s!r}")
        if not isinstance(self.auto_recover, bool):
            raise ValueError(f"auto_recover: expected true or false, got {self.auto_recover!r}")


# The Table reader for each field type. A RestartSettings field of a type not
# listed fails here, at import (add its reader, e.g. str: Table.string),
# instead of being unreadable from config.
_READERS: dict[type, Callable[[Table, str, Any], Any]] = {int: Table.integer, float: Table.number, bool: Table.flag}
_HINTS = get_type_hints(RestartSettings)
_FIELD_READERS = {f.name: _READERS[_HINTS[f.name]] for f in fields(RestartSettings)}


def settings_from_table(table: dict[str, Any], base: RestartSettings = RestartSettings()) -> RestartSettings:
    """Build settings from a parsed TOML table, keys named like the fields.

    Keys missing from the table keep their value from `base`. Unknown keys are
    an error rather than ignored, so that a typo (`max_failure = 3`) does not
    silently leave the default in force. Errors name fields relative to the
    table (`window_s: ...`).
    """
    return read_settings(Table(table), base)


def read_settings(table: Table, base: RestartSettings = RestartSettings()) -> RestartSettings:
    """Settings from `table` (e.g. the config's [restart]), over `base`.

    Fields are read by their type and their ranges are left to
    RestartSettings.check(), so a field added to RestartSettings is readable
    with nothing to change here.
    """
    values = {name: read(table, name, getattr(base, name)) for name, read in _FIELD_READERS.items()}
    table.finish()
    settings = replace(base, **values)
    try:
        settings.check()
    except ValueError as exc:
        # check() names the bad field first ("factor: expected ..."), relative
        # to the settings; the table places it at its full dotted path.
        field, _, problem = str(exc).partition(": ")
        raise table.error(field, problem) from None
    return settings


class Decision(enum.Enum):
    RESTART = "restart"  # start the worker again after delay_s
    OPEN = "open"  # the breaker is open: probe after delay_s, the cool-down
    GIVE_UP = "give_up"  # the breaker is open and waits for an operator


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class Verdict:
    """What to do about one failure, with the numbers behind it for logs
    and status output."""

    decision: Decision
    delay_s: float  # how long to wait before restarting or probing (0 when giving up)
    failures_in_window: int
    reason: str


class _Failure(NamedTuple):
    at: float
    reason: str
    # False for failures an operator reset has forgiven: they stay visible in
    # `recent_failures` for diagnosis but no longer count towards the breaker.
    counts: bool


class RestartPolicy:
    """Per-agent restart state: backoff + a circuit breaker that heals.

    The backoff step and the breaker window are deliberately separate: a
    healthy run resets the backoff so that the next crash is cheap again,
    but the breaker counts every failure by time, so an agent that crashes
    just after each healthy period still trips it if that happens too often.
    `now` must not go backwards between calls (pass time.monotonic()).
    """

    def __init__(self, settings: RestartSettings, rng: random.Random | None = None) -> None:
        settings.check()
        self.settings = settings
        # A private Random by default so that jitter neither reads nor
        # disturbs the global random state other code may have seeded.
        self._rng = rng if rng is not None else random.Random()
        # Only the newest max_failures + 1 failures can decide the breaker,
        # so older ones are dropped: memory stays bounded in a crash loop.
        self._failures: deque[_Failure] = deque(maxlen=settings.max_failures + 1)
        self._attempt = 0
        self._started_at: float | None = None
        self.breaker = BreakerState.CLOSED
        self.opened_at: float | None = None  # `now` of the latest opening
        self.open_reason = ""
        self._reopens = 0  # openings since the last long healthy run

    def on_start(self, now: float) -> None:
        """The agent's workers came up healthy at `now`."""
        self._started_at = now

    def on_failure(self, now: float, reason: str) -> Verdict:
        """A worker died or hung at `now`; decide whether and when to restart."""
        in_window = self._record(now, reason)
        if self.breaker is not BreakerState.CLOSED:
            # A straggler's failure while the breaker is open: nothing new to
            # do; the probe (or, with auto_recover off, an operator) decides.
            waiting = "waiting for the probe" if self.settings.auto_recover else "waiting for operator reset"
            return Verdict(Decision.GIVE_UP, 0.0, in_window, f"{self.open_reason}; {waiting}")
        s = self.settings
        if in_window > s.max_failures:
            return self._open(now, f"{in_window} failures within {s.window_s:g}s (limit {s.max_failures}): "
                                   "circuit open", in_window)
        delay = self._delay(self._attempt)
        self._attempt += 1
        return Verdict(
            Decision.RESTART,
            delay,
            in_window,
            f"restart {self._attempt} ({in_window}/{s.max_failures} failures in {s.window_s:g}s window); "
            f"next attempt in {delay:.3g}s",
        )

    def half_open(self) -> None:
        """The cool-down is over and the probe starts."""
        if self.breaker is not BreakerState.OPEN:
            raise ValueError(f"only an open breaker can half-open, not a {self.breaker.value} one")
        self.breaker = BreakerState.HALF_OPEN

    def probe_passed(self, now: float) -> None:
        """The probe worker started and answered: close the breaker. Earlier
        failures are forgiven (so the next one does not reopen it at once);
        the cool-down steps back only after a long healthy run."""
        if self.breaker is not BreakerState.HALF_OPEN:
            raise ValueError(f"no probe is running: the breaker is {self.breaker.value}")
        self._close()
        self._started_at = now

    def probe_failed(self, now: float, reason: str) -> Verdict:
        """The probe worker did not start or answer: open again, with a
        longer cool-down."""
        if self.breaker is not BreakerState.HALF_OPEN:
            raise ValueError(f"no probe is running: the breaker is {self.breaker.value}")
        in_window = self._record(now, reason)
        return self._open(now, f"probe failed: {reason}", in_window)

    def reset(self) -> None:
        """Operator reset (StartAgent on a Failed agent): close the breaker and
        return the backoff and the cool-down to their first steps.

        Past failures stay in `recent_failures` so the operator can still see
        why the agent failed, but no longer count towards the breaker:
        otherwise the first failure after a reset would reopen it at once.
        """
        self._close()
        self._reopens = 0
        self._started_at = None

    def cooldown_s(self) -> float:
        """The cool-down the next opening will have."""
        s = self.settings
        return min(s.breaker_cooldown_max_s, s.breaker_cooldown_s * 2.0 ** min(self._reopens, 64))

    @property
    def recent_failures(self) -> list[tuple[float, str]]:
        """(time, reason) of the failures within the window as of the latest
        failure, newest last; at most max_failures + 1 of them."""
        return [(f.at, f.reason) for f in self._failures]

    @property
    def attempt(self) -> int:
        """Consecutive restarts since the last healthy period."""
        return self._attempt

    def _record(self, now: float, reason: str) -> int:
        """Count a failure at `now`; returns the failures in the window."""
        if self._failures and now < self._failures[-1].at:
            raise ValueError(f"now={now!r} is before the previous failure at {self._failures[-1].at!r}")
        s = self.settings
        if self._started_at is not None and now - self._started_at >= s.reset_after_s:
            self._attempt = 0
            self._reopens = 0
        # The worker is down now; only a new on_start can begin a healthy run.
        self._started_at = None
        self._failures.append(_Failure(now, reason, counts=True))
        # The window is (now - window_s, now]: a failure exactly window_s old
        # has left it, so failures spaced exactly window_s apart never add up.
        while now - self._failures[0].at >= s.window_s:
            self._failures.popleft()
        return sum(f.counts for f in self._failures)

    def _open(self, now: float, reason: str, in_window: int) -> Verdict:
        self.breaker = BreakerState.OPEN
        self.opened_at = now
        self.open_reason = reason
        if not self.settings.auto_recover:
            return Verdict(Decision.GIVE_UP, 0.0, in_window, reason)
        cooldown = self.cooldown_s()
        self._reopens += 1
        return Verdict(Decision.OPEN, cooldown, in_window, f"{reason}; next attempt in {cooldown:g}s")

    def _close(self) -> None:
        self._failures = deque(
            (f._replace(counts=False) for f in self._failures), maxlen=self._failures.maxlen
        )
        self._attempt = 0
        self.breaker = BreakerState.CLOSED

    def _delay(self, step: int) -> float:
        s = self.settings
        try:
            base = min(s.max_delay_s, s.initial_delay_s * s.factor**step)
        except OverflowError:
            # factor**step past the float range: a long crash loop under a
            # loose breaker, far beyond the cap (unless there is no delay at all).
            base = s.max_delay_s if s.initial_delay_s > 0 else 0.0
        # Jitter spreads the restarts of agents that crashed together (e.g. a
        # shared dependency went away) so they do not all come back at once.
        jittered = base * self._rng.uniform(1 - s.jitter, 1 + s.jitter)
        return min(max(jittered, 0.0), s.max_delay_s)
