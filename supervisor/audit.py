"""The audit trail: who made which lifecycle call, on which agent, and how it ended.

Every lifecycle call (deploy, reload, rollback, stop, start, remove), allowed
or refused, leaves one line in the `caxton.audit` log; a call that reached
its handler also leaves an `audit` event on its agent (`caxton events`).
"""

from __future__ import annotations

import logging

from .events import EventBus

log = logging.getLogger("caxton.audit")

AUDIT_EVENT = "audit"


class Audit:
    def __init__(self, events: EventBus):
        self._events = events

    def record(self, token: str, call: str, agent: str, outcome: str) -> None:
        """`token`: the token's name ("-" when none was known); `agent`: ""
        when the call was refused before its request was read; `outcome`:
        "OK", or the status code's name and the message."""
        log.info("token=%s call=%s agent=%r outcome=%s", token, call, agent, outcome)
        if agent:
            self._events.publish(agent, AUDIT_EVENT, 0, f"{call} by {token}: {outcome}")
