"""Remote delivery: a message for an agent on another host, over NATS.

The router (router.py) hands a message here when its receiver is not local
and the directory (directory.py) names the host running it. It goes, as the
same AgentMessage envelope it arrived as, in a NATS request to that host's
subject `PREFIX.host.HOST.msg` (batched with whatever else is going there at
that moment: remote_wire.py); that host's `RemoteInbox` submits it to its
own router exactly as a local message (same size limit, mailbox, ordering
and error codes) and answers with the outcome, which settles the caller's
Pending here. So `Messaging.Send`, `SendStream` and `caxton.send` reach
remote agents with nothing changed on their side. A local agent never
touches NATS.

Rules, for "exactly once or a clear error":
- never a retry: a request is published once; whatever goes wrong after
  that is UNAVAILABLE for the caller, saying what and whether the message
  may have been delivered;
- no waiting past the caller: a request's timer fires a little before the
  caller's deadline (or after `request_timeout_s` for a message that has
  none, such as an agent's send), and the receiving host gets the deadline
  too, so it drops a message whose caller gave up;
- not connected to NATS: refused at once, never buffered to go out later;
  losing the connection fails every request waiting for an answer;
- no responders (the host is gone or cut off and NATS knows it): at once;
- order per sender-receiver pair: one connection publishes in call order
  (one outbox, drained in order; a batch keeps its items' order) and the
  receiving host handles one subscription's requests one after the other,
  each only submitted (never waited for) in arrival order.

Identity: `sender` is set by the sending supervisor (an outside caller's
bound name, or the sending agent's name) and taken as it comes: agents have
no network, so only supervisors holding the cluster's NATS credentials can
publish on these subjects (restrict PREFIX.host.> to them in NATS's own
authorization).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import grpc

from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .directory import Directory
from .errors import CaxtonError, ResourceExhausted, Unavailable
from .mailbox import OutcomeCallback, Pending
from .nats_link import NatsLink
from .remote_wire import (
    REQUEST_OVERHEAD,
    Answer,
    BadFrame,
    Request,
    pack_answers,
    pack_requests,
    unpack_answers,
    unpack_requests,
)

log = logging.getLogger("caxton.cluster")

HEADER_FROM = "Caxton-From"
# Where a batch's answers go (the sending host's answer inbox).
HEADER_ANSWERS = "Caxton-Answers"
# An answer that is not a batch: an error for the whole request (queries).
HEADER_STATUS = "Caxton-Status"
NO_RESPONDERS = "503"
# Requests waiting for their answer at once, beyond which a send is
# refused (RESOURCE_EXHAUSTED): what a host may hold for other hosts.
MAX_IN_FLIGHT = 65_536
# A batch is published once it holds this many messages or bytes (or at
# the end of the loop's turn, whichever comes first).
BATCH_MESSAGES = 512
BATCH_BYTES = 512 << 10
# What a subscription may hold before nats-py drops (a slow consumer).
SUBSCRIPTION_BYTES = 64 << 20
# A request gives up this much before its caller's deadline (at most a
# tenth of it), so the caller hears UNAVAILABLE, not a bare deadline.
DEADLINE_MARGIN_S = 0.25

SubmitLocal = Callable[[caxton_pb2.AgentMessage, Deadline, OutcomeCallback], object]


def host_subject(prefix: str, host: str, what: str) -> str:
    return f"{prefix}.host.{host}.{what}"


def request_timeout(deadline: Deadline, default_s: float) -> float:
    """How long a request waits for its answer: until just before the
    caller's deadline, or `default_s` when there is none."""
    remaining = deadline.remaining()
    if math.isinf(remaining):
        return default_s
    return max(0.0, remaining - min(DEADLINE_MARGIN_S, remaining / 10))


def no_responders(host: str) -> tuple[grpc.StatusCode, str]:
    return (grpc.StatusCode.UNAVAILABLE, f"host {host!r} is not connected to NATS (no responders): it is down or "
                                         "cut off; the message was not delivered")


class Batches:
    """Items queued per destination (a host; an answer inbox) on the
    link's loop, published in order once a batch is full (in messages, or
    in bytes: BATCH_BYTES or the server's max_payload) or the loop's turn
    ends."""

    def __init__(self, link: NatsLink, publish: Callable[[str, list[Any]], None], pack_bytes: int) -> None:
        self._link = link
        self._publish = publish
        self._overhead = pack_bytes
        self._queued: dict[str, list[Any]] = {}
        self._bytes: dict[str, int] = {}
        self._flush_due = False

    def add(self, subject: str, item: Any, size: int) -> None:
        queued = self._queued.setdefault(subject, [])
        total = self._bytes.get(subject, 0) + size + self._overhead
        limit = min(BATCH_BYTES, self._link.nc.max_payload if self._link.nc is not None else BATCH_BYTES)
        if queued and total > limit:
            self._flush(subject)
            queued = self._queued.setdefault(subject, [])
            total = size + self._overhead
        queued.append(item)
        self._bytes[subject] = total
        if len(queued) >= BATCH_MESSAGES or total >= limit:
            self._flush(subject)
        elif not self._flush_due:
            self._flush_due = True
            self._link.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        for subject in list(self._queued):
            self._flush(subject)

    def _flush(self, subject: str) -> None:
        items = self._queued.pop(subject, None)
        self._bytes.pop(subject, None)
        if items:
            self._publish(subject, items)


class Outbox:
    """One publisher for everything remote delivery sends, in order."""

    def __init__(self, link: NatsLink) -> None:
        self._link = link
        self._queue: collections.deque[tuple[str, str, bytes, dict[str, str], Callable[[Exception], None]]] = \
            collections.deque()
        self._draining = False

    def publish(self, subject: str, reply: str, payload: bytes, headers: dict[str, str],
                failed: Callable[[Exception], None]) -> None:
        self._queue.append((subject, reply, payload, headers, failed))
        if not self._draining:
            self._draining = True
            self._link.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                subject, reply, payload, headers, failed = self._queue.popleft()
                try:
                    assert self._link.nc is not None
                    await self._link.nc.publish(subject, payload, reply=reply, headers=headers)
                except Exception as exc:
                    failed(exc)
        finally:
            self._draining = False


class Remote:
    """The sending side: messages to agents of other hosts."""

    def __init__(self, link: NatsLink, directory: Directory, outbox: Outbox) -> None:
        self._link = link
        self._directory = directory
        self._settings = link.settings
        self._outbox = outbox
        self._ids = itertools.count(1)
        self._inbox = ""
        # Requests waiting for their answer: number -> (pending, host,
        # timer, batch). Loop only.
        self._in_flight: dict[int, tuple[Pending, str, asyncio.TimerHandle, int]] = {}
        # The numbers each published batch still waits for (no responders
        # answers a whole batch).
        self._batch_members: dict[int, set[int]] = {}
        self._batches = Batches(link, self._publish, REQUEST_OVERHEAD)

    # ------------------------------------------------------------ any thread

    def host_for(self, name: str) -> str | None:
        """The host to send `name`'s messages to; None: no host runs it
        (the caller answers NOT_FOUND). Unavailable when its host dropped
        out, or when this host has never read the name space."""
        listing = self._directory.listing
        host = listing.host_of(name)
        if host is not None:
            return host
        lapsed = listing.lapsed_host(name)
        if lapsed is not None:
            raise Unavailable(f"agent {name!r} is on host {lapsed!r}, which dropped out of the cluster "
                              f"(no announcement for {self._settings.announce_ttl_s:g}s)")
        if not listing.synced:
            raise Unavailable(f"agent {name!r} does not run on this host, which has not read the cluster's name "
                              f"space from NATS ({', '.join(self._settings.servers)}) yet: it cannot tell "
                              "which host runs it")
        return None

    def submit(self, message: caxton_pb2.AgentMessage, host: str, deadline: Deadline,
               callback: OutcomeCallback) -> Pending:
        """Send `message` to `host`; its outcome goes to `callback` (from the
        link's thread). Raises at once when it cannot go."""
        if not self._link.connected:
            raise Unavailable(f"agent {message.receiver!r} is on host {host!r}, and this host is not connected to "
                              f"NATS ({', '.join(self._settings.servers)}): the message was not sent")
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            raise ResourceExhausted(f"{MAX_IN_FLIGHT} messages to other hosts are waiting for their answer: "
                                    "try again later")
        payload = message.SerializeToString()
        nc = self._link.nc
        if nc is not None and len(payload) + REQUEST_OVERHEAD > nc.max_payload:
            raise ResourceExhausted(f"message of {len(payload)} bytes exceeds the NATS server's max_payload "
                                    f"({nc.max_payload}): raise it to reach agents on other hosts")
        pending = Pending(message, deadline, callback)
        self._link.post(self._send, pending, host, payload, request_timeout(deadline, self._settings.request_timeout_s))
        return pending

    # ------------------------------------------------------------ loop

    def _send(self, pending: Pending, host: str, payload: bytes, timeout: float) -> None:
        if pending.done:
            return  # the caller gave up before it went out
        if not self._link.connected or not self._inbox:
            pending.resolve(grpc.StatusCode.UNAVAILABLE, "not connected to NATS: the message was not sent")
            return
        number = next(self._ids)
        timer = self._link.loop.call_later(timeout, self._expire, number, timeout)
        self._in_flight[number] = (pending, host, timer, 0)
        remaining = pending.deadline.remaining()
        deadline_ms = None if math.isinf(remaining) else int(remaining * 1000)
        self._batches.add(host, (number, deadline_ms, payload), len(payload))

    def _publish(self, host: str, requests: list[Request]) -> None:
        batch = next(self._ids)
        members = {number for number, _, _ in requests}
        self._batch_members[batch] = members
        for number in members:
            pending, host_, timer, _ = self._in_flight[number]
            self._in_flight[number] = (pending, host_, timer, batch)

        def failed(exc: Exception) -> None:
            for number in list(self._batch_members.get(batch, ())):
                self._finish(number, grpc.StatusCode.UNAVAILABLE,
                             f"could not publish to NATS ({type(exc).__name__}): the message was not sent")

        self._outbox.publish(host_subject(self._settings.prefix, host, "msg"), f"{self._inbox}.b{batch}",
                             pack_requests(requests),
                             {HEADER_FROM: self._settings.host, HEADER_ANSWERS: f"{self._inbox}.a"}, failed)

    def _finish(self, number: int, code: grpc.StatusCode, error: str, reply: bytes | None = None) -> None:
        entry = self._in_flight.pop(number, None)
        if entry is None:
            return  # answered, expired or failed already
        pending, _, timer, batch = entry
        timer.cancel()
        members = self._batch_members.get(batch)
        if members is not None:
            members.discard(number)
            if not members:
                del self._batch_members[batch]
        pending.resolve(code, error, reply)

    async def _on_answers(self, msg: Any) -> None:
        """A batch of outcomes, or NATS's "no responders" for a batch."""
        token = msg.subject.rsplit(".", 1)[1]
        if (msg.headers or {}).get("Status") == NO_RESPONDERS and token.startswith("b"):
            members = self._batch_members.get(int(token[1:]) if token[1:].isdigit() else -1, set())
            for number in list(members):
                self._finish(number, *no_responders(self._in_flight[number][1]))
            return
        try:
            answers = unpack_answers(msg.data)
        except BadFrame as exc:
            log.warning("an answer from another host could not be read (%s): dropped", exc)
            return
        for number, code, error, reply in answers:
            self._finish(number, code, error, reply)

    def _expire(self, number: int, timeout: float) -> None:
        entry = self._in_flight.get(number)
        if entry is not None:
            self._finish(number, grpc.StatusCode.UNAVAILABLE,
                         f"no answer from host {entry[1]!r} within {timeout:.1f}s: it may be cut off; the message "
                         "may have been delivered, and is not sent again")

    def lost(self) -> None:
        """The connection to NATS is gone: no answer can come for what waits."""
        for number, (_, host, _, _) in list(self._in_flight.items()):
            self._finish(number, grpc.StatusCode.UNAVAILABLE,
                         f"the connection to NATS was lost before host {host!r} answered; the message may have been "
                         "delivered, and is not sent again")

    async def set_up(self) -> None:
        """First connection: the answers' inbox (nats-py subscribes again by
        itself after a reconnection)."""
        if self._inbox:
            return
        nc = self._link.nc
        assert nc is not None
        inbox = nc.new_inbox()
        await nc.subscribe(f"{inbox}.*", cb=self._on_answers, pending_bytes_limit=SUBSCRIPTION_BYTES)
        self._inbox = inbox


class RemoteInbox:
    """The receiving side: messages from other hosts for agents here."""

    def __init__(self, link: NatsLink, submit_local: SubmitLocal, outbox: Outbox) -> None:
        self._link = link
        self._settings = link.settings
        self._submit_local = submit_local
        self._outbox = outbox
        self._answers = Batches(link, self._publish, 0)
        self._subscribed = False

    async def set_up(self) -> None:
        """First connection: this host's subject."""
        if self._subscribed:
            return
        nc = self._link.nc
        assert nc is not None
        await nc.subscribe(host_subject(self._settings.prefix, self._settings.host, "msg"), cb=self._on_requests,
                           pending_bytes_limit=SUBSCRIPTION_BYTES)
        self._subscribed = True

    async def _on_requests(self, msg: Any) -> None:
        """A batch from another host: each message submitted to the local
        router only (never sent on: a stale directory elsewhere gets
        NOT_FOUND, not a loop), in order, never waited for."""
        answers_to = (msg.headers or {}).get(HEADER_ANSWERS)
        if not answers_to:
            return
        try:
            requests = unpack_requests(msg.data)
        except BadFrame as exc:
            log.warning("a batch from host %s could not be read (%s): dropped",
                        (msg.headers or {}).get(HEADER_FROM, "?"), exc)
            return
        for number, deadline_ms, envelope in requests:
            answer = functools.partial(self._answer, answers_to, number)
            try:
                message = caxton_pb2.AgentMessage.FromString(envelope)
            except Exception:
                answer(grpc.StatusCode.INVALID_ARGUMENT, "not an AgentMessage", None)
                continue
            deadline = Deadline.never() if deadline_ms is None else Deadline.after(deadline_ms / 1000)
            try:
                self._submit_local(message, deadline, answer)
            except CaxtonError as exc:
                answer(exc.code, exc.message, None)

    def _answer(self, answers_to: str, number: int, code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
        """An outcome for another host (from any thread)."""
        self._link.post(self._answers.add, answers_to, (number, code, error, reply), len(reply or error))

    def _publish(self, answers_to: str, answers: list[Answer]) -> None:
        def failed(exc: Exception) -> None:
            log.warning("%d answers to another host were lost (%s): its callers get UNAVAILABLE", len(answers), exc)

        self._outbox.publish(answers_to, "", pack_answers(answers), {}, failed)
