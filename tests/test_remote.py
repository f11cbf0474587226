"""Remote delivery's pure parts (supervisor/remote.py, remote_wire.py): how
long a request may wait, and the batches on the wire. The delivery itself
is exercised end to end by tests/test_cluster.py."""

from __future__ import annotations

import math

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.remote import host_subject, no_responders, request_timeout
from caxton.supervisor.remote_wire import (
    BadFrame,
    pack_answers,
    pack_requests,
    unpack_answers,
    unpack_requests,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("remaining, expected", [(10.0, 9.75), (1.0, 0.9), (0.1, 0.09), (0.0, 0.0)])
def test_a_request_gives_up_just_before_its_callers_deadline(remaining, expected):
    clock = Clock()
    assert math.isclose(request_timeout(Deadline.after(remaining, clock=clock), 30.0), expected)


def test_a_message_without_a_deadline_waits_the_configured_time():
    assert request_timeout(Deadline.never(), 30.0) == 30.0


def test_a_batch_of_requests_keeps_its_items_in_order():
    requests = [(1, None, b"first"), (2, 1500, b""), (7, 0, bytes(range(256)) * 40)]
    assert unpack_requests(pack_requests(requests)) == requests
    assert unpack_requests(b"") == []


def test_a_batch_of_answers_carries_replies_errors_and_their_absence():
    answers = [(1, grpc.StatusCode.OK, "", b"pong"), (2, grpc.StatusCode.OK, "", None),
               (3, grpc.StatusCode.RESOURCE_EXHAUSTED, "inbox full", None), (4, grpc.StatusCode.OK, "", b"")]
    assert unpack_answers(pack_answers(answers)) == answers


@pytest.mark.parametrize("data", [b"\x00\x00", pack_requests([(1, None, b"abc")])[:-1]])
def test_a_truncated_batch_is_refused(data):
    with pytest.raises(BadFrame):
        unpack_requests(data)
    with pytest.raises(BadFrame):
        unpack_answers(data[:5] if len(data) > 5 else data)


def test_no_responders_says_which_host_and_that_nothing_was_delivered():
    code, error = no_responders("c")
    assert code == grpc.StatusCode.UNAVAILABLE and "host 'c'" in error and "not delivered" in error


def test_each_host_has_its_own_subject():
    assert host_subject("caxton", "node-1", "msg") == "caxton.host.node-1.msg"
