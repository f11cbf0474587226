"""Message intake of one agent: the door, the mailbox behind it, the tally.

The door says whether the agent takes messages in its current state and,
if not, why (with the circuit breaker's next attempt when it is open); the
mailbox holds what was accepted until a worker takes it; the tally counts
outcomes, which the dispatchers of several replicas report concurrently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import FailedPrecondition, Unavailable
from .lifecycle import AgentState
from .mailbox import Mailbox, Pending
from .memory_budget import MemoryBudget, RoomCallback
from .restart import BreakerState

if TYPE_CHECKING:
    from .agent import Agent

# Counts outcomes for an agent's tally: (messages, errors among them). Called
# once per batch, not per message.
OutcomeCount = Callable[[int, int], None]


class Intake:
    def __init__(self, agent: Agent, queue_limit: int) -> None:
        self._agent = agent
        self.mailbox = Mailbox(queue_limit)
        self._tally_lock = threading.Lock()
        self.messages = 0
        self.errors = 0

    def refusal(self) -> str:
        """Why a message is refused in the agent's current state."""
        agent = self._agent
        name, state = agent.name, agent.state
        if state is AgentState.FAILED:
            breaker = agent.recovery.breaker()
            if breaker.state is BreakerState.OPEN and breaker.next_attempt_in_s:
                return (f"agent {name!r} has failed (circuit breaker open, next attempt in "
                        f"{breaker.next_attempt_in_s:.1f}s): {agent.last_error}")
            if breaker.state is BreakerState.HALF_OPEN:
                return f"agent {name!r} has failed (circuit breaker half-open, probing): {agent.last_error}"
            return f"agent {name!r} has failed: {agent.last_error}"
        if state is AgentState.DRAINING:
            return f"agent {name!r} is draining and takes no new messages"
        if state is AgentState.STOPPED:
            return f"agent {name!r} is stopped"
        return f"agent {name!r} is {state.value}"

    def opened(self) -> None:
        """The agent runs: the mailbox takes messages again."""
        self.mailbox.reopen()

    def closed(self) -> None:
        """The agent left RUNNING: new messages are refused with the reason;
        queued ones stay for a worker to take."""
        self.mailbox.close(self.refusal())

    def submit(self, pending: Pending, budget: MemoryBudget | None = None,
               on_room: RoomCallback | None = None, mailbox: Mailbox | None = None) -> bool:
        """Queue a message (in `mailbox`: a rollout candidate's; default the
        agent's own); raises if the agent cannot take it now. With `on_room`,
        a full mailbox or budget returns False instead and calls `on_room`
        once there may be room (Mailbox.put)."""
        state = self._agent.state
        if state is AgentState.STOPPED:
            raise FailedPrecondition(f"agent {self._agent.name!r} is stopped; start it with StartAgent")
        if state is not AgentState.RUNNING and state is not AgentState.DRAINING:
            raise Unavailable(self.refusal())
        return (self.mailbox if mailbox is None else mailbox).put(pending, budget, on_room)

    def submit_many(self, pendings: list[Pending], budget: MemoryBudget | None = None) -> int:
        """Queue the longest prefix of `pendings` that goes in at once (see
        Mailbox.put_many); 0 in any state but RUNNING and DRAINING, where
        submit() says why."""
        state = self._agent.state
        if state is not AgentState.RUNNING and state is not AgentState.DRAINING:
            return 0
        return self.mailbox.put_many(pendings, budget)

    def count(self, messages: int, errors: int) -> None:
        """`messages` more outcomes, `errors` of them failures (a batch's
        at once: one lock per batch, not per message)."""
        with self._tally_lock:
            self.messages += messages
            self.errors += errors

    def tally(self) -> tuple[int, int]:
        """(messages, errors) handled since the agent was deployed here."""
        with self._tally_lock:
            return self.messages, self.errors
