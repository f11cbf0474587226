"""The per-agent message queue (supervisor/mailbox.py)."""

from __future__ import annotations

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.errors import ResourceExhausted, Unavailable
from caxton.supervisor.mailbox import DEADLINE_EXCEEDED, Mailbox, Pending
from caxton.v1 import caxton_pb2

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


class StubTaker:
    """A taker that counts its wake-ups; `keep` says whether it still takes."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self.woken = 0

    def keep_taking(self) -> bool:
        return self.keep

    def wake(self) -> None:
        self.woken += 1


def take(box: Mailbox, max_messages: int = 100, max_bytes: int = 1 << 20) -> list[Pending]:
    batch = box.take(max_messages, max_bytes, StubTaker())
    assert batch is not None
    return batch


def ids(batch: list[Pending]) -> list[str]:
    return [p.message.message_id for p in batch]


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
    batch = take(box, 100, 1 << 20)
    assert ids(batch) == ["0", "1", "2", "3", "4"]
    assert len(box) == 0


def test_order_preserved_across_batches():
    box = Mailbox(limit=10)
    for i in range(5):
        box.put(make(message_id=str(i))[0])
    assert ids(take(box, 2, 1 << 20)) == ["0", "1"]
    assert ids(take(box, 2, 1 << 20)) == ["2", "3"]
    assert ids(take(box, 2, 1 << 20)) == ["4"]


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
    take(box, 1, 1 << 20)
    box.put(make()[0])
    assert len(box) == 2


def test_put_many_queues_all_in_order_and_wakes_a_taker_per_message():
    box = Mailbox(10)
    takers = [StubTaker() for _ in range(3)]
    for taker in takers:
        assert box.take(10, 1 << 20, taker) == []  # idle
    pendings = [make(message_id=f"m{i}")[0] for i in range(2)]
    assert box.put_many(pendings) == 2
    assert [t.woken for t in takers] == [1, 1, 0]
    assert ids(take(box)) == ["m0", "m1"]


def test_put_many_takes_the_prefix_under_the_limit_and_leaves_the_rest_to_put():
    box = Mailbox(3)
    box.put(make(message_id="first")[0])
    pendings = [make(message_id=f"m{i}")[0] for i in range(4)]
    assert box.put_many(pendings) == 2
    assert box.put_many(pendings[2:]) == 0  # full: nothing, and no wake-up registered
    with pytest.raises(ResourceExhausted, match="queue full"):
        box.put(pendings[2])
    assert ids(take(box)) == ["first", "m0", "m1"]


def test_put_many_leaves_a_closed_or_forwarded_mailbox_to_put():
    box = Mailbox(10)
    box.close("agent 'a' is stopped")
    assert box.put_many([make()[0]]) == 0
    other = Mailbox(10)
    box.reopen()
    box.forward_to(other)
    assert box.put_many([make()[0]]) == 0
    assert len(box) == len(other) == 0


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
    assert ids(take(box, 10, 1 << 20)) == ["before"]
    box.reopen()
    box.put(make(message_id="after")[0])
    assert ids(take(box, 10, 1 << 20)) == ["after"]


def test_closed_reason_checked_before_limit():
    box = Mailbox(limit=1)
    box.put(make()[0])
    box.close("gone")
    with pytest.raises(Unavailable, match="gone"):
        box.put(make()[0])


# ------------------------------------------------------------ batch bounds


def test_take_respects_max_messages():
    box = Mailbox(limit=10)
    for i in range(4):
        box.put(make(message_id=str(i))[0])
    assert ids(take(box, 3, 1 << 20)) == ["0", "1", "2"]
    assert len(box) == 1


def test_take_respects_max_bytes():
    box = Mailbox(limit=10)
    for i in range(4):
        box.put(make(b"abc", message_id=str(i))[0])
    assert ids(take(box, 100, 7)) == ["0", "1"]  # 3 + 3 <= 7, + 3 > 7
    assert len(box) == 2


def test_take_max_bytes_is_inclusive():
    box = Mailbox(limit=10)
    for i in range(3):
        box.put(make(b"abc", message_id=str(i))[0])
    assert ids(take(box, 100, 6)) == ["0", "1"]


def test_take_always_takes_one_even_if_too_big():
    box = Mailbox(limit=10)
    box.put(make(b"x" * 100, message_id="big")[0])
    box.put(make(b"y", message_id="small")[0])
    assert ids(take(box, 100, 10)) == ["big"]
    assert ids(take(box, 100, 10)) == ["small"]


def test_empty_content_messages_fill_by_count():
    box = Mailbox(limit=10)
    for i in range(5):
        box.put(make(b"", message_id=str(i))[0])
    assert ids(take(box, 100, 0)) == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------ cancelled / expired


def test_cancelled_pending_is_skipped():
    box = Mailbox(limit=10)
    a, rec_a = make(message_id="a")
    b, rec_b = make(message_id="b")
    c, _ = make(message_id="c")
    for p in (a, b, c):
        box.put(p)
    b.cancel()
    assert ids(take(box, 10, 1 << 20)) == ["a", "c"]
    assert rec_b.calls == []
    assert len(box) == 0


def test_cancelled_pending_does_not_count_towards_max_messages():
    box = Mailbox(limit=10)
    a, _ = make(message_id="a")
    a.cancel()
    box.put(a)
    box.put(make(message_id="b")[0])
    box.put(make(message_id="c")[0])
    assert ids(take(box, 2, 1 << 20)) == ["b", "c"]


def test_expired_deadline_resolved_and_not_returned():
    box = Mailbox(limit=10)
    expired, rec = make(deadline=Deadline.after(-1), message_id="late")
    live, live_rec = make(deadline=Deadline.after(3600), message_id="live")
    box.put(expired)
    box.put(live)
    assert ids(take(box, 10, 1 << 20)) == ["live"]
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
    assert take(box, 10) == []
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
    assert take(box, 10) == []
    assert len(box) == 0
    assert rec_c.calls == []
    assert [c[0] for c in rec_e.calls] == [DEADLINE_EXCEEDED]


def test_take_returns_none_to_a_taker_that_stops_and_leaves_the_messages():
    box = Mailbox(limit=10)
    box.put(make(message_id="kept")[0])
    assert box.take(10, 1 << 20, StubTaker(keep=False)) is None
    assert len(box) == 1  # left for another taker
    assert ids(take(box, 10)) == ["kept"]


# ------------------------------------------------------------ idle takers


def test_an_empty_mailbox_keeps_the_taker_and_the_next_put_wakes_it_once():
    box = Mailbox(limit=10)
    taker = StubTaker()
    assert box.take(10, 1 << 20, taker) == []
    assert taker.woken == 0
    box.put(make(message_id="m")[0])
    assert taker.woken == 1
    box.put(make(message_id="n")[0])
    assert taker.woken == 1  # handed back once: no longer idle
    assert ids(box.take(10, 1 << 20, taker)) == ["m", "n"]
    assert taker.woken == 1


def test_a_taker_given_a_batch_is_not_kept_as_idle():
    box = Mailbox(limit=10)
    taker = StubTaker()
    box.put(make(message_id="m")[0])
    assert ids(box.take(10, 1 << 20, taker)) == ["m"]
    box.put(make(message_id="n")[0])
    assert taker.woken == 0


def test_puts_wake_idle_takers_first_come_first_woken():
    box = Mailbox(limit=10)
    first, second = StubTaker(), StubTaker()
    assert box.take(10, 1 << 20, first) == []
    assert box.take(10, 1 << 20, second) == []
    box.put(make()[0])
    assert (first.woken, second.woken) == (1, 0)
    box.put(make()[0])
    assert (first.woken, second.woken) == (1, 1)


def test_wake_all_wakes_every_idle_taker_once():
    box = Mailbox(limit=10)
    takers = [StubTaker() for _ in range(3)]
    for taker in takers:
        assert box.take(10, 1 << 20, taker) == []
    box.wake_all()
    box.wake_all()
    assert [t.woken for t in takers] == [1, 1, 1]


def test_adopted_and_forwarded_messages_wake_idle_takers():
    old, new = Mailbox(limit=10), Mailbox(limit=10)
    on_old, on_new = StubTaker(), StubTaker()
    assert old.take(10, 1 << 20, on_old) == []
    assert new.take(10, 1 << 20, on_new) == []
    old.put(make(message_id="a")[0])
    assert on_old.woken == 1
    assert ids(old.take(10, 1 << 20, on_old) or []) == ["a"]
    old.adopt([make(message_id="b")[0]])
    old.forward_to(new)
    assert on_new.woken == 1
    assert ids(take(new)) == ["b"]


def test_a_stopping_taker_passes_the_wake_up_on():
    """A put wakes one idle taker; if that one has stopped, the message must
    still reach a live taker instead of waiting for the next put."""
    box = Mailbox(limit=10)
    retiring, live = StubTaker(), StubTaker()
    assert box.take(10, 1 << 20, retiring) == []
    assert box.take(10, 1 << 20, live) == []
    box.put(make(message_id="m")[0])  # wakes the retiring taker first
    assert (retiring.woken, live.woken) == (1, 0)
    retiring.keep = False
    assert box.take(10, 1 << 20, retiring) is None
    assert live.woken == 1
    assert ids(box.take(10, 1 << 20, live)) == ["m"]


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
