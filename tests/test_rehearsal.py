"""worker/rehearsal.py, in process: the fork server's rehearsal answers its
message and leaves no thread running (the fork server forks right after)."""

from __future__ import annotations

import threading

from caxton.worker import rehearsal, sandbox


def test_the_rehearsal_answers_and_leaves_no_thread() -> None:
    before = threading.active_count()
    assert rehearsal.rehearse()
    assert threading.active_count() == before


def test_the_rehearsal_leaves_the_prepared_engine_alone() -> None:
    sandbox._prepared_engine = None
    sandbox.prepare_engine()
    prepared = sandbox._prepared_engine
    try:
        assert rehearsal.rehearse()
        assert sandbox._prepared_engine is prepared
    finally:
        sandbox._prepared_engine = None
