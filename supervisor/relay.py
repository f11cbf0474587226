"""Messages agents send to agents: enveloped by the runtime, routed, answered.

What an agent sends with `caxton.send` while handling a message comes back
from its worker with that message's result, and only if the message
completed (a trap sends nothing). The relay then gives each one its
envelope (the runtime's, not the agent's: `sender` is the sending agent's
name, `message_id` is fresh, `hops` is one more than the message being
handled; the conversation carries over) and hands it to the router like any
message, so it queues, is ordered per sender and receiver, survives a
restart of the receiving worker and is handled at most once.

Whatever becomes of it comes back to the sender as a message: the
receiver's reply as an INFORM (`in_reply_to` the original's `reply_with`
or `message_id`), or a FAILURE whose content says why (`unknown-agent:
NAME`, `denied`, `inbox-full`, `hop-limit`, `receiver-failed: ...`). A
FAILURE ends a chain: a reply to it, or a failure to deliver it, is
dropped. Nothing here waits: a full inbox is a FAILURE, never a blocked
sender.

Leaving the host: delivery goes through `Transport` (`LocalTransport`, the
router). In a cluster the router itself sends a receiver that runs on
another host over NATS (remote.py): the same AgentMessage envelope to that
supervisor's subject, whose router takes it and answers the outcome; agents,
the ABI and the envelope stay as they are. Such an outcome can come back
(on the link's thread) before the sending thread has traced the message:
it is held until then, so a trace always reads in causal order.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from caxton.internal.v1 import worker_pb2
from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .errors import CaxtonError, InvalidArgument, NotFound, ResourceExhausted
from .events import EventBus
from .mailbox import OutcomeCallback
from .metrics import AgentTraffic
from .send_policy import MessagingSettings

log = logging.getLogger("caxton.relay")

FAILURE = caxton_pb2.PERFORMATIVE_FAILURE
INFORM = caxton_pb2.PERFORMATIVE_INFORM
REQUEST = caxton_pb2.PERFORMATIVE_REQUEST

# How much of each message's content a trace keeps (for TraceConversation's
# include_content): enough to read a conversation, bounded in memory.
TRACE_CONTENT_BYTES = 256


class Transport(Protocol):
    def deliver(self, message: caxton_pb2.AgentMessage, on_outcome: OutcomeCallback) -> None:
        """Accept `message` for its receiver or raise: NotFound (no such
        agent), ResourceExhausted (its inbox is full), another CaxtonError
        (it cannot take messages now). The outcome goes to `on_outcome`."""


class LocalTransport:
    """Delivery to an agent of this supervisor, through its router."""

    def __init__(self, submit: Callable[[caxton_pb2.AgentMessage, Deadline, OutcomeCallback], object]) -> None:
        self._submit = submit

    def deliver(self, message: caxton_pb2.AgentMessage, on_outcome: OutcomeCallback) -> None:
        self._submit(message, Deadline.never(), on_outcome)


class Relay:
    def __init__(self, transport: Transport, settings: MessagingSettings, new_id: Callable[[], str],
                 traffic: AgentTraffic | None = None, traces: EventBus | None = None) -> None:
        self._transport = transport
        self.settings = settings
        self._new_id = new_id
        self.traffic = traffic or AgentTraffic()
        self.traces = traces or EventBus(history=settings.trace_messages, per_agent=True,
                                         max_keys=settings.trace_conversations)

    def sent(self, sender: str, handled: caxton_pb2.AgentMessage, outgoing: Sequence[worker_pb2.Outgoing]) -> None:
        """What agent `sender` sent while handling `handled` (which completed)."""
        for out in outgoing:
            message = caxton_pb2.AgentMessage(
                performative=out.performative or REQUEST, sender=sender, receiver=out.to,
                conversation_id=out.conversation_id or handled.conversation_id or f"conv-{self._new_id()}",
                reply_with=out.reply_with, message_id=self._new_id(), content=out.content, hops=handled.hops + 1,
            )
            self._send(message, checked=True)

    def suppressed(self, sender: str, count: int) -> None:
        """A shadow (a parallel rollout's candidate) must not act on the world."""
        self.traffic.count_sent(sender, "suppressed", count)

    def _send(self, message: caxton_pb2.AgentMessage, *, checked: bool = False) -> None:
        """Deliver `message`; `checked`: an agent's own send, which the
        policy must allow (a reply goes back on a path already allowed)."""
        # The runtime's own FAILUREs end chains and go unchecked; an agent
        # that sends a FAILURE itself is checked like any of its sends.
        failure = message.performative == FAILURE and not checked
        refusal = "" if failure else self._refusal(message, checked)
        gate = _TracedFirst(functools.partial(self._outcome, message))
        if not refusal:
            try:
                self._transport.deliver(message, gate.outcome)
            except NotFound:
                refusal = f"unknown-agent: {message.receiver}"
            except InvalidArgument:
                refusal = f"unknown-agent: {message.receiver}"  # an empty or malformed name
            except ResourceExhausted:
                refusal = "inbox-full"
            except CaxtonError as exc:
                refusal = f"receiver-failed: {exc.message}"
        self._trace(message, refusal or "delivered")
        gate.traced()
        if not refusal:
            self.traffic.count_received(message.receiver)
            return
        if failure:
            log.info("a FAILURE for %s could not be delivered (%s); dropped", message.receiver, refusal)
            return
        self.traffic.count_sent(message.sender, _label(refusal))
        self._fail_back(message, refusal)

    def _refusal(self, message: caxton_pb2.AgentMessage, checked: bool) -> str:
        if message.hops > self.settings.hop_limit:
            log.warning("hop limit (%d) reached in conversation %s: %s -> %s not delivered",
                        self.settings.hop_limit, message.conversation_id, message.sender, message.receiver)
            return "hop-limit"
        if checked and not self.settings.allows(message.sender, message.receiver):
            return "denied"
        return ""

    def _outcome(self, message: caxton_pb2.AgentMessage, code: grpc.StatusCode, error: str,
                 reply: bytes | None) -> None:
        """The receiver is done with `message` (on its dispatcher thread:
        nothing here blocks)."""
        if message.performative == FAILURE:
            return  # a FAILURE ends the chain: its reply goes nowhere
        if code is not grpc.StatusCode.OK:
            self.traffic.count_sent(message.sender, "receiver_failed")
            self._fail_back(message, f"receiver-failed: {code.name}: {error}")
            return
        self.traffic.count_sent(message.sender, "ok")
        if reply is None:
            return
        self._send(caxton_pb2.AgentMessage(
            performative=INFORM, sender=message.receiver, receiver=message.sender,
            conversation_id=message.conversation_id, in_reply_to=message.reply_with or message.message_id,
            message_id=self._new_id(), content=reply, hops=message.hops + 1,
        ))

    def _fail_back(self, message: caxton_pb2.AgentMessage, reason: str) -> None:
        self._send(caxton_pb2.AgentMessage(
            performative=FAILURE, sender=message.receiver, receiver=message.sender,
            conversation_id=message.conversation_id, in_reply_to=message.reply_with or message.message_id,
            message_id=self._new_id(), content=reason.encode(), hops=message.hops + 1,
        ))

    def _trace(self, message: caxton_pb2.AgentMessage, outcome: str) -> None:
        self.traces.publish(message.conversation_id, outcome, message.hops, json.dumps({
            "sender": message.sender, "receiver": message.receiver,
            "performative": caxton_pb2.Performative.Name(message.performative),
            "message_id": message.message_id, "in_reply_to": message.in_reply_to,
            "reply_with": message.reply_with, "content_bytes": len(message.content),
            "content": message.content[:TRACE_CONTENT_BYTES].decode("latin-1"),
        }))


class _TracedFirst:
    """A message's outcome, held back until the message has been traced."""

    __slots__ = ("_then", "_lock", "_traced", "_held")

    def __init__(self, then: OutcomeCallback) -> None:
        self._then = then
        self._lock = threading.Lock()
        self._traced = False
        self._held: tuple[grpc.StatusCode, str, bytes | None] | None = None

    def outcome(self, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        with self._lock:
            if not self._traced:
                self._held = (code, error, reply)
                return
        self._then(code, error, reply)

    def traced(self) -> None:
        with self._lock:
            self._traced = True
            held, self._held = self._held, None
        if held is not None:
            self._then(*held)


def _label(refusal: str) -> str:
    """A refusal as a metric label: 'unknown-agent: x' -> 'unknown_agent'."""
    return refusal.split(":", 1)[0].replace("-", "_")
