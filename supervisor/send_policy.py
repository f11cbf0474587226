"""Who may send to whom between agents, and how far a chain of messages may go.

The `[messaging]` config table: by default every agent may send to every
agent; with `[[messaging.allow]]` rules, a send is allowed only when a rule
matches both names (shell-style patterns, `fnmatch`). A message's hop count
is its depth in the causal chain one outside message started; past
`hop_limit` the chain is cut (runaway loops end; long conversations fit).
`send_budget` bounds the sends one handled message may make (the worker
enforces it: the next send returns -6).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .settings import Table


@dataclass(frozen=True)
class AllowRule:
    sender: str  # pattern of the sending agent's name
    receiver: str  # pattern of the receiving agent's name

    def matches(self, sender: str, receiver: str) -> bool:
        return fnmatch.fnmatchcase(sender, self.sender) and fnmatch.fnmatchcase(receiver, self.receiver)


@dataclass(frozen=True)
class MessagingSettings:
    send_budget: int = 64
    hop_limit: int = 10_000
    allow: tuple[AllowRule, ...] = ()  # none: everyone to everyone
    # Bounded history for TraceConversation: this many conversations, each
    # with its newest `trace_messages` messages.
    trace_conversations: int = 100
    trace_messages: int = 1000

    def allows(self, sender: str, receiver: str) -> bool:
        """May agent `sender` send to agent `receiver`?"""
        if not self.allow:
            return True
        return any(rule.matches(sender, receiver) for rule in self.allow)


def read_messaging(table: Table) -> MessagingSettings:
    base = MessagingSettings()
    rules = []
    for rule in table.tables("allow"):
        sender = rule.string("from", None)
        receiver = rule.string("to", None)
        if sender is None or receiver is None:
            raise rule.error("from" if sender is None else "to", "a rule needs both `from` and `to` patterns")
        rule.finish()
        rules.append(AllowRule(sender, receiver))
    settings = MessagingSettings(
        send_budget=table.integer("send_budget", base.send_budget, minimum=1),
        hop_limit=table.integer("hop_limit", base.hop_limit, minimum=1),
        allow=tuple(rules),
        trace_conversations=table.integer("trace_conversations", base.trace_conversations, minimum=1),
        trace_messages=table.integer("trace_messages", base.trace_messages, minimum=1),
    )
    table.finish()
    return settings
