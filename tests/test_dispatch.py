"""Dispatch (supervisor/dispatch.py): the elastic pool and the dispatcher that
feeds one instance from a mailbox without holding a thread while idle."""

from __future__ import annotations

import asyncio
import functools
import threading

import grpc
import pytest

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.dispatch import Dispatcher, DispatchPool
from caxton.supervisor.mailbox import Mailbox, Pending
from caxton.v1 import caxton_pb2
from tests.harness import wait_until

TIMEOUT = 5.0


def message(number: int) -> Pending:
    return Pending(caxton_pb2.AgentMessage(receiver="a", message_id=str(number)), Deadline.never(),
                   lambda *outcome: None)


class Worker:
    """A deliver function that records batches, can be held shut, and fails
    loudly if two batches of one dispatcher ever overlap."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.batches = 0
        self.alive = True
        self.gate = threading.Event()
        self.gate.set()
        self._inside = threading.Lock()

    def deliver(self, batch: list[Pending]) -> bool:
        assert self._inside.acquire(blocking=False), "two batches delivered at once"
        try:
            self.gate.wait(TIMEOUT)
            self.batches += 1
            for pending in batch:
                self.taken.append(pending.message.message_id)
                pending.resolve(grpc.StatusCode.OK)
        finally:
            self._inside.release()
        return self.alive


def dispatcher(pool: DispatchPool, worker: Worker) -> Dispatcher:
    return Dispatcher(pool, worker.deliver, lambda: worker.alive, batch_max_messages=8, batch_max_bytes=1 << 20)


def test_pool_threads_follow_the_work_and_retire_when_idle():
    pool = DispatchPool(idle_timeout_s=0.2)
    release = threading.Event()
    running = threading.Semaphore(0)

    def task() -> None:
        running.release()
        release.wait(TIMEOUT)

    for _ in range(3):
        pool.submit(task)
    for _ in range(3):
        assert running.acquire(timeout=TIMEOUT)
    assert pool.threads == 3  # three tasks waiting at once: three threads
    release.set()
    wait_until(lambda: pool.threads == 0, TIMEOUT, "idle pool threads to retire")


def test_pool_reuses_an_idle_thread():
    pool = DispatchPool(idle_timeout_s=TIMEOUT)
    names: list[str] = []
    done = threading.Semaphore(0)

    def task() -> None:
        names.append(threading.current_thread().name)
        done.release()

    pool.submit(task)
    assert done.acquire(timeout=TIMEOUT)
    wait_until(lambda: pool._idle == 1, TIMEOUT, "the thread to go idle")
    pool.submit(task)
    assert done.acquire(timeout=TIMEOUT)
    assert names[0] == names[1] and pool.threads == 1


def test_messages_arrive_in_order_and_no_thread_is_held_while_idle():
    pool = DispatchPool(idle_timeout_s=0.2)
    worker = Worker()
    box = Mailbox(limit=10_000)
    feeder = dispatcher(pool, worker)
    feeder.serve(box)
    for number in range(500):
        box.put(message(number))
    wait_until(lambda: len(worker.taken) == 500, TIMEOUT, "every message delivered")
    assert worker.taken == [str(n) for n in range(500)]
    wait_until(lambda: pool.threads == 0, TIMEOUT, "the pool to hold no thread for an idle mailbox")
    box.put(message(500))
    wait_until(lambda: worker.taken[-1:] == ["500"], TIMEOUT, "a message after the idle spell")


def test_replicas_share_a_mailbox_and_each_takes_one_batch_at_a_time():
    pool = DispatchPool()
    workers = [Worker() for _ in range(3)]
    box = Mailbox(limit=10_000)
    for worker in workers:
        dispatcher(pool, worker).serve(box)
    senders = [threading.Thread(target=lambda base=base: [box.put(message(base + n)) for n in range(300)])
               for base in (0, 1000, 2000)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(TIMEOUT)
    wait_until(lambda: sum(len(w.taken) for w in workers) == 900, TIMEOUT, "every message delivered once")
    taken = [m for w in workers for m in w.taken]
    assert len(set(taken)) == 900


def test_retire_with_drain_takes_what_is_queued_then_stops():
    pool = DispatchPool()
    worker = Worker()
    worker.gate.clear()  # hold the first batch inside the worker
    box = Mailbox(limit=100)
    feeder = dispatcher(pool, worker)
    feeder.serve(box)
    box.put(message(0))
    wait_until(lambda: len(box) == 0, TIMEOUT, "the first batch taken")
    for number in range(1, 20):
        box.put(message(number))
    feeder.retire(drain=True)
    assert not feeder.wait_stopped(Deadline.after(0.05))
    worker.gate.set()
    assert feeder.wait_stopped(Deadline.after(TIMEOUT))
    assert worker.taken == [str(n) for n in range(20)]


def test_retire_without_drain_stops_after_the_batch_in_hand():
    pool = DispatchPool()
    worker = Worker()
    worker.gate.clear()
    box = Mailbox(limit=100)
    feeder = dispatcher(pool, worker)
    feeder.serve(box)
    box.put(message(0))
    wait_until(lambda: len(box) == 0, TIMEOUT, "the first batch taken")
    box.put(message(1))
    feeder.retire(drain=False)
    worker.gate.set()
    assert feeder.wait_stopped(Deadline.after(TIMEOUT))
    assert worker.taken == ["0"] and len(box) == 1


def test_an_idle_dispatcher_stops_when_retired_and_serves_again_when_reinstated():
    pool = DispatchPool()
    worker = Worker()
    box = Mailbox(limit=100)
    feeder = dispatcher(pool, worker)
    feeder.serve(box)
    box.put(message(0))
    wait_until(lambda: worker.taken == ["0"], TIMEOUT, "the first message")
    feeder.retire(drain=False)
    assert feeder.wait_stopped(Deadline.after(TIMEOUT))
    box.put(message(1))
    assert len(box) == 1  # a retired dispatcher takes nothing
    feeder.reinstate()
    feeder.serve(box)
    wait_until(lambda: worker.taken == ["0", "1"], TIMEOUT, "the message after reinstatement")


def test_a_dead_worker_hands_the_message_to_a_live_replica():
    pool = DispatchPool()
    dead, live = Worker(), Worker()
    box = Mailbox(limit=100)
    dispatcher(pool, dead).serve(box)
    wait_until(lambda: len(box._idle) == 1, TIMEOUT, "the first dispatcher to go idle")
    dispatcher(pool, live).serve(box)
    wait_until(lambda: len(box._idle) == 2, TIMEOUT, "both dispatchers idle")
    dead.alive = False
    box.put(message(0))  # wakes the dead one's dispatcher first
    wait_until(lambda: live.taken == ["0"], TIMEOUT, "the live replica to take the message")
    assert dead.taken == []


def test_move_to_takes_from_the_new_mailbox():
    pool = DispatchPool()
    worker = Worker()
    old, new = Mailbox(limit=100), Mailbox(limit=100)
    feeder = dispatcher(pool, worker)
    feeder.serve(old)
    wait_until(lambda: len(old._idle) == 1, TIMEOUT, "the dispatcher to go idle")
    feeder.move_to(new)
    new.put(message(7))
    wait_until(lambda: worker.taken == ["7"], TIMEOUT, "the message put in the new mailbox")
    old.put(message(8))
    assert len(old) == 1


# ------------------------------------------------------------ drains on the API loop


class LoopWorker:
    """A LoopDelivery that records which thread each batch went from; it
    hands batches whose first message id is in `hand_over` to a pool thread."""

    def __init__(self, loop_thread: int) -> None:
        self.taken: list[str] = []
        self.on_loop: list[bool] = []
        self.connected = True
        self.hand_over: set[str] = set()
        self._loop_thread = loop_thread

    def ready(self) -> bool:
        return self.connected

    async def deliver(self, batch: list[Pending]):
        await asyncio.sleep(0)  # a real call awaits the worker
        self.on_loop.append(threading.get_ident() == self._loop_thread)
        if batch[0].message.message_id in self.hand_over:
            return functools.partial(self.finish_on_thread, batch)
        return self.finish_on_thread(batch)

    def finish_on_thread(self, batch: list[Pending]) -> bool:
        for pending in batch:
            self.taken.append(pending.message.message_id)
            pending.resolve(grpc.StatusCode.OK)
        return True


@pytest.fixture
def api_loop():
    """An event loop in a thread of its own, like the supervisor's API loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-api-loop", daemon=True)
    thread.start()
    try:
        yield loop, thread
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, fn) -> None:
    asyncio.run_coroutine_threadsafe(_call(fn), loop).result(TIMEOUT)


async def _call(fn) -> None:
    fn()


def loop_fed(api_loop, batch_max_messages: int = 8) -> tuple[Worker, LoopWorker, Mailbox]:
    """A dispatcher whose pool serves the test's API loop, serving a new
    mailbox and idle; the thread path's Worker and the loop's LoopWorker."""
    loop, thread = api_loop
    pool = DispatchPool(idle_timeout_s=TIMEOUT)
    pool.serve_loop(loop, thread.ident)
    worker = Worker()
    loop_worker = LoopWorker(thread.ident)
    box = Mailbox(limit=10_000)
    Dispatcher(pool, worker.deliver, lambda: True, batch_max_messages=batch_max_messages, batch_max_bytes=1 << 20,
               on_loop=loop_worker).serve(box)
    wait_until(lambda: len(box._idle) == 1, TIMEOUT, "the dispatcher to be idle")
    return worker, loop_worker, box


def test_a_dispatcher_woken_on_the_loop_drains_there_in_order(api_loop):
    loop, _ = api_loop
    worker, loop_worker, box = loop_fed(api_loop)
    on_loop(loop, lambda: [box.put(message(n)) for n in range(20)])
    wait_until(lambda: len(loop_worker.taken) == 20, TIMEOUT, "the messages put on the loop to be delivered")
    assert loop_worker.taken == [str(n) for n in range(20)]
    assert loop_worker.on_loop and all(loop_worker.on_loop)
    assert worker.taken == []  # no batch went by a pool thread
    # Put from another thread, the next message goes by a pool thread.
    wait_until(lambda: len(box._idle) == 1, TIMEOUT, "the dispatcher to be idle again")
    box.put(message(20))
    wait_until(lambda: worker.taken == ["20"], TIMEOUT, "a message put off the loop to go by a pool thread")


def test_a_batch_the_loop_hands_over_is_finished_on_a_thread_and_order_holds(api_loop):
    loop, _ = api_loop
    worker, loop_worker, box = loop_fed(api_loop, batch_max_messages=1)
    worker.gate.clear()  # the thread path holds the drain it continues
    loop_worker.hand_over = {"0"}
    on_loop(loop, lambda: [box.put(message(n)) for n in range(3)])
    # "0" was handed over and finished on a pool thread, which goes on with
    # the drain there: "1" and "2" wait behind the (held) thread path.
    wait_until(lambda: loop_worker.taken == ["0"], TIMEOUT, "the handed-over batch to be finished")
    assert worker.taken == []
    worker.gate.set()
    wait_until(lambda: worker.taken == ["1", "2"], TIMEOUT, "the rest of the drain, on the thread, in order")


def test_until_the_loop_channel_is_ready_batches_go_by_a_pool_thread(api_loop):
    loop, _ = api_loop
    worker, loop_worker, box = loop_fed(api_loop)
    loop_worker.connected = False
    on_loop(loop, lambda: box.put(message(0)))
    wait_until(lambda: worker.taken == ["0"], TIMEOUT, "the message to go by a pool thread")
    assert loop_worker.taken == []
