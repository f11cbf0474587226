"""The agent lifecycle as a pure state machine.

    UNLOADED --load--> LOADED --start--> RUNNING <--drain/resume--> DRAINING
    DRAINING --stopped--> STOPPED --load--> LOADED
    LOADED, RUNNING, DRAINING --fail--> FAILED --load--> LOADED
    FAILED --stopped--> STOPPED (an operator calls off the breaker's retries)
    STOPPED, FAILED, LOADED, UNLOADED --unload--> UNLOADED

Every transition the supervisor makes goes through `transition`, so an
illegal one is an error at the point it is attempted, never a silent no-op.
"""

from __future__ import annotations

import enum


class AgentState(enum.Enum):
    UNLOADED = "unloaded"
    LOADED = "loaded"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class Event(enum.Enum):
    LOAD = "load"        # module validated and stored; about to start a worker
    START = "start"      # the worker answered Load and caxton_init succeeded
    DRAIN = "drain"      # stop taking messages, let in-flight ones finish
    RESUME = "resume"    # take messages again (a drain was called off)
    STOPPED = "stopped"  # drained, worker gone
    FAIL = "fail"        # could not start, or cannot serve any more
    UNLOAD = "unload"    # forget the agent


_VERBS = {
    Event.LOAD: "load",
    Event.START: "start",
    Event.DRAIN: "stop",
    Event.RESUME: "resume",
    Event.STOPPED: "finish stopping",
    Event.FAIL: "fail",
    Event.UNLOAD: "remove",
}


class IllegalTransition(Exception):
    def __init__(self, state: AgentState, event: Event):
        super().__init__(f"cannot {_VERBS[event]} an agent that is {state.value}")
        self.state = state
        self.event = event


_TRANSITIONS: dict[tuple[AgentState, Event], AgentState] = {
    (AgentState.UNLOADED, Event.LOAD): AgentState.LOADED,
    (AgentState.LOADED, Event.START): AgentState.RUNNING,
    (AgentState.LOADED, Event.FAIL): AgentState.FAILED,
    (AgentState.RUNNING, Event.DRAIN): AgentState.DRAINING,
    (AgentState.RUNNING, Event.FAIL): AgentState.FAILED,
    (AgentState.DRAINING, Event.RESUME): AgentState.RUNNING,
    (AgentState.DRAINING, Event.STOPPED): AgentState.STOPPED,
    (AgentState.DRAINING, Event.FAIL): AgentState.FAILED,
    (AgentState.STOPPED, Event.LOAD): AgentState.LOADED,
    (AgentState.FAILED, Event.LOAD): AgentState.LOADED,
    (AgentState.FAILED, Event.STOPPED): AgentState.STOPPED,
    (AgentState.UNLOADED, Event.UNLOAD): AgentState.UNLOADED,
    (AgentState.LOADED, Event.UNLOAD): AgentState.UNLOADED,
    (AgentState.STOPPED, Event.UNLOAD): AgentState.UNLOADED,
    (AgentState.FAILED, Event.UNLOAD): AgentState.UNLOADED,
}


def transition(state: AgentState, event: Event) -> AgentState:
    """The state after `event`, or IllegalTransition."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed(state: AgentState, event: Event) -> bool:
    return (state, event) in _TRANSITIONS
