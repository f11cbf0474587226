"""Agents talk to agents, end to end: a real supervisor, real workers, real wasmtime.

What a sender gets back (its receivers' replies as INFORMs, the runtime's
FAILUREs) reaches it as messages, which the tests see two ways:
TraceConversation, which lists every agent-to-agent message of a
conversation (replies and FAILUREs included) with its outcome, and the test
agents' own logs: every tests/agents/a2a_*.wat agent logs "<envelope JSON>
<content>" for what other agents send it, read back with AgentLogs.

Agents: ping, pong, fanout and counter from examples/agents; a2a_relay
(sends on request, logs what comes back), a2a_bouncer (keeps a conversation
going), a2a_slowecho, a2a_sendtrap, a2a_forger and a2a_teller from
tests/agents.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client.parser import text_string_to_metric_families

from caxton.v1 import caxton_pb2

from .harness import ROOT, SupervisorProcess, wait_until

REQUEST = caxton_pb2.PERFORMATIVE_REQUEST
INFORM = caxton_pb2.PERFORMATIVE_INFORM
PROPOSE = caxton_pb2.PERFORMATIVE_PROPOSE
FAILURE = caxton_pb2.PERFORMATIVE_FAILURE

Traced = caxton_pb2.TracedMessage


# ---------------------------------------------------------------- observing


def traced(sup: SupervisorProcess, conversation: str) -> list[Traced]:
    """The conversation's agent-to-agent messages, in order, with content."""
    request = caxton_pb2.TraceConversationRequest(conversation_id=conversation, include_content=True)
    return list(sup.lifecycle.TraceConversation(request, timeout=30))


def assert_ping_pong_game(messages: list, rounds: int, conversation: str) -> None:
    """A ping/pong game's trace, in order: ping's REQUEST, then alternating
    INFORMs, each a reply to the one before, one hop more each, none lost
    or doubled."""
    assert len(messages) == 2 * rounds, len(messages)
    ids = set()
    for i, t in enumerate(messages):
        m = t.message
        rally = i // 2 + 1
        if i % 2 == 0:
            assert (m.sender, m.receiver, m.content) == ("ping", "pong", f"ping {rally}/{rounds}".encode()), (i, m)
        else:
            assert (m.sender, m.receiver, m.content) == ("pong", "ping", f"pong {rally}/{rounds}".encode()), (i, m)
        assert m.performative == (REQUEST if i == 0 else INFORM), (i, m)
        assert m.conversation_id == conversation
        assert m.hops == i + 1, (i, m)
        assert t.outcome == "delivered", (i, t)
        assert t.content_bytes == len(m.content)
        assert m.message_id and m.message_id not in ids
        ids.add(m.message_id)
        if i == 0:
            assert not m.in_reply_to
        else:
            assert m.in_reply_to == key(messages[i - 1].message), (i, m)
            assert t.at >= messages[i - 1].at


def wait_traced(sup: SupervisorProcess, conversation: str, done: Callable[[list[Traced]], bool], what: str,
                timeout: float = 60.0) -> list[Traced]:
    return wait_until(lambda: t if done(t := traced(sup, conversation)) else None, timeout, what, interval=0.1)


@dataclass(frozen=True)
class Got:
    """One message an a2a_* agent logged it was handed."""

    envelope: dict
    content: str


_DECODER = json.JSONDecoder()


def log_lines(sup: SupervisorProcess, agent: str) -> list[str]:
    request = caxton_pb2.AgentLogsRequest(name=agent)
    return [line.text for line in sup.lifecycle.AgentLogs(request, timeout=30)]


def got(sup: SupervisorProcess, agent: str) -> list[Got]:
    """What `agent` logged it received ("<envelope JSON> <content>"), oldest first."""
    found = []
    for text in log_lines(sup, agent):
        try:
            envelope, end = _DECODER.raw_decode(text)
        except ValueError:
            continue
        found.append(Got(envelope, text[end + 1:]))
    return found


def wait_got(sup: SupervisorProcess, agent: str, done: Callable[[list[Got]], bool], what: str,
             timeout: float = 60.0) -> list[Got]:
    return wait_until(lambda: g if done(g := got(sup, agent)) else None, timeout, what, interval=0.1)


def key(message: caxton_pb2.AgentMessage) -> str:
    """What a reply to `message` names in its in_reply_to."""
    return message.reply_with or message.message_id


def answers(messages: Sequence[Traced]) -> dict[str, list[Traced]]:
    """Messages by the key of the message they answer."""
    found: dict[str, list[Traced]] = defaultdict(list)
    for t in messages:
        if t.message.in_reply_to:
            found[t.message.in_reply_to].append(t)
    return found


def remove(sup: SupervisorProcess, *names: str) -> None:
    for name in names:
        sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics page, by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sent_total(metrics: dict, agent: str, outcome: str) -> float:
    return metrics.get(("caxton_agent_messages_sent_total", (("agent", agent), ("outcome", outcome))), 0.0)


def received_total(metrics: dict, agent: str) -> float:
    return metrics.get(("caxton_agent_messages_received_total", (("agent", agent),)), 0.0)


# ---------------------------------------------------------------- conversations


def test_ping_and_pong_exchange_a_thousand_messages_in_one_conversation(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("pong")
    sup.deploy("ping")
    try:
        assert sup.send("ping", b"500", conversation_id="pp-500").reply.content == b"started 500"
        wait_until(lambda: "finished after 500 rounds" in log_lines(sup, "ping"), 120,
                   "ping to finish 500 rounds", interval=0.2)
        # ping did not answer pong's last message: nothing can follow. The
        # trace keeps a conversation's newest 1,000 messages by default
        # ([messaging] trace_messages): all of these.
        messages = traced(sup, "pp-500")
        assert_ping_pong_game(messages, 500, "pp-500")
        assert log_lines(sup, "ping").count("finished after 500 rounds") == 1

        # `caxton trace` prints the same conversation, one line per message.
        cli = subprocess.run(
            [sys.executable, "-m", "caxton", "--address", sup.address, "--token-file", str(sup.token_file),
             "trace", "pp-500", "--content"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=90)
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert len(lines) == 1000
        clock = r"\d\d:\d\d:\d\d\.\d{3}"
        first, second = re.escape(messages[0].message.message_id), re.escape(messages[1].message.message_id)
        assert re.fullmatch(rf'{clock} ping -> pong request {first} in-reply-to - "ping 1/500" delivered',
                            lines[0]), lines[0]
        assert re.fullmatch(rf'{clock} pong -> ping inform {second} in-reply-to {first} "pong 1/500" delivered',
                            lines[1]), lines[1]
        assert lines[-1].endswith('"pong 500/500" delivered')
    finally:
        remove(sup, "ping", "pong")


def test_fanout_reaches_five_agents_exactly_once_each(shared_supervisor):
    sup = shared_supervisor
    names = [f"fan-r{i}" for i in range(5)]
    for name in names:
        sup.deploy(name, "counter")
    sup.deploy("fanout")
    try:
        assert sup.send("fanout", ", ".join(names).encode(), conversation_id="fan-1").reply.content == b"sent 5"
        messages = wait_traced(sup, "fan-1", lambda t: len(t) >= 10, "five messages and five replies")
        sent = [t for t in messages if t.message.sender == "fanout"]
        assert sorted(t.message.receiver for t in sent) == names
        requests = {t.message.receiver: t for t in sent}
        for t in requests.values():
            assert t.message.performative == REQUEST and t.message.content == b"hello from fanout"
            assert t.message.hops == 1 and t.outcome == "delivered"
        replies = [t for t in messages if t.message.receiver == "fanout"]
        assert sorted(t.message.sender for t in replies) == names
        for t in replies:
            # A counter's reply is its count: "1" is its first message.
            assert t.message.performative == INFORM and t.message.content == b"1", t
            assert t.message.in_reply_to == key(requests[t.message.sender].message)
            assert t.message.hops == 2 and t.outcome == "delivered"
        # A second copy would be in each counter's mailbox ahead of this message.
        for name in names:
            assert sup.send(name, b"after").reply.content == b"2", name
            assert sup.status(name).messages == 2
        assert len(traced(sup, "fan-1")) == 10
    finally:
        remove(sup, "fanout", *names)


def test_a_loop_is_cut_at_the_hop_limit_and_the_sender_gets_a_failure(supervisor):
    sup = supervisor("[messaging]\nhop_limit = 20\n")
    sup.deploy("loop-a", "a2a_bouncer")
    sup.deploy("loop-b", "a2a_bouncer")
    assert sup.send("loop-a", b"loop-b round and round", conversation_id="loop-1").reply.content == b"0"
    wait_got(sup, "loop-a", lambda g: any(x.envelope["performative"] == "failure" for x in g),
             "loop-a to get its FAILURE")
    messages = traced(sup, "loop-1")
    delivered = [t for t in messages if t.outcome == "delivered" and t.message.performative != FAILURE]
    # Hops 1 to 20 arrive: a -> b at odd depths, b -> a at even ones.
    assert [t.message.hops for t in delivered] == list(range(1, 21))
    for t in delivered:
        a_sends = t.message.hops % 2 == 1
        assert (t.message.sender, t.message.receiver) == (("loop-a", "loop-b") if a_sends else ("loop-b", "loop-a"))
    [cut] = [t for t in messages if t.outcome == "hop-limit"]
    assert (cut.message.sender, cut.message.receiver, cut.message.hops) == ("loop-a", "loop-b", 21)
    assert cut.message.in_reply_to == key(delivered[-1].message)
    [failure] = [t for t in messages if t.message.performative == FAILURE]
    assert failure.message.receiver == "loop-a" and failure.message.content == b"hop-limit"
    assert failure.message.in_reply_to == key(cut.message)
    assert failure.outcome == "delivered"
    assert len(messages) == 22, [(t.message.hops, t.outcome) for t in messages]
    [seen] = [x for x in got(sup, "loop-a") if x.envelope["performative"] == "failure"]
    assert seen.content == "hop-limit" and seen.envelope["in_reply_to"] == key(cut.message)
    assert seen.envelope["conversation_id"] == "loop-1"
    # loop-a did not answer the FAILURE, and loop-b never saw the cut message.
    assert not [x for x in got(sup, "loop-b") if x.envelope["hops"] > 20]
    assert re.search(r"hop.limit", sup.log_text(), re.IGNORECASE), "the cut is logged"


def test_a_full_inbox_fails_back_and_the_sender_keeps_answering(supervisor):
    # At most 20 messages wait for one agent; the sender sends 30 at once to
    # one that takes 300 ms each.
    sup = supervisor("queue_limit = 20\n")
    sup.deploy("if-sender", "a2a_relay")
    sup.deploy("if-slow", "a2a_slowecho")
    sup.deploy("if-echo", "echo")
    assert sup.send("if-sender", b"if-slow*30 300", conversation_id="if-1").reply.content == b",".join([b"0"] * 30)
    # The sender is not held up by the slow agent's full inbox.
    for i in range(5):
        reply = sup.send("if-sender", f"if-echo hi-{i}".encode(), conversation_id=f"if-other-{i}", timeout=10)
        assert reply.reply.content == b"0"
    assert sup.status("if-slow").messages < 20, "the sender answered only once the slow agent was done"

    def settled(messages: list[Traced]) -> bool:
        sends = [t for t in messages if t.message.sender == "if-sender"]
        replied = answers(messages)
        return len(sends) == 30 and all(len(replied[key(t.message)]) == 1 for t in sends)

    messages = wait_traced(sup, "if-1", settled, "every send to be answered")
    sends = [t for t in messages if t.message.sender == "if-sender"]
    accepted = [t for t in sends if t.outcome == "delivered"]
    refused = [t for t in sends if t.outcome == "inbox-full"]
    assert len(accepted) + len(refused) == 30, Counter(t.outcome for t in sends)
    # Its inbox had room for 20 (plus what its worker had taken): the rest were refused.
    assert 20 <= len(accepted) < 30 and refused, (len(accepted), len(refused))
    replied = answers(messages)
    for t in accepted:
        [reply] = replied[key(t.message)]
        assert (reply.message.performative, reply.message.sender, reply.message.content) == (INFORM, "if-slow", b"300")
    for t in refused:
        [failure] = replied[key(t.message)]
        assert failure.message.performative == FAILURE and failure.message.receiver == "if-sender"
        assert failure.message.content == b"inbox-full" and failure.outcome == "delivered"
    # The sender itself got every reply and every FAILURE.
    seen = wait_got(sup, "if-sender", lambda g: len([x for x in g if x.envelope["conversation_id"] == "if-1"]) >= 30,
                    "the sender to handle every answer")
    mine = [x for x in seen if x.envelope["conversation_id"] == "if-1"]
    assert Counter((x.envelope["performative"], x.content) for x in mine) == Counter(
        {("inform", "300"): len(accepted), ("failure", "inbox-full"): len(refused)})
    others = [x for x in seen if x.envelope["conversation_id"].startswith("if-other-")]
    assert sorted(x.content for x in others) == [f"hi-{i}" for i in range(5)]


def test_an_unknown_receiver_fails_back_in_a_fresh_conversation(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("ur-sender", "a2a_relay")
    try:
        # No conversation_id: the send starts a fresh one.
        assert sup.send("ur-sender", b"nobody-here hello").reply.content == b"0"
        [failure] = wait_got(sup, "ur-sender", lambda g: len(g) >= 1, "the FAILURE")
        assert failure.envelope["performative"] == "failure"
        assert failure.content == "unknown-agent: nobody-here"
        conversation = failure.envelope["conversation_id"]
        assert conversation
        sent, back = traced(sup, conversation)
        assert (sent.message.sender, sent.message.receiver) == ("ur-sender", "nobody-here")
        assert sent.outcome.startswith("unknown-agent")
        assert back.message.performative == FAILURE and back.message.receiver == "ur-sender"
        assert back.message.in_reply_to == key(sent.message) == failure.envelope["in_reply_to"]
        assert back.message.content == b"unknown-agent: nobody-here"
    finally:
        remove(sup, "ur-sender")


def test_the_send_budget_bounds_the_sends_of_one_message(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("sb-sender", "a2a_relay")
    sup.deploy("sb-echo", "echo")
    try:
        codes = sup.send("sb-sender", b"sb-echo*70 x", conversation_id="sb-1").reply.content.split(b",")
        assert codes == [b"0"] * 64 + [b"-6"] * 6
        messages = wait_traced(sup, "sb-1", lambda t: len(t) >= 128, "64 messages and their replies")
        assert Counter((t.message.sender, t.outcome) for t in messages) == Counter(
            {("sb-sender", "delivered"): 64, ("sb-echo", "delivered"): 64})
    finally:
        remove(sup, "sb-sender", "sb-echo")


def test_a_streamed_batch_mixing_sends_and_plain_replies_answers_each_once_in_order(shared_supervisor):
    """A batch answered on the API loop stops at the first message whose
    agent sent something, and the rest of it is answered on a pool thread
    (loop_delivery.py): each message still gets exactly its own result, in
    order, and each send is delivered once."""
    sup = shared_supervisor
    sup.deploy("mx-sender", "a2a_relay")
    sup.deploy("mx-echo", "echo")
    try:
        for round_ in range(3):
            conversation = f"mx-{round_}"
            # Every third message sends (and is answered "0"); the others
            # are empty: they name no receiver, so they send nothing and
            # are answered with send's error code.
            contents = [f"mx-echo hi-{i}".encode() if i % 3 == 1 else b"" for i in range(48)]
            items = [caxton_pb2.StreamItem(id=i, message=caxton_pb2.AgentMessage(
                receiver="mx-sender", content=content, conversation_id=conversation))
                for i, content in enumerate(contents)]
            responses = sup.messaging.SendStream(iter([caxton_pb2.SendStreamRequest(items=items)]), timeout=30)
            results = [result for response in responses for result in response.results]
            assert [r.id for r in results] == list(range(48))
            replies = [r.reply.content for r in results]
            assert [replies[i] for i in range(1, 48, 3)] == [b"0"] * 16
            plain = {replies[i] for i in range(48) if i % 3 != 1}
            assert len(plain) == 1 and plain != {b"0"}, plain
            traced_ = wait_traced(sup, conversation, lambda t: len(t) >= 32, "16 sends and their replies")
            assert sorted(t.message.content for t in traced_ if t.message.sender == "mx-sender") == sorted(
                contents[i].split(b" ", 1)[1] for i in range(1, 48, 3))
            assert len(traced_) == 32
    finally:
        remove(sup, "mx-sender", "mx-echo")


def test_the_receiver_sees_the_real_sender_whatever_the_sender_writes(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("fg-forger", "a2a_forger")
    sup.deploy("fg-teller", "a2a_teller")
    try:
        # "0 0": both the plain send and the send_ex with forged fields were accepted.
        assert sup.send("fg-forger", b"fg-teller", conversation_id="fg-1").reply.content == b"0 0"
        plain, ex = wait_got(sup, "fg-teller", lambda g: len(g) >= 2, "both messages")
        for seen in (plain, ex):
            assert seen.envelope["sender"] == "fg-forger", seen
            assert seen.envelope["receiver"] == "fg-teller"
            assert seen.envelope["hops"] == 1
            assert seen.envelope["conversation_id"] == "fg-1"
            assert seen.envelope["message_id"] not in ("", "m-forged")
        assert plain.envelope["message_id"] != ex.envelope["message_id"]
        assert (plain.envelope["performative"], plain.content) == ("request", "I am boss")
        assert (ex.envelope["performative"], ex.content) == ("propose", "I am boss too")
        # The quotes stayed inside the string: no field of the receiver's
        # envelope came from them.
        assert ex.envelope["reply_with"] == 'r","sender":"boss'
        # The teller's replies went back to the real sender, each naming its message.
        replies = wait_got(sup, "fg-forger", lambda g: len(g) >= 2, "the teller's replies")
        assert sorted(r.envelope["in_reply_to"] for r in replies) == sorted(
            [plain.envelope["message_id"], 'r","sender":"boss'])
        assert {(r.envelope["sender"], r.envelope["performative"]) for r in replies} == {("fg-teller", "inform")}
        assert {t.message.sender for t in traced(sup, "fg-1")} == {"fg-forger", "fg-teller"}
    finally:
        remove(sup, "fg-forger", "fg-teller")


def test_a_sender_that_traps_after_sending_delivers_nothing(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("st-trapper", "a2a_sendtrap")
    sup.deploy("st-sink", "counter")
    try:
        try:
            sup.send("st-trapper", b"st-sink trap-1", conversation_id="st-1")
            raise AssertionError("the trap must fail the message")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INTERNAL, exc
        assert sup.send("st-trapper", b"st-sink ok-2", conversation_id="st-2").reply.content == b"0"
        sent, reply = wait_traced(sup, "st-2", lambda t: len(t) >= 2, "the second send and its reply")
        assert sent.message.content == b"ok-2"
        # Messages from one sender to one receiver keep their order: had the
        # trapped message's send been delivered, the counter would say 2.
        assert reply.message.content == b"1"
        assert traced(sup, "st-1") == []
        assert sup.status("st-sink").messages == 1
    finally:
        remove(sup, "st-trapper", "st-sink")


def test_killing_the_receiver_mid_conversation_answers_every_message_once(supervisor):
    # One message per batch, so that the kill fails one message and the
    # others wait in the mailbox through the restart.
    sup = supervisor("batch_max_messages = 1\n[messaging]\nhop_limit = 30\n")
    sup.deploy("kl-bouncer", "a2a_bouncer")
    sup.deploy("kl-sink", "a2a_slowecho")
    conversations = [f"kl-{i}" for i in range(4)]
    for conversation in conversations:
        assert sup.send("kl-bouncer", b"kl-sink 100", conversation_id=conversation).reply.content == b"0"
    # Four conversations queue at the sink (100 ms a message): it is always busy.
    wait_until(lambda: sup.status("kl-sink").messages >= 6, 30, "the conversations to get going")
    [victim] = [i.pid for i in sup.status("kl-sink").instances]
    os.kill(victim, signal.SIGKILL)

    def ended(messages: list[Traced]) -> bool:
        return any(t.message.performative == FAILURE for t in messages)

    traces = {c: wait_traced(sup, c, ended, f"conversation {c} to end", timeout=120) for c in conversations}
    status = sup.status("kl-sink")
    assert status.restarts >= 1 and victim not in [i.pid for i in status.instances]
    endings = Counter()
    delivered_to_sink = set()
    for conversation, messages in traces.items():
        ids = [t.message.message_id for t in messages]
        assert len(ids) == len(set(ids)), f"{conversation}: a message traced twice"
        replied = answers(messages)
        for t in messages:
            if t.message.performative == FAILURE:
                continue
            # Every message sent got exactly one answer: the receiver's reply
            # or a FAILURE, never both, never two.
            assert len(replied[key(t.message)]) == 1, (conversation, t, replied[key(t.message)])
            if t.message.receiver == "kl-sink" and t.outcome == "delivered":
                delivered_to_sink.add(t.message.message_id)
        [failure] = [t for t in messages if t.message.performative == FAILURE]
        assert failure == messages[-1]
        endings[failure.message.content.split(b":", 1)[0]] += 1
    # The kill failed the message being handled; the messages queued behind
    # it waited for the new worker and their conversations went on.
    assert endings[b"receiver-failed"] >= 1 and endings[b"hop-limit"] >= 1, endings
    # None handled twice: the sink logs each message it finished, once.
    handled = Counter(x.envelope["message_id"] for x in got(sup, "kl-sink") if x.envelope["performative"] != "failure")
    assert handled and max(handled.values()) == 1, handled.most_common(3)
    assert set(handled) <= delivered_to_sink


def test_an_allow_rule_denies_the_pairs_it_does_not_match(supervisor):
    sup = supervisor('[[messaging.allow]]\nfrom = "al-relay"\nto = "al-open*"\n')
    sup.deploy("al-relay", "a2a_relay")
    sup.deploy("al-other", "a2a_relay")
    sup.deploy("al-open", "echo")
    sup.deploy("al-closed", "echo")
    for sender, receiver, conversation in [("al-relay", "al-open", "al-1"), ("al-relay", "al-closed", "al-2"),
                                           ("al-other", "al-open", "al-3")]:
        assert sup.send(sender, f"{receiver} hi".encode(), conversation_id=conversation).reply.content == b"0"
    allowed_sent, allowed_reply = wait_traced(sup, "al-1", lambda t: len(t) >= 2, "the allowed pair's exchange")
    assert allowed_sent.outcome == "delivered"
    # The reply goes back on the path the rule allowed.
    assert (allowed_reply.message.performative, allowed_reply.message.content) == (INFORM, b"hi")
    for sender, conversation in [("al-relay", "al-2"), ("al-other", "al-3")]:
        sent, failure = wait_traced(sup, conversation, lambda t: len(t) >= 2, f"the denial in {conversation}")
        assert sent.outcome == "denied"
        assert failure.message.performative == FAILURE and failure.message.receiver == sender
        assert failure.message.content == b"denied" and failure.message.in_reply_to == key(sent.message)
        seen = wait_got(sup, sender, lambda g, c=conversation: any(x.envelope["conversation_id"] == c for x in g),
                        f"{sender} to get its FAILURE", timeout=30)
        [back] = [x for x in seen if x.envelope["conversation_id"] == conversation]
        assert (back.envelope["performative"], back.content) == ("failure", "denied")
    assert sup.status("al-closed").messages == 0


def test_metrics_count_messages_sent_and_received_per_agent(supervisor):
    sup = supervisor('metrics_listen = "127.0.0.1:0"\n[messaging]\nhop_limit = 6\n')
    url = wait_until(lambda: re.search(r"metrics on (http://\S+)", sup.log_text()), 10, "the metrics address").group(1)
    sup.deploy("m-relay", "a2a_relay")
    sup.deploy("m-echo", "echo")
    sup.deploy("m-a", "a2a_bouncer")
    sup.deploy("m-b", "a2a_bouncer")
    assert sup.send("m-relay", b"m-echo*3 hi").reply.content == b"0,0,0"
    assert sup.send("m-relay", b"m-nobody hi").reply.content == b"0"
    # m-a and m-b bounce hops 1 to 6; m-a's hop 7 is cut.
    assert sup.send("m-a", b"m-b x").reply.content == b"0"
    expected_sent = {("m-relay", "ok"): 3, ("m-relay", "unknown_agent"): 1, ("m-echo", "ok"): 3,
                     ("m-a", "ok"): 3, ("m-a", "hop_limit"): 1, ("m-b", "ok"): 3}
    # Received: what was delivered to each, FAILUREs from the runtime included.
    expected_received = {"m-echo": 3, "m-relay": 4, "m-b": 3, "m-a": 4}

    def counted() -> dict | None:
        metrics = scrape(url)
        sent = {k: sent_total(metrics, *k) for k in expected_sent}
        received = {agent: received_total(metrics, agent) for agent in expected_received}
        return metrics if (sent, received) == (expected_sent, expected_received) else None

    try:
        metrics = wait_until(counted, 30, "the messages to be counted", interval=0.2)
    except AssertionError:
        metrics = scrape(url)
        raise AssertionError(f"sent {[(k, sent_total(metrics, *k)) for k in expected_sent]}, received "
                             f"{[(a, received_total(metrics, a)) for a in expected_received]}") from None
    # Per agent, never per sender-receiver pair: no label names the other party.
    for name, labels in metrics:
        if name.startswith("caxton_agent_messages_sent"):
            assert {label for label, _ in labels} == {"agent", "outcome"}, (name, labels)
        elif name.startswith("caxton_agent_messages_received"):
            assert {label for label, _ in labels} == {"agent"}, (name, labels)
