"""answers.Answers: a batch's OK replies delivered to their sinks in runs,
and counted in their metrics series once per run (pure logic, real Pending
and Series, a sink that keeps what it gets)."""

from __future__ import annotations

import time

import grpc

from caxton.supervisor.answers import Answers
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.mailbox import Pending
from caxton.supervisor.metrics import BUCKETS, Series
from caxton.v1 import caxton_pb2

OK = grpc.StatusCode.OK


class Sink:
    def __init__(self, name: str, calls: list) -> None:
        self.name = name
        self._calls = calls

    def add_replies(self, replies) -> None:
        self._calls.append((self.name, [(callback.tag, reply) for callback, reply in replies]))


class Item:
    """A stream's callback: it has a sink; calling it directly is a bug here."""

    def __init__(self, sink: Sink, tag: int) -> None:
        self.sink = sink
        self.tag = tag

    def __call__(self, code, error, reply) -> None:
        raise AssertionError("a reply with a sink must go to the sink, not to its callback")


def _pending(callback, series: Series | None = None, accepted: float = 0.0) -> Pending:
    pending = Pending(caxton_pb2.AgentMessage(receiver="a", content=b"x"), Deadline.never(), callback)
    if series is not None:
        pending.timed(series, accepted)
    return pending


def test_runs_go_to_each_sink_in_the_batchs_order():
    calls: list = []
    a, b = Sink("a", calls), Sink("b", calls)
    answers = Answers()
    for tag, sink, reply in [(0, a, b"r0"), (1, a, None), (2, b, b"r2"), (3, a, b"r3")]:
        assert answers.add(_pending(Item(sink, tag)), reply)
    assert calls == [("a", [(0, b"r0"), (1, None)]), ("b", [(2, b"r2")])]  # a run ends when the sink changes
    answers.flush()
    assert calls[-1] == ("a", [(3, b"r3")])
    answers.flush()
    assert len(calls) == 3  # nothing twice


def test_a_callback_without_a_sink_is_left_to_the_caller_unclaimed():
    delivered = []
    pending = _pending(lambda code, error, reply: delivered.append(reply))
    answers = Answers()
    assert not answers.add(pending, b"r")
    answers.flush()
    assert delivered == []
    assert pending.resolve(OK, "", b"r") and delivered == [b"r"]


def test_a_message_whose_caller_stopped_waiting_is_neither_delivered_nor_counted():
    calls: list = []
    series = Series("a", 1)
    pending = _pending(Item(Sink("a", calls), 0), series, time.monotonic())
    pending.cancel()
    answers = Answers()
    assert answers.add(pending, b"r")
    answers.flush()
    assert calls == [] and series.counts() == ({}, [0] * (len(BUCKETS) + 1), 0.0)


def test_a_run_is_counted_once_in_its_series_as_each_message_would_be():
    calls: list = []
    sink = Sink("a", calls)
    series, alone = Series("a", 1), Series("a", 1)
    now = time.monotonic()
    # Two frames accepted 3 ms and 30 ms ago, then a message of another
    # version's series: three runs for the counts.
    other = Series("a", 2)
    batch = [(_pending(Item(sink, i), series, now - 0.003), b"r") for i in range(4)]
    batch += [(_pending(Item(sink, 4), series, now - 0.030), None)]
    batch += [(_pending(Item(sink, 5), other, now - 0.003), b"r")]
    answers = Answers()
    for pending, reply in batch:
        assert answers.add(pending, reply)
    answers.flush()
    for pending, reply in batch[:5]:
        alone.record(OK, reply is not None, now - pending.accepted)
    outcomes, buckets, total = series.counts()
    expected_outcomes, expected_buckets, expected_total = alone.counts()
    assert outcomes == expected_outcomes == {"ok": 4, "no_reply": 1}
    assert buckets == expected_buckets
    assert abs(total - expected_total) < 0.005  # clock readings microseconds apart
    assert other.counts()[0] == {"ok": 1}
    assert calls == [("a", [(i, b"r" if i != 4 else None) for i in range(6)])]
