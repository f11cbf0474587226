"""The outbox: what an agent sends while it handles one message.

`caxton.send` and `caxton.send_ex` (worker/hostcalls.py) only record here and
return at once: nothing leaves the worker while the agent runs, so a send
never blocks inside wasm. The outbox travels back with the message's result
(HandleResult.sent) when the message completes, and the supervisor routes it
and fills in what the agent cannot choose (sender, message_id, hops). A
message that fails (trap, fuel, timeout, any error) discards its outbox: it
has no half-done effects.

The send budget bounds how far one message can fan out: after that many
accepted sends while handling one message, the next one returns
SEND_BUDGET_SPENT. Outside a message (caxton_init, caxton_shutdown) there is
nothing for a send to travel back with, so the budget there is zero.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from caxton.v1 import caxton_pb2

# send / send_ex return codes (docs/agent-abi.md). -1, -3 and -4 (unknown
# agent, queue full, denied) were returned synchronously before sends were
# routed; those outcomes now come back later as FAILURE messages.
SEND_OK = 0
SEND_TOO_LARGE = -2
SEND_MALFORMED = -5
SEND_BUDGET_SPENT = -6

# Sends per handled message when the supervisor gives no budget.
DEFAULT_SEND_BUDGET = 64
# A receiver's name, in UTF-8 bytes.
MAX_NAME_BYTES = 255
# send_ex's JSON envelope, in bytes: a few short strings need far less, and
# the bound keeps the host's parsing cost small whatever the agent passes.
MAX_ENVELOPE_BYTES = 4096

# Performatives by the names message_info uses: lower case, hyphenated
# ("accept-proposal"), so an agent writes back what it reads.
PERFORMATIVES: dict[str, int] = {
    name.removeprefix("PERFORMATIVE_").lower().replace("_", "-"): value
    for name, value in caxton_pb2.Performative.items()
    if value != caxton_pb2.PERFORMATIVE_UNSPECIFIED
}

_ENVELOPE_STRINGS = ("conversation_id", "reply_with")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The addressing an agent chose for one send. `conversation_id` "" means
    the handled message's conversation (or a fresh one)."""

    to: str
    performative: int = caxton_pb2.PERFORMATIVE_REQUEST  # a caxton.v1.Performative value
    conversation_id: str = ""
    reply_with: str = ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One accepted send: its envelope and a copy of its content."""

    envelope: Envelope
    content: bytes


def read_envelope(raw: bytes | memoryview) -> Envelope | None:
    """The envelope given to send_ex as UTF-8 JSON, or None when it is
    malformed: over MAX_ENVELOPE_BYTES, not UTF-8 JSON, not an object, `to`
    missing, empty or not a string, an unknown performative, a field of the
    wrong type or a string that cannot be encoded as UTF-8. Keys other than
    to, performative, conversation_id and reply_with are ignored: the agent
    cannot set sender, message_id or hops, whatever it writes."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        return None
    try:
        # Decoded first: json.loads(bytes) would also guess UTF-16 and UTF-32.
        fields = json.loads(str(raw, "utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    to = fields.get("to")
    performative = fields.get("performative", "request")
    strings = [fields.get(key, "") for key in _ENVELOPE_STRINGS]
    if not isinstance(to, str) or not to or not isinstance(performative, str) or performative not in PERFORMATIVES:
        return None
    if not all(isinstance(value, str) and _is_utf8(value) for value in strings) or not _is_utf8(to):
        return None
    conversation_id, reply_with = strings
    return Envelope(to, PERFORMATIVES[performative], conversation_id, reply_with)


def _is_utf8(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's "\\ud800"), which
    no UTF-8 field can carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Outbox:
    """The accepted sends of the message being handled, in call order."""

    __slots__ = ("_budget", "_max_content_bytes", "_limit", "_sent")

    def __init__(self, *, budget: int, max_content_bytes: int):
        self._budget = budget
        self._max_content_bytes = max_content_bytes
        self._limit = 0  # sends allowed for the current message
        self._sent: list[Outgoing] = []

    def open(self, handling: bool) -> None:
        """Start over for the next call into the agent: nothing sent yet, and
        the full budget if it is handling a message, none otherwise."""
        # Fast path: most messages send nothing, so the list is kept.
        if self._sent:
            self._sent = []
        self._limit = self._budget if handling else 0

    def add(self, envelope: Envelope, content: memoryview) -> int:
        """Record one send (copying its content out of linear memory) and
        return its ABI code."""
        if len(content) > self._max_content_bytes or len(envelope.to.encode()) > MAX_NAME_BYTES:
            return SEND_TOO_LARGE
        if len(self._sent) >= self._limit:
            return SEND_BUDGET_SPENT
        self._sent.append(Outgoing(envelope, content.tobytes()))
        return SEND_OK

    def take(self) -> Sequence[Outgoing]:
        """The sends of a message that completed; the outbox is then empty."""
        sent = self._sent
        if not sent:
            return ()
        self._sent = []
        return sent

    def discard(self) -> None:
        """Drop the sends of a message that failed: they are never delivered."""
        self._sent = []
