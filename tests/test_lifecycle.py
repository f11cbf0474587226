"""The agent lifecycle state machine (supervisor/lifecycle.py), exhaustively."""

from __future__ import annotations

import itertools

import pytest

from caxton.supervisor.lifecycle import AgentState, Event, IllegalTransition, allowed, transition

S, E = AgentState, Event

# The designed lifecycle, written out independently of the module's table.
LEGAL: dict[tuple[AgentState, Event], AgentState] = {
    (S.UNLOADED, E.LOAD): S.LOADED,
    (S.LOADED, E.START): S.RUNNING,
    (S.RUNNING, E.DRAIN): S.DRAINING,
    (S.DRAINING, E.RESUME): S.RUNNING,
    (S.DRAINING, E.STOPPED): S.STOPPED,
    (S.LOADED, E.FAIL): S.FAILED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.DRAINING, E.FAIL): S.FAILED,
    (S.STOPPED, E.LOAD): S.LOADED,
    (S.FAILED, E.LOAD): S.LOADED,
    (S.FAILED, E.STOPPED): S.STOPPED,
    (S.UNLOADED, E.UNLOAD): S.UNLOADED,
    (S.LOADED, E.UNLOAD): S.UNLOADED,
    (S.STOPPED, E.UNLOAD): S.UNLOADED,
    (S.FAILED, E.UNLOAD): S.UNLOADED,
}

ALL_PAIRS = list(itertools.product(AgentState, Event))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


def _id(pair):
    state, event = pair
    return f"{state.name}-{event.name}"


@pytest.mark.parametrize("pair", list(LEGAL), ids=_id)
def test_legal_transition(pair):
    state, event = pair
    assert transition(state, event) is LEGAL[pair]
    assert allowed(state, event)


@pytest.mark.parametrize("pair", ILLEGAL, ids=_id)
def test_illegal_transition_raises_naming_state(pair):
    state, event = pair
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert state.value in str(info.value)
    assert not allowed(state, event)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_id)
def test_allowed_agrees_with_transition(pair):
    state, event = pair
    try:
        transition(state, event)
    except IllegalTransition:
        legal = False
    else:
        legal = True
    assert allowed(state, event) is legal


def test_full_designed_path():
    state = S.UNLOADED
    for event, expected in [
        (E.LOAD, S.LOADED),
        (E.START, S.RUNNING),
        (E.DRAIN, S.DRAINING),
        (E.RESUME, S.RUNNING),
        (E.DRAIN, S.DRAINING),
        (E.STOPPED, S.STOPPED),
        (E.LOAD, S.LOADED),
        (E.START, S.RUNNING),
        (E.FAIL, S.FAILED),
        (E.LOAD, S.LOADED),
        (E.FAIL, S.FAILED),
        (E.UNLOAD, S.UNLOADED),
    ]:
        state = transition(state, event)
        assert state is expected


def test_running_and_draining_cannot_be_unloaded_directly():
    # Only resting states may be removed; a live agent must be stopped first.
    for state in (S.RUNNING, S.DRAINING):
        with pytest.raises(IllegalTransition, match=state.value):
            transition(state, E.UNLOAD)


def test_message_uses_a_readable_verb():
    with pytest.raises(IllegalTransition) as info:
        transition(S.STOPPED, E.START)
    assert str(info.value) == "cannot start an agent that is stopped"
    with pytest.raises(IllegalTransition) as info:
        transition(S.UNLOADED, E.DRAIN)
    assert str(info.value) == "cannot stop an agent that is unloaded"


def test_illegal_transition_is_an_exception_with_every_event_verb():
    # Constructing the error must work for every event (no missing verb).
    for state, event in ALL_PAIRS:
        exc = IllegalTransition(state, event)
        assert state.value in str(exc)
