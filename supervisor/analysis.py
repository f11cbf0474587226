"""Rollout analysis: the verdict on a candidate version — pass, fail or
inconclusive, with the reason in words and numbers.

The input is what the metrics already count per agent version (outcomes and
the latency histogram of `metrics.Series`), taken over a window as the
difference of two `Series.counts()`. Pure: no I/O and no clock; the rollout
decides when to sample and what to do with the verdict.

A failure is declared as soon as it is certain rather than after a fixed
number of messages: the error rate is measured against at least
`min_messages`, so a few errors from a bad version fail it at once (even if
every message still to come up to the minimum succeeded, the limit would be
breached), while a good version needs `min_messages` to pass.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

import grpc

from .metrics import BUCKETS

# Outcomes that are not errors: a reply, or a handler that chose not to reply.
SUCCESSES = frozenset({"ok", "no_reply"})

# Causes of a FAIL; they are label values of caxton_rollbacks_total.
ERROR_RATE = "error-rate"
LATENCY = "latency"
SHADOW_MISMATCH = "shadow-mismatch"

LATENCY_QUANTILE = 0.99
# A p99 of fewer samples is only their maximum: one cold start or one GC
# pause would decide it.
LATENCY_SAMPLES = 100

COMPARE_MODES = ("exact", "outcome")

# One slot per finite bound, then +Inf.
_SLOTS = len(BUCKETS) + 1

Counts = tuple[Mapping[str, int], list[int], float]  # the shape of metrics.Series.counts()


@dataclass(frozen=True)
class Sample:
    """One version's messages over a window."""

    outcomes: Mapping[str, int]  # 'ok', 'no_reply' or lower-case gRPC status names
    buckets: tuple[int, ...]  # per metrics.BUCKETS, +Inf last

    def __post_init__(self) -> None:
        if len(self.buckets) != _SLOTS:
            raise ValueError(f"a sample has {_SLOTS} latency buckets (+Inf last), not {len(self.buckets)}")
        if any(n < 0 for n in self.buckets) or any(n < 0 for n in self.outcomes.values()):
            raise ValueError("a sample's counts cannot be negative")
        # A read-only copy: the caller's dict may go on changing.
        object.__setattr__(self, "outcomes", MappingProxyType({k: n for k, n in self.outcomes.items() if n}))
        object.__setattr__(self, "buckets", tuple(self.buckets))

    @classmethod
    def between(cls, earlier: Counts | None, later: Counts) -> Sample:
        """The messages counted between two `Series.counts()`; `earlier`
        None means from zero. A count that went down was reset (a series
        starts again from zero), so its later value is the whole delta, as
        Prometheus' rate() takes it."""
        outcomes, buckets, _ = later
        if earlier is None:
            return cls(dict(outcomes), tuple(buckets))
        was_outcomes, was_buckets, _ = earlier
        return cls(
            {k: _delta(n, was_outcomes.get(k, 0)) for k, n in outcomes.items()},
            tuple(_delta(n, was) for n, was in zip(buckets, was_buckets, strict=True)),
        )

    @classmethod
    def empty(cls) -> Sample:
        return cls({}, (0,) * _SLOTS)

    def __add__(self, other: object) -> Sample:
        """Two windows summed."""
        if not isinstance(other, Sample):
            return NotImplemented
        outcomes = dict(self.outcomes)
        for k, n in other.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + n
        return Sample(outcomes, tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)))

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k not in SUCCESSES)

    @property
    def error_rate(self) -> float:
        total = self.total
        return self.errors / total if total else 0.0

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the latency, in seconds, interpolated linearly
        inside its bucket as Prometheus' histogram_quantile does (the first
        bucket starts at 0); a quantile that falls in +Inf is the highest
        finite bound. None when nothing was timed."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, not {q}")
        observed = sum(self.buckets)
        if not observed:
            return None
        rank = q * observed
        below = 0
        for i, bound in enumerate(BUCKETS):
            count = self.buckets[i]
            # Empty buckets are skipped so that q=0 lands in the first occupied one.
            if count and below + count >= rank:
                lower = BUCKETS[i - 1] if i else 0.0
                return lower + (bound - lower) * (rank - below) / count
            below += count
        return BUCKETS[-1]

    def error_kinds(self) -> str:
        """The errors by outcome, most frequent first: 'internal 5, unavailable 1'."""
        kinds = sorted(((n, k) for k, n in self.outcomes.items() if k not in SUCCESSES), key=lambda x: (-x[0], x[1]))
        return ", ".join(f"{k} {n}" for n, k in kinds)


def _delta(now: int, was: int) -> int:
    return now - was if now >= was else now


class Result(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float = 0.05  # absolute, for the candidate
    max_latency_ratio: float = 3.0  # candidate p99 / stable p99
    min_messages: int = 20  # before a PASS (and before a latency judgement)
    max_mismatch_rate: float = 0.01  # shadow comparison
    latency_floor_s: float = 0.005  # p99s below this are treated as this (no breach from sub-ms noise)


@dataclass(frozen=True)
class Verdict:
    result: Result
    reason: str  # in words, with the numbers
    cause: str = ""  # on FAIL: ERROR_RATE, LATENCY or SHADOW_MISMATCH


def check_thresholds(t: Thresholds) -> Thresholds:
    """`t` if every field is in range; else ValueError naming the field."""
    for field in fields(t):
        value = getattr(t, field.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{field.name} must be a number, not {value!r}")
    for name in ("max_error_rate", "max_mismatch_rate"):
        value = getattr(t, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value}")
    if not t.max_latency_ratio >= 1.0:
        raise ValueError(f"max_latency_ratio must be at least 1, not {t.max_latency_ratio}")
    if not isinstance(t.min_messages, int) or t.min_messages < 1:
        raise ValueError(f"min_messages must be a whole number of at least 1, not {t.min_messages}")
    if not (t.latency_floor_s >= 0.0 and math.isfinite(t.latency_floor_s)):
        raise ValueError(f"latency_floor_s must be 0 or more seconds, not {t.latency_floor_s}")
    return t


def judge(stable: Sample, candidate: Sample, t: Thresholds) -> Verdict:
    """The candidate's verdict against its absolute error limit and against
    the stable version's p99 latency over the same window."""
    errors, total = candidate.errors, candidate.total
    measured = f"error rate {_percent(errors, total)} ({errors} of {total})"
    if errors > t.max_error_rate * max(total, t.min_messages):
        reason = f"{measured} over the {t.max_error_rate:.1%} limit: {candidate.error_kinds()}"
        if total < t.min_messages:
            reason += f" (already over the limit for the first {t.min_messages} messages)"
        return Verdict(Result.FAIL, reason, ERROR_RATE)
    if total < t.min_messages:
        return Verdict(Result.INCONCLUSIVE, f"waiting for {total} of {t.min_messages} messages; {measured}")
    latency = _latency(stable, candidate, t)
    if isinstance(latency, Verdict):
        return latency
    return Verdict(Result.PASS, f"{measured} within the {t.max_error_rate:.1%} limit; {latency}")


def _latency(stable: Sample, candidate: Sample, t: Thresholds) -> Verdict | str:
    """A FAIL on latency, or the comparison in words when it passed or
    could not be made."""
    # Timed messages, not outcomes: counts restored after a supervisor
    # restart come without their latencies.
    needed = max(t.min_messages, LATENCY_SAMPLES)
    stable_timed, candidate_timed = sum(stable.buckets), sum(candidate.buckets)
    if stable_timed < needed:
        return f"latency not compared: the stable version has {stable_timed} of {needed} timed messages"
    if candidate_timed < needed:
        return Verdict(Result.INCONCLUSIVE, f"waiting for {candidate_timed} of {needed} messages to compare "
                                            f"p99 latency; error rate {_percent(candidate.errors, candidate.total)}")
    stable_p99, candidate_p99 = stable.quantile(LATENCY_QUANTILE), candidate.quantile(LATENCY_QUANTILE)
    if stable_p99 is None or candidate_p99 is None:
        return "latency not compared: no latencies were recorded"
    floor = t.latency_floor_s
    numerator, denominator = max(candidate_p99, floor), max(stable_p99, floor)
    ratio = numerator / denominator if denominator else math.inf
    words = (f"p99 latency {_ms(candidate_p99)} is {ratio:.1f}x the stable version's {_ms(stable_p99)}"
             + (f" (p99s under {_ms(floor)} count as {_ms(floor)})" if floor > min(candidate_p99, stable_p99) else ""))
    if ratio > t.max_latency_ratio:
        return Verdict(Result.FAIL, f"{words}, over the {t.max_latency_ratio:.1f}x limit", LATENCY)
    return f"{words}, within the {t.max_latency_ratio:.1f}x limit"


def judge_shadow(agreed: int, disagreed: int, t: Thresholds) -> Verdict:
    """The verdict on a shadowed candidate from how often its replies
    agreed with the stable version's."""
    if agreed < 0 or disagreed < 0:
        raise ValueError(f"comparison counts cannot be negative ({agreed} agreed, {disagreed} disagreed)")
    total = agreed + disagreed
    measured = f"mismatch rate {_percent(disagreed, total)} ({disagreed} of {total} replies)"
    if disagreed > t.max_mismatch_rate * max(total, t.min_messages):
        reason = f"{measured} over the {t.max_mismatch_rate:.1%} limit"
        if total < t.min_messages:
            reason += f" (already over the limit for the first {t.min_messages} replies)"
        return Verdict(Result.FAIL, reason, SHADOW_MISMATCH)
    if total < t.min_messages:
        return Verdict(Result.INCONCLUSIVE, f"waiting for {total} of {t.min_messages} compared replies; {measured}")
    return Verdict(Result.PASS, f"{measured} within the {t.max_mismatch_rate:.1%} limit")


def agree(mode: str, stable: tuple[grpc.StatusCode, bytes | None],
          candidate: tuple[grpc.StatusCode, bytes | None]) -> bool:
    """Whether a shadow's result agrees with the stable version's: 'exact'
    wants the same status and the same reply bytes; 'outcome' the same
    status, and a reply from both or from neither."""
    (stable_code, stable_reply), (candidate_code, candidate_reply) = stable, candidate
    if mode == "exact":
        return stable_code == candidate_code and stable_reply == candidate_reply
    if mode == "outcome":
        return stable_code == candidate_code and (stable_reply is None) == (candidate_reply is None)
    raise ValueError(f"unknown compare mode {mode!r}; expected one of {', '.join(COMPARE_MODES)}")


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else f"{0:.1%}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
