"""Message routing: from a receiver's name to the agent whose intake takes it.

Every message, whoever sends it, goes through `Router.submit`: the receiver
is looked up, the size checked against its limit, the message given an id,
and handed to the agent's intake. Today every receiver is local; the
agent-to-agent and multi-host work adds its transports behind this one
door, so a remote name would resolve here to a transport instead of an
intake, with the same envelope and the same errors.

The envelope stays the protobuf message it arrived as: it goes to the worker
untouched, and converting it on the way would cost more per message than
everything else the supervisor does.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from caxton.v1 import caxton_pb2

from .deadline import Deadline
from .errors import InvalidArgument, NotFound, ResourceExhausted
from .mailbox import OutcomeCallback, Pending

if TYPE_CHECKING:
    from .agent import Agent


class Router:
    def __init__(self, lookup: Callable[[str], Agent | None]) -> None:
        self._lookup = lookup
        # Message ids the supervisor assigns: unique per supervisor boot and
        # cheap (no uuid per message on the hot path).
        self._boot = f"{int(time.time() * 1000):x}"
        self._ids = itertools.count(1)

    def submit(self, message: caxton_pb2.AgentMessage, deadline: Deadline, callback: OutcomeCallback) -> Pending:
        """Accept a message for its receiver; the outcome goes to `callback`."""
        agent = self._lookup(message.receiver)
        if agent is None:
            if not message.receiver:
                raise InvalidArgument("message has no receiver")
            raise NotFound(f"no agent named {message.receiver!r}")
        limit = agent.version.limits.max_message_bytes
        if len(message.content) > limit:
            raise ResourceExhausted(
                f"message of {len(message.content)} bytes exceeds agent {agent.name!r}'s max_message_bytes ({limit})"
            )
        if not message.message_id:
            message.message_id = f"{self._boot}-{next(self._ids)}"
        pending = Pending(message, deadline, callback)
        agent.intake.submit(pending)
        return pending
