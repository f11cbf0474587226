"""KnownFigures (supervisor/figures.py): a worker's figures are kept only
while no agent code has run since they were asked for."""

from __future__ import annotations

from caxton.supervisor.figures import KnownFigures
from caxton.supervisor.worker_client import WorkerStats

ONE = WorkerStats(65536, 1, 0, 0)


def test_an_answer_is_kept_until_agent_code_runs():
    figures = KnownFigures()
    assert figures.known() is None
    figures.record(figures.ticket(), ONE)
    assert figures.known() == ONE
    with figures.agent_code_runs():
        assert figures.known() is None
    assert figures.known() is None


def test_an_answer_asked_for_before_agent_code_ran_is_not_kept():
    figures = KnownFigures()
    ticket = figures.ticket()
    with figures.agent_code_runs():
        pass
    figures.record(ticket, ONE)  # answered after a message ran: out of date
    assert figures.known() is None


def test_an_answer_asked_for_while_agent_code_runs_is_not_kept():
    figures = KnownFigures()
    with figures.agent_code_runs():
        ticket = figures.ticket()
        figures.record(ticket, ONE)
        assert figures.known() is None
    figures.record(ticket, ONE)  # and not once the message is over either
    assert figures.known() is None


def test_overlapping_runs_keep_nothing_until_both_end():
    figures = KnownFigures()
    with figures.agent_code_runs():
        with figures.agent_code_runs():
            pass
        figures.record(figures.ticket(), ONE)
        assert figures.known() is None
    figures.record(figures.ticket(), ONE)
    assert figures.known() == ONE
