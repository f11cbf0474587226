"""What counting one message for Prometheus costs: `Pending.timed` and the record at its outcome.

For every message it accepts, the router marks the message's `Pending` as
timed in its agent version's `Series` (reading the clock), and when the
result comes, `Pending.resolve` maps the status to an outcome label, records
it and the elapsed time in the series (one lock, a dict entry, a bisect into
the histogram buckets) and calls the outcome callback. Measured here, in
process, each beside its baseline in the same run:

- **bare**: a `Pending` built and resolved, with no series (what a message
  costs without metrics);
- **counted**: the same, timed in a series, with an OK reply (an `ok`
  outcome), as the router and the dispatcher do;
- **record**: `Series.record` alone, the part under the lock.

The callback only counts its calls, the same in every variant, and every
variant checks afterwards that each call was counted (by the callback, and
by the series where there is one), so a broken path cannot look fast. The
figure to read is the difference, counted minus bare: what metrics add to a
message (the issue: well under a microsecond).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.mailbox import Pending
from caxton.supervisor.metrics import Series
from caxton.v1 import caxton_pb2

from . import report

ROUNDS = 30
ITERATIONS = 20_000
REPLY = b"x" * 100
OK = grpc.StatusCode.OK
MESSAGE = caxton_pb2.AgentMessage(receiver="bench", content=b"x" * 100)
NEVER = Deadline.never()
LABELS = {
    "bare": "Pending + resolve",
    "counted": "Pending + timed(series) + resolve",
    "record": "Series.record",
}

# The rows this file adds to the summary table (bench/report.py).
report.ROWS.extend([
    report.Row("metrics", "metrics.counted", "metrics.bare"),
    report.Row("metrics", "metrics.record", "metrics.bare"),
    report.Row("metrics", "metrics.cost", target="well under 1 µs (1,000 ns)"),
])


class Callback:
    """An outcome callback that only counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        self.calls += 1


def _variant(kind: str, series: Series, callback: Callback) -> Callable[[], None]:
    """One message's worth of `kind`, as a call without arguments, so every
    variant pays the same call overhead from the benchmark's loop."""
    if kind == "bare":
        def bare() -> None:
            Pending(MESSAGE, NEVER, callback).resolve(OK, "", REPLY)
        return bare
    if kind == "counted":
        def counted() -> None:
            pending = Pending(MESSAGE, NEVER, callback)
            pending.timed(series, time.monotonic())
            pending.resolve(OK, "", REPLY)
        return counted

    def record() -> None:
        series.record(OK, True, 0.0004)
    return record


@pytest.mark.benchmark(group="metrics: counting one message")
@pytest.mark.parametrize("kind", list(LABELS))
def test_counting_one_message(benchmark, kind: str) -> None:
    series = Series("bench", 1)
    callback = Callback()
    benchmark.pedantic(_variant(kind, series, callback), rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)
    calls = (ROUNDS + 1) * ITERATIONS + 1  # the warm-up round, and pedantic's last call for its result
    outcomes, buckets, _ = series.counts()
    if kind == "bare":
        assert (callback.calls, outcomes) == (calls, {})
    else:
        assert outcomes == {"ok": calls} and sum(buckets) == calls
        assert callback.calls == (calls if kind == "counted" else 0)
    # The fastest round (each averages ITERATIONS calls): the least disturbed
    # on a shared machine, which matters for differences of tens of ns.
    best_ns = benchmark.stats.stats.min * 1e9
    benchmark.extra_info.update(per_call_ns=round(best_ns, 1),
                                median_round_ns=round(benchmark.stats.stats.median * 1e9, 1))
    report.record(f"metrics.{kind}", best_ns, "ns", LABELS[kind])
    if kind == "counted" and "metrics.bare" in report.FIGURES:
        cost = best_ns - report.FIGURES["metrics.bare"].value
        benchmark.extra_info["cost_ns"] = round(cost, 1)
        report.record("metrics.cost", cost, "ns", "counting one message (counted - bare)")
