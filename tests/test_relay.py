"""The relay's rules, with a transport standing in for the router (pure logic).

End to end, with real agents, in test_agent_messaging.py.
"""

from __future__ import annotations

import itertools

import grpc
import pytest

from caxton.internal.v1 import worker_pb2
from caxton.supervisor.errors import NotFound, ResourceExhausted, Unavailable
from caxton.supervisor.relay import Relay
from caxton.supervisor.send_policy import AllowRule, MessagingSettings
from caxton.v1 import caxton_pb2

OK = grpc.StatusCode.OK


class Transport:
    """Accepts messages for the agents it knows, refuses as told."""

    def __init__(self, agents=("b", "c"), refuse=None):
        self.agents = set(agents)
        self.refuse = refuse or {}
        self.delivered = []  # (message, on_outcome)

    def deliver(self, message, on_outcome):
        if message.receiver in self.refuse:
            raise self.refuse[message.receiver]
        if message.receiver not in self.agents and message.receiver != "a":
            raise NotFound(f"no agent named {message.receiver!r}")
        self.delivered.append((message, on_outcome))

    def to(self, receiver):
        return [(m, cb) for m, cb in self.delivered if m.receiver == receiver]


def _relay(transport, **settings):
    ids = itertools.count(1)
    return Relay(transport, MessagingSettings(**settings), lambda: f"id{next(ids)}")


def _handled(**fields):
    return caxton_pb2.AgentMessage(receiver="a", conversation_id="conv", hops=3, **fields)


def _out(to, content=b"hi", **fields):
    return worker_pb2.Outgoing(to=to, content=content, **fields)


def test_the_runtime_writes_the_envelope():
    transport = Transport()
    relay = _relay(transport)
    relay.sent("a", _handled(), [_out("b", reply_with="r1", performative=caxton_pb2.PERFORMATIVE_PROPOSE)])
    [(message, _)] = transport.delivered
    assert (message.sender, message.receiver, message.conversation_id) == ("a", "b", "conv")
    assert message.performative == caxton_pb2.PERFORMATIVE_PROPOSE and message.reply_with == "r1"
    assert message.hops == 4 and message.message_id == "id1" and message.content == b"hi"
    relay.sent("a", caxton_pb2.AgentMessage(receiver="a"), [_out("b")])
    fresh = transport.delivered[-1][0]
    assert fresh.performative == caxton_pb2.PERFORMATIVE_REQUEST and fresh.conversation_id.startswith("conv-")


def test_a_reply_goes_back_as_an_inform_and_a_failure_as_a_failure():
    transport = Transport()
    relay = _relay(transport)
    relay.sent("a", _handled(), [_out("b", reply_with="r1"), _out("c")])
    (to_b, b_done), (to_c, c_done) = transport.delivered
    b_done(OK, "", b"pong")
    [(reply, _)] = transport.to("a")
    assert reply.performative == caxton_pb2.PERFORMATIVE_INFORM and (reply.sender, reply.content) == ("b", b"pong")
    assert reply.in_reply_to == "r1" and reply.conversation_id == "conv" and reply.hops == 5
    c_done(grpc.StatusCode.UNAVAILABLE, "worker 7 was killed", None)
    failure = transport.to("a")[-1][0]
    assert failure.performative == caxton_pb2.PERFORMATIVE_FAILURE and failure.in_reply_to == to_c.message_id
    assert failure.content.startswith(b"receiver-failed: UNAVAILABLE: worker 7 was killed")
    # No reply, nothing back.
    relay.sent("a", _handled(), [_out("b")])
    transport.delivered[-1][1](OK, "", None)
    assert len(transport.to("a")) == 2
    sent, received = relay.traffic.snapshot()
    assert sent == {("a", "ok"): 2, ("a", "receiver_failed"): 1} and received == {"b": 2, "c": 1, "a": 2}


@pytest.mark.parametrize("transport, settings, reason", [
    (Transport(), {}, b"unknown-agent: nobody"),
    (Transport(refuse={"b": ResourceExhausted("queue full")}), {}, b"inbox-full"),
    (Transport(refuse={"b": Unavailable("agent 'b' has failed")}), {}, b"receiver-failed: agent 'b' has failed"),
    (Transport(), {"allow": (AllowRule("a", "c"),)}, b"denied"),
    (Transport(), {"hop_limit": 3}, b"hop-limit"),
])
def test_what_cannot_be_delivered_comes_back_as_a_failure(transport, settings, reason):
    relay = _relay(transport, **settings)
    receiver = "nobody" if reason.startswith(b"unknown") else "b"
    relay.sent("a", _handled(), [_out(receiver)])
    [(failure, _)] = transport.to("a")
    assert failure.performative == caxton_pb2.PERFORMATIVE_FAILURE and failure.content == reason
    assert not transport.to(receiver)
    label = reason.decode().split(":")[0].replace("-", "_")
    assert relay.traffic.snapshot()[0] == {("a", label): 1}


def test_a_failure_ends_the_chain():
    transport = Transport()
    relay = _relay(transport)
    relay.sent("a", _handled(), [_out("b")])
    transport.delivered[0][1](grpc.StatusCode.INTERNAL, "trapped", None)
    [(failure, failure_done)] = transport.to("a")
    # The sender replies to the FAILURE: that reply goes nowhere.
    failure_done(OK, "", b"sorry")
    assert len(transport.delivered) == 2
    # A FAILURE that cannot be delivered is dropped, not answered with another.
    gone = Transport(agents=("b",), refuse={"a": ResourceExhausted("full")})
    relay = _relay(gone)
    relay.sent("a", _handled(), [_out("nobody")])
    assert gone.delivered == []


def test_replies_are_not_subject_to_the_allow_rules_but_sends_are():
    transport = Transport()
    relay = _relay(transport, allow=(AllowRule("a", "b"),))
    relay.sent("a", _handled(), [_out("b")])
    transport.delivered[0][1](OK, "", b"back to a")  # b -> a is not allowed, but it is a reply
    assert transport.to("a")[0][0].performative == caxton_pb2.PERFORMATIVE_INFORM


def test_every_message_is_traced_in_its_conversation():
    transport = Transport()
    relay = _relay(transport)
    relay.sent("a", _handled(), [_out("b"), _out("nobody")])
    kept = relay.traces.replay("conv", 0.0)
    assert [(e.kind, e.version) for e in kept] == [("delivered", 4), ("unknown-agent: nobody", 4),
                                                   ("delivered", 5)]


def test_an_agent_sending_a_failure_itself_is_checked_like_any_send():
    transport = Transport()
    relay = _relay(transport, hop_limit=3, allow=(AllowRule("a", "c"),))
    relay.sent("a", _handled(), [_out("b", performative=caxton_pb2.PERFORMATIVE_FAILURE)])
    # Past the hop limit (and not allowed): not delivered, and a's FAILURE back says why.
    assert not transport.to("b")
    [(back, _)] = transport.to("a")
    assert back.performative == caxton_pb2.PERFORMATIVE_FAILURE and back.content == b"hop-limit"
