"""Messages end to end: real supervisor, real workers, real wasmtime."""

from __future__ import annotations

import json

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import wait_until


def test_echo_answers_100_messages_in_order(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("echo-100", "echo")
    for i in range(100):
        content = f"message {i} ".encode() * (i % 7 + 1)
        assert sup.send("echo-100", content).reply.content == content
    assert sup.status("echo-100").messages == 100


def test_reply_envelope(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("echo-envelope", "echo")
    response = sup.send(
        "echo-envelope", b"hi", sender="alice", conversation_id="c-1", reply_with="r-7",
        performative=caxton_pb2.PERFORMATIVE_QUERY_REF,
    )
    reply = response.reply
    assert response.has_reply
    envelope = (reply.sender, reply.receiver, reply.conversation_id, reply.in_reply_to)
    assert envelope == ("echo-envelope", "alice", "c-1", "r-7")
    assert reply.performative == caxton_pb2.PERFORMATIVE_INFORM


def test_counter_keeps_state_across_messages(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("counter-state", "counter")
    assert [sup.send("counter-state", b"x").reply.content for _ in range(5)] == [b"1", b"2", b"3", b"4", b"5"]


def test_uppercase(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("upper", "uppercase")
    assert sup.send("upper", b"Hello, World").reply.content == b"HELLO, WORLD"


def test_no_reply(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("silent", "noreply")
    response = sup.send("silent", b"anything")
    assert not response.has_reply
    assert response.reply.content == b""


def test_message_info_gives_the_envelope(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("info", "info")
    # hops is the supervisor's to set: an outside message starts a chain at 0.
    response = sup.send(
        "info", b"x", sender="bob", conversation_id="conv", reply_with="rw", in_reply_to="irt", message_id="m-1",
        performative=caxton_pb2.PERFORMATIVE_ACCEPT_PROPOSAL, hops=7,
    )
    envelope = json.loads(response.reply.content)
    assert envelope == {
        "sender": "bob", "receiver": "info", "performative": "accept-proposal", "conversation_id": "conv",
        "message_id": "m-1", "reply_with": "rw", "in_reply_to": "irt", "hops": 0,
    }


def test_supervisor_assigns_message_ids(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("info-ids", "info")
    ids = {json.loads(sup.send("info-ids", b"x").reply.content)["message_id"] for _ in range(3)}
    assert len(ids) == 3 and "" not in ids


def test_agent_logs_reach_the_supervisor_log(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("logger", "logger")
    assert sup.send("logger", b"a line from the agent").reply.content == b"logged"
    wait_until(lambda: "[logger v1] a line from the agent" in sup.log_text(), 10, "the agent's log line")
    assert "[logger v1] init" in sup.log_text()


def test_send_stream_matches_replies_by_id(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("echo-stream", "echo")
    sup.deploy("upper-stream", "uppercase")

    def frames():
        for frame in range(20):
            items = []
            for k in range(25):
                n = frame * 25 + k
                target = "echo-stream" if n % 2 else "upper-stream"
                message = caxton_pb2.AgentMessage(receiver=target, content=f"m{n}".encode())
                items.append(caxton_pb2.StreamItem(id=n, message=message))
            yield caxton_pb2.SendStreamRequest(items=items)

    results = {}
    for response in sup.messaging.SendStream(frames(), timeout=60):
        for result in response.results:
            assert result.id not in results
            results[result.id] = result
    assert len(results) == 500
    for n, result in results.items():
        assert result.code == 0, result.error
        expected = f"m{n}".encode() if n % 2 else f"M{n}".encode()
        assert result.reply.content == expected


def test_send_stream_reports_errors_per_message(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("echo-stream-err", "echo")
    items = [
        caxton_pb2.StreamItem(id=1, message=caxton_pb2.AgentMessage(receiver="echo-stream-err", content=b"ok")),
        caxton_pb2.StreamItem(id=2, message=caxton_pb2.AgentMessage(receiver="nobody-here", content=b"lost")),
    ]
    responses = sup.messaging.SendStream(iter([caxton_pb2.SendStreamRequest(items=items)]), timeout=30)
    results = {r.id: r for resp in responses for r in resp.results}
    assert results[1].code == 0 and results[1].reply.content == b"ok"
    assert results[2].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "nobody-here" in results[2].error


def test_send_stream_frame_of_mixed_receivers_keeps_each_receivers_order(shared_supervisor):
    """One frame to two counters, with a message too big for one of them and
    one for nobody between: each refused alone with its reason, and each
    counter counts its own messages in the frame's order (a frame is
    offered a receiver at a time, in as few steps as possible)."""
    sup = shared_supervisor
    sup.deploy("count-a", "counter", max_message_bytes=64)
    sup.deploy("count-b", "counter")
    receivers = ["count-a", "count-b", "count-a", "nobody-here", "count-a", "count-b", "count-a", "count-b"]
    items = [caxton_pb2.StreamItem(id=n, message=caxton_pb2.AgentMessage(receiver=r, content=b"x"))
             for n, r in enumerate(receivers)]
    items[2].message.content = b"x" * 65  # over count-a's max_message_bytes
    responses = sup.messaging.SendStream(iter([caxton_pb2.SendStreamRequest(items=items)]), timeout=30)
    results = {r.id: r for response in responses for r in response.results}
    assert sorted(results) == list(range(len(items)))
    assert results[2].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "65 bytes" in results[2].error
    assert results[3].code == grpc.StatusCode.NOT_FOUND.value[0] and "nobody-here" in results[3].error
    assert [results[n].reply.content for n in (0, 4, 6)] == [b"1", b"2", b"3"]
    assert [results[n].reply.content for n in (1, 5, 7)] == [b"1", b"2", b"3"]


def test_unknown_agent_is_not_found(shared_supervisor):
    with pytest.raises(grpc.RpcError) as info:
        shared_supervisor.send("does-not-exist", b"x")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does-not-exist" in info.value.details()


def test_trap_fails_that_message_only(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("trapper", "trap")
    traps = ((b"unreachable", "unreachable"), (b"div0", "division by zero"), (b"recurse", "stack overflow"))
    for content, words in traps:
        with pytest.raises(grpc.RpcError) as info:
            sup.send("trapper", content)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert words in info.value.details()
        assert sup.send("trapper", b"still here").reply.content == b"still here"
    status = sup.status("trapper")
    assert status.instances[0].resets == 3
    assert status.errors == 3


def test_out_of_bounds_reply_is_a_clear_error(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("oob", "oob_reply")
    with pytest.raises(grpc.RpcError) as info:
        sup.send("oob", b"x")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "outside its memory" in info.value.details()


def test_oversized_message_is_refused(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("echo-small", "echo", max_message_bytes=1024)
    with pytest.raises(grpc.RpcError) as info:
        sup.send("echo-small", b"x" * 1025)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1025" in info.value.details()
    assert sup.send("echo-small", b"y" * 1024).reply.content == b"y" * 1024


def test_caller_deadline_is_deadline_exceeded(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("slow-deadline", "slow")
    with pytest.raises(grpc.RpcError) as info:
        sup.send("slow-deadline", b"1500", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sup.send("slow-deadline", b"10").reply.content == b"10"
