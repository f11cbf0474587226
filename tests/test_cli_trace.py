"""`caxton trace`: its arguments, its lines, and the request it makes.

The command runs as `caxton` runs it, against a real gRPC server in this
process whose AgentLifecycle is a fake that records the request and streams
canned messages: the CLI's own logic is under test here; traces of real
conversations are tested end to end in test_agent_messaging.py.
"""

from __future__ import annotations

import json
import re
import threading

import grpc
import pytest

from caxton.client import cli
from caxton.client.trace import performative_name, trace_line
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .fake_lifecycle import serving

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


def parse(*argv: str):
    return cli._parser().parse_args(list(argv))


def message(**fields) -> caxton_pb2.TracedMessage:
    content = fields.pop("content", b"ping 1/3")
    outcome = fields.pop("outcome", "delivered")
    envelope = dict(performative=caxton_pb2.PERFORMATIVE_REQUEST, sender="ping", receiver="pong",
                    conversation_id="c-1", message_id="m-1", hops=1) | fields
    return caxton_pb2.TracedMessage(at=1_700_000_000.25, message=caxton_pb2.AgentMessage(content=content, **envelope),
                                    content_bytes=len(content), outcome=outcome)


# ---------------------------------------------------------------- arguments


def test_trace_takes_a_conversation_and_asks_for_nothing_more_by_default():
    args = parse("trace", "c-1")
    assert args.command == "trace" and args.conversation == "c-1"
    assert (args.follow, args.content, args.json) == (False, False, False)


def test_trace_without_a_conversation_covers_every_conversation():
    assert parse("trace").conversation == ""


@pytest.mark.parametrize("flags", [["--follow", "--content", "--json"], ["-f", "--content", "--json"]])
def test_trace_flags(flags):
    args = parse("trace", "c-1", *flags)
    assert (args.follow, args.content, args.json) == (True, True, True)


def test_trace_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as exited:
        parse("trace", "c-1", "--contents")
    assert exited.value.code == 2
    assert "--contents" in capsys.readouterr().err


# ---------------------------------------------------------------- lines


def test_a_line_shows_time_parties_performative_ids_size_and_outcome():
    line = trace_line(message())
    assert re.fullmatch(rf"{CLOCK} ping -> pong request m-1 in-reply-to - 8 bytes delivered", line), line


def test_a_reply_names_the_message_it_answers():
    line = trace_line(message(sender="pong", receiver="ping", performative=caxton_pb2.PERFORMATIVE_INFORM,
                              message_id="m-2", in_reply_to="m-1", content=b"pong 1/3"))
    assert line.endswith(" pong -> ping inform m-2 in-reply-to m-1 8 bytes delivered"), line


def test_a_refused_message_shows_why():
    line = trace_line(message(receiver="nobody", outcome="unknown-agent: nobody"))
    assert line.endswith(" ping -> nobody request m-1 in-reply-to - 8 bytes unknown-agent: nobody"), line


def test_content_is_escaped_and_quoted_on_one_line():
    line = trace_line(message(content=b'a\nb"c\\d\x1b[31m\xc2\x85\xff'), content=True)
    assert line.endswith(r' "a\nb\"c\\d\x1b[31m\u0085' + "\ufffd" + '" delivered'), line
    assert "\n" not in line and "\x1b" not in line


def test_every_conversation_prefixes_each_line_with_its_conversation():
    line = trace_line(message(conversation_id="c-9"), conversation=True)
    assert re.fullmatch(rf"{CLOCK} \[c-9\] ping -> pong request m-1 in-reply-to - 8 bytes delivered", line), line


def test_a_follower_that_fell_behind_is_told_so():
    line = trace_line(caxton_pb2.TracedMessage(at=1_700_000_000.0, outcome="dropped"))
    assert re.fullmatch(rf"{CLOCK} messages dropped: this trace fell behind", line), line


@pytest.mark.parametrize(("value", "name"), [
    (caxton_pb2.PERFORMATIVE_UNSPECIFIED, "request"),
    (caxton_pb2.PERFORMATIVE_FAILURE, "failure"),
    (caxton_pb2.PERFORMATIVE_ACCEPT_PROPOSAL, "accept-proposal"),
    (99, "99"),
])
def test_performatives_are_named_as_message_info_names_them(value, name):
    assert performative_name(value) == name


# ---------------------------------------------------------------- the command


class FakeTracer(caxton_pb2_grpc.AgentLifecycleServicer):
    """Streams `messages` for TraceConversation, records each request and
    the time it had left (grpc reports about 2**63 s without a deadline);
    `refuse` answers PERMISSION_DENIED."""

    def __init__(self) -> None:
        self.messages: list[caxton_pb2.TracedMessage] = []
        self.requests: list[caxton_pb2.TraceConversationRequest] = []
        self.deadlines: list[float] = []
        self.refuse = False

    def TraceConversation(self, request, context):
        self.requests.append(request)
        self.deadlines.append(context.time_remaining())
        if self.refuse:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "content needs the deployer or admin role")
        yield from self.messages


@pytest.fixture
def fake():
    servicer = FakeTracer()
    with serving(servicer) as address:
        servicer.address = address
        yield servicer


def run(fake: FakeTracer, *argv: str) -> int | str | None:
    """`caxton --address FAKE ARGV...` in this process, to its exit code."""
    code: list[int | str | None] = []

    def main() -> None:
        try:
            cli.main(["--address", fake.address, "--token", "t", *argv])
        except SystemExit as exc:
            code.append(exc.code)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the CLI did not end"
    return code[0]


def test_trace_prints_one_line_per_message_and_asks_with_a_deadline(fake, capsys):
    fake.messages = [message(), message(sender="pong", receiver="ping", message_id="m-2", in_reply_to="m-1",
                                        performative=caxton_pb2.PERFORMATIVE_INFORM, content=b"pong 1/3")]
    assert run(fake, "trace", "c-1") == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" ping -> pong request m-1 in-reply-to - 8 bytes delivered")
    assert lines[1].endswith(" pong -> ping inform m-2 in-reply-to m-1 8 bytes delivered")
    [request] = fake.requests
    assert request == caxton_pb2.TraceConversationRequest(conversation_id="c-1")
    # --rpc-timeout's default, 60 s (gRPC may round the deadline it sends up a little)
    assert 55 < fake.deadlines[0] <= 61


def test_follow_and_content_reach_the_request_and_a_followed_trace_has_no_deadline(fake, capsys):
    fake.messages = [message()]
    assert run(fake, "trace", "c-1", "--follow", "--content") == 0
    assert capsys.readouterr().out.endswith(' "ping 1/3" delivered\n')
    [request] = fake.requests
    assert request == caxton_pb2.TraceConversationRequest(conversation_id="c-1", follow=True, include_content=True)
    assert fake.deadlines[0] > 10**9


def test_json_prints_one_object_per_message(fake, capsys):
    fake.messages = [message(), message(message_id="m-2")]
    assert run(fake, "trace", "c-1", "--json") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["message"]["message_id"] for r in records] == ["m-1", "m-2"]
    assert records[0]["outcome"] == "delivered" and records[0]["content_bytes"] == 8
    assert records[0]["message"]["performative"] == "PERFORMATIVE_REQUEST"


def test_a_refusal_is_one_error_line(fake, capsys):
    fake.refuse = True
    assert run(fake, "trace", "c-1", "--content") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "caxton: PERMISSION_DENIED: content needs the deployer or admin role\n"
