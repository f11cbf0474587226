"""The per-agent message queue (supervisor/mailbox.py)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.errors import ResourceExhausted, Unavailable
from caxton.supervisor.mailbox import DEADLINE_EXCEEDED, Mailbox, Pending
from caxton.v1 import caxton_pb2

JOIN_TIMEOUT = 5.0
NEVER = Deadline.never()


class Recorder:
    """A Pending callback that remembers every call."""

    def __init__(self):
        self.calls: list[tuple[grpc.StatusCode, str, bytes | None]] = []

    def __call__(self, code, error, reply):
        self.calls.append((code, error, reply))


def make(content: bytes = b"x", *, deadline: Deadline = NEVER, message_id: str = "") -> tuple[Pending, Recorder]:
    recorder = Recorder()
    message = caxton_pb2.AgentMessage(receiver="a", message_id=message_id, content=content)
    return Pending(message, deadline, recorder), recorder


def always() -> bool:
    return True


def ids(batch: list[Pending]) -> list[str]:
    return [p.message.message_id for p in batch]


def true_then_false(n_true: int):
    calls = iter([True] * n_true)
    return lambda: next(calls, False)


# ------------------------------------------------------------ Pending


def test_pending_size_is_content_length():
    pending, _ = make(b"hello")
    assert pending.size == 5


def test_resolve_delivers_at_most_once():
    pending, rec = make()
    assert not pending.done
    assert pending.resolve(grpc.StatusCode.OK, "", b"reply") is True
    assert pending.done
    assert pending.resolve(grpc.StatusCode.INTERNAL, "again") is False
    assert rec.calls == [(grpc.StatusCode.OK, "", b"reply")]


def test_resolve_defaults():
    pending, rec = make()
    pending.resolve(grpc.StatusCode.OK)
    assert rec.calls == [(grpc.StatusCode.OK, "", None)]


def test_cancel_prevents_delivery():
    pending, rec = make()
    pending.cancel()
    assert pending.done
    assert pending.resolve(grpc.StatusCode.OK) is False
    assert rec.calls == []


# ------------------------------------------------------------ put / take


def test_put_take_preserves_order():
    box = Mailbox(limit=10)
    for i in range(5):
        box.put(make(message_id=str(i))[0])
    assert len(box) == 5
    batch = box.take_batch(100, 1 << 20, always)
    assert ids(batch) == ["0", "1", "2", "3", "4"]
    assert len(box) == 0


def test_order_preserved_across_batches():
    box = Mailbox(limit=10)
    for i in range(5):
        box.put(make(message_id=str(i))[0])
    assert ids(box.take_batch(2, 1 << 20, always)) == ["0", "1"]
    assert ids(box.take_batch(2, 1 << 20, always)) == ["2", "3"]
    assert ids(box.take_batch(2, 1 << 20, always)) == ["4"]


def test_queue_limit_raises_resource_exhausted():
    box = Mailbox(limit=2)
    box.put(make()[0])
    box.put(make()[0])
    with pytest.raises(ResourceExhausted) as info:
        box.put(make()[0])
    assert "2" in str(info.value)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(box) == 2
    # taking frees room again
    box.take_batch(1, 1 << 20, always)
    box.put(make()[0])
    assert len(box) == 2


def test_closed_mailbox_refuses_with_reason_then_reopens():
    box = Mailbox(limit=10)
    box.put(make(message_id="before")[0])
    box.close("agent is stopping")
    with pytest.raises(Unavailable) as info:
        box.put(make()[0])
    assert str(info.value) == "agent is stopping"
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # queued messages stay to be taken
    assert len(box) == 1
    assert ids(box.take_batch(10, 1 << 20, always)) == ["before"]
    box.reopen()
    box.put(make(message_id="after")[0])
    assert ids(box.take_batch(10, 1 << 20, always)) == ["after"]


def test_closed_reason_checked_before_limit():
    box = Mailbox(limit=1)
    box.put(make()[0])
    box.close("gone")
    with pytest.raises(Unavailable, match="gone"):
        box.put(make()[0])


# ------------------------------------------------------------ batch bounds


def test_take_batch_respects_max_messages():
    box = Mailbox(limit=10)
    for i in range(4):
        box.put(make(message_id=str(i))[0])
    assert ids(box.take_batch(3, 1 << 20, always)) == ["0", "1", "2"]
    assert len(box) == 1


def test_take_batch_respects_max_bytes():
    box = Mailbox(limit=10)
    for i in range(4):
        box.put(make(b"abc", message_id=str(i))[0])
    assert ids(box.take_batch(100, 7, always)) == ["0", "1"]  # 3 + 3 <= 7, + 3 > 7
    assert len(box) == 2


def test_take_batch_max_bytes_is_inclusive():
    box = Mailbox(limit=10)
    for i in range(3):
        box.put(make(b"abc", message_id=str(i))[0])
    assert ids(box.take_batch(100, 6, always)) == ["0", "1"]


def test_take_batch_always_takes_one_even_if_too_big():
    box = Mailbox(limit=10)
    box.put(make(b"x" * 100, message_id="big")[0])
    box.put(make(b"y", message_id="small")[0])
    assert ids(box.take_batch(100, 10, always)) == ["big"]
    assert ids(box.take_batch(100, 10, always)) == ["small"]


def test_empty_content_messages_fill_by_count():
    box = Mailbox(limit=10)
    for i in range(5):
        box.put(make(b"", message_id=str(i))[0])
    assert ids(box.take_batch(100, 0, always)) == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------ cancelled / expired


def test_cancelled_pending_is_skipped():
    box = Mailbox(limit=10)
    a, rec_a = make(message_id="a")
    b, rec_b = make(message_id="b")
    c, _ = make(message_id="c")
    for p in (a, b, c):
        box.put(p)
    b.cancel()
    assert ids(box.take_batch(10, 1 << 20, always)) == ["a", "c"]
    assert rec_b.calls == []
    assert len(box) == 0


def test_cancelled_pending_does_not_count_towards_max_messages():
    box = Mailbox(limit=10)
    a, _ = make(message_id="a")
    a.cancel()
    box.put(a)
    box.put(make(message_id="b")[0])
    box.put(make(message_id="c")[0])
    assert ids(box.take_batch(2, 1 << 20, always)) == ["b", "c"]


def test_expired_deadline_resolved_and_not_returned():
    box = Mailbox(limit=10)
    expired, rec = make(deadline=Deadline.after(-1), message_id="late")
    live, live_rec = make(deadline=Deadline.after(3600), message_id="live")
    box.put(expired)
    box.put(live)
    assert ids(box.take_batch(10, 1 << 20, always)) == ["live"]
    assert len(rec.calls) == 1
    code, error, reply = rec.calls[0]
    assert code == DEADLINE_EXCEEDED == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in error
    assert reply is None
    assert expired.done
    assert live_rec.calls == [] and not live.done


def test_deadline_is_checked_when_taken_not_when_put():
    now = [100.0]
    box = Mailbox(limit=10)
    pending, rec = make(deadline=Deadline.after(1.0, clock=lambda: now[0]), message_id="m")
    box.put(pending)
    now[0] += 1.0  # the caller's deadline passes while the message waits
    assert box.take_batch(10, 1 << 20, true_then_false(1)) == []
    assert [c[0] for c in rec.calls] == [DEADLINE_EXCEEDED]


def test_only_dead_messages_then_stop_waiting_returns_empty():
    box = Mailbox(limit=10)
    cancelled, rec_c = make()
    cancelled.cancel()
    expired, rec_e = make(deadline=Deadline.after(-1))
    box.put(cancelled)
    box.put(expired)
    # first check sees a non-empty queue; after dropping both it must not
    # return an empty "batch" but go back to waiting, where keep_waiting is false
    assert box.take_batch(10, 1 << 20, true_then_false(1)) == []
    assert len(box) == 0
    assert rec_c.calls == []
    assert [c[0] for c in rec_e.calls] == [DEADLINE_EXCEEDED]


def test_take_batch_returns_empty_if_not_keep_waiting_even_with_messages():
    box = Mailbox(limit=10)
    box.put(make(message_id="kept")[0])
    assert box.take_batch(10, 1 << 20, lambda: False) == []
    assert len(box) == 1  # left for another taker
    assert ids(box.take_batch(10, 1 << 20, always)) == ["kept"]


# ------------------------------------------------------------ threads


def test_take_batch_returns_empty_after_wake_all_when_keep_waiting_turns_false():
    box = Mailbox(limit=10)
    keep = threading.Event()
    keep.set()
    waiting = threading.Event()
    result: list = []

    def keep_waiting() -> bool:
        waiting.set()
        return keep.is_set()

    def taker():
        result.append(box.take_batch(10, 1 << 20, keep_waiting))

    thread = threading.Thread(target=taker, daemon=True)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    # The taker holds the mailbox lock from keep_waiting() until it waits, so
    # wake_all (which takes the lock) cannot slip in before the wait.
    keep.clear()
    box.wake_all()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert result == [[]]


def test_put_wakes_a_waiting_taker():
    box = Mailbox(limit=10)
    waiting = threading.Event()
    result: list = []

    def keep_waiting() -> bool:
        waiting.set()
        return True

    thread = threading.Thread(target=lambda: result.append(box.take_batch(10, 1 << 20, keep_waiting)), daemon=True)
    thread.start()
    assert waiting.wait(JOIN_TIMEOUT)
    box.put(make(message_id="m")[0])
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert len(result) == 1 and ids(result[0]) == ["m"]


# ------------------------------------------------------------ fail_all


def test_fail_all_resolves_each_once_and_counts():
    box = Mailbox(limit=10)
    pendings = [make(message_id=str(i)) for i in range(3)]
    for p, _ in pendings:
        box.put(p)
    assert box.fail_all(grpc.StatusCode.UNAVAILABLE, "agent removed") == 3
    assert len(box) == 0
    for p, rec in pendings:
        assert rec.calls == [(grpc.StatusCode.UNAVAILABLE, "agent removed", None)]
        assert p.done
    # a second fail_all finds nothing and delivers nothing again
    assert box.fail_all(grpc.StatusCode.INTERNAL, "again") == 0
    for _, rec in pendings:
        assert len(rec.calls) == 1


def test_fail_all_skips_already_done():
    box = Mailbox(limit=10)
    a, rec_a = make()
    b, rec_b = make()
    box.put(a)
    box.put(b)
    a.cancel()
    assert box.fail_all(grpc.StatusCode.UNAVAILABLE, "stop") == 1
    assert rec_a.calls == []
    assert rec_b.calls == [(grpc.StatusCode.UNAVAILABLE, "stop", None)]


def test_fail_all_on_empty_mailbox():
    assert Mailbox(limit=1).fail_all(grpc.StatusCode.UNAVAILABLE, "x") == 0


def _wait_for_waiters(box: Mailbox, count: int) -> None:
    # Condition wakes waiters first-in first-out; the test needs to know who
    # waits first, so it peeks at the condition's waiter queue.
    deadline = time.monotonic() + 5
    while len(box._cond._waiters) < count:
        assert time.monotonic() < deadline, "takers did not start waiting"
        time.sleep(0.001)


def test_a_retiring_taker_passes_the_wake_up_on():
    """A put wakes one taker; if that one is retiring, the message must still
    reach a live taker instead of waiting for the next put."""
    box = Mailbox(limit=10)
    retiring = threading.Event()
    took: list = []
    stop = threading.Event()
    dead = threading.Thread(target=lambda: box.take_batch(10, 1 << 20, lambda: not retiring.is_set()), daemon=True)
    live = threading.Thread(target=lambda: took.extend(box.take_batch(10, 1 << 20, lambda: not stop.is_set())),
                            daemon=True)
    dead.start()
    _wait_for_waiters(box, 1)
    live.start()
    _wait_for_waiters(box, 2)
    retiring.set()
    box.put(make(b"m")[0])  # wakes the retiring taker first
    live.join(5)
    stop.set()
    box.wake_all()
    dead.join(5)
    live.join(5)
    assert len(took) == 1
