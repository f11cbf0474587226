"""The API loop's stream to a worker (supervisor/loop_delivery.py), against a
real worker process: batches answered in order over one HandleStream, a
missed hang bound, a dead worker, and probes while the stream is open."""

from __future__ import annotations

import asyncio
import threading

import pytest

from caxton.internal.v1 import worker_pb2
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.loop_delivery import LoopChannel, connect_ahead
from caxton.supervisor.worker_client import WorkerCallError, handle_request
from caxton.v1 import caxton_pb2

from .harness import wait_until
from .test_worker_client import HANG_BOUND_S, run

NEVER = Deadline.never()


@pytest.fixture
def loop():
    running = asyncio.new_event_loop()
    yield running
    running.close()


@pytest.fixture
def channel(worker, loop):
    opened = LoopChannel(worker.socket_path, loop)
    yield opened
    opened.close()
    settle(loop)


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run what was handed to the loop (the close), and what that started."""

    async def settled() -> None:
        await asyncio.sleep(0)
        await asyncio.gather(*(task for task in asyncio.all_tasks() if task is not asyncio.current_task()))

    loop.run_until_complete(settled())


def ready(channel: LoopChannel, loop: asyncio.AbstractEventLoop) -> bool:
    """channel.ready(), called on the loop (grpc.aio binds a channel to the
    loop running when it is opened)."""

    async def on_loop() -> bool:
        await asyncio.sleep(0.01)
        return channel.ready()

    return loop.run_until_complete(on_loop())


def connect(channel: LoopChannel, loop: asyncio.AbstractEventLoop) -> None:
    wait_until(lambda: ready(channel, loop), 10, "the loop's channel to connect")


def batch(*contents: bytes) -> worker_pb2.HandleRequest:
    messages = [caxton_pb2.AgentMessage(receiver="slow", content=content) for content in contents]
    return handle_request(messages, [NEVER] * len(messages))


def replies(response: worker_pb2.HandleResponse) -> list[bytes]:
    assert all(result.code == 0 for result in response.results)
    return [result.reply for result in response.results]


def test_batches_are_answered_in_order_over_one_stream(worker, client, channel, loop, tmp_path):
    worker.load(client, "slow", tmp_path)
    connect(channel, loop)
    first = loop.run_until_complete(channel.handle(batch(b"1", b"2", b"3"), HANG_BOUND_S))
    second = loop.run_until_complete(channel.handle(batch(b"4"), HANG_BOUND_S))
    assert replies(first) == [b"1", b"2", b"3"]
    assert replies(second) == [b"4"]
    assert client.stats(Deadline.after(5)).messages == 4


def test_a_missed_hang_bound_is_timed_out_and_the_next_batch_opens_a_new_stream(worker, client, channel, loop,
                                                                                 tmp_path):
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    connect(channel, loop)
    with pytest.raises(WorkerCallError) as info:
        loop.run_until_complete(channel.handle(batch(b"1000"), 0.3))
    assert info.value.timed_out
    # The worker finishes the slow message, then answers on a new stream.
    assert replies(loop.run_until_complete(channel.handle(batch(b"5"), HANG_BOUND_S))) == [b"5"]


def test_a_dead_worker_is_a_call_error_not_a_timeout(worker, client, channel, loop, tmp_path):
    worker.load(client, "slow", tmp_path)
    connect(channel, loop)
    assert replies(loop.run_until_complete(channel.handle(batch(b"1"), HANG_BOUND_S))) == [b"1"]
    worker.stop()
    with pytest.raises(WorkerCallError) as info:
        loop.run_until_complete(channel.handle(batch(b"2"), HANG_BOUND_S))
    assert not info.value.timed_out


def test_probes_are_answered_while_the_stream_is_open_and_a_call_runs(worker, client, channel, loop, tmp_path):
    """The open stream holds one of the worker's threads between batches; a
    message on the thread path holds another; Stats still has one."""
    worker.load(client, "slow", tmp_path, timeout_ms=20_000)
    connect(channel, loop)
    assert replies(loop.run_until_complete(channel.handle(batch(b"1"), HANG_BOUND_S))) == [b"1"]
    busy = threading.Thread(target=run, args=(client, b"3000"), daemon=True)
    busy.start()
    wait_until(lambda: client.probe(Deadline.after(1)).result().messages == 2, 10, "a probe during the message")
    assert busy.is_alive()
    busy.join(HANG_BOUND_S)


def test_a_closed_channel_refuses_batches(worker, client, channel, loop, tmp_path):
    worker.load(client, "slow", tmp_path)
    connect(channel, loop)
    channel.close()
    settle(loop)
    assert not ready(channel, loop)
    with pytest.raises(WorkerCallError):
        loop.run_until_complete(channel.handle(batch(b"1"), HANG_BOUND_S))


def test_a_channel_let_go_while_its_worker_rests_opens_again_for_the_next_batch(worker, client, channel, loop,
                                                                                tmp_path):
    worker.load(client, "slow", tmp_path)
    connect(channel, loop)
    assert replies(loop.run_until_complete(channel.handle(batch(b"1"), HANG_BOUND_S))) == [b"1"]
    channel.rest()
    settle(loop)
    # Let go: not connected any more (ready() starts connecting again)...
    assert not ready(channel, loop)
    # ...and a batch that comes meanwhile is sent once it is up.
    assert replies(loop.run_until_complete(channel.handle(batch(b"2"), HANG_BOUND_S))) == [b"2"]
    # A batch that comes right after a rest, before anything asked for the
    # channel, opens it itself rather than fail.
    channel.rest()
    settle(loop)
    assert replies(loop.run_until_complete(channel.handle(batch(b"3"), HANG_BOUND_S))) == [b"3"]


@pytest.fixture
def loop_thread():
    """An event loop running in a thread of its own, as the API's does."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, name="test-loop", daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(10)
    running.close()


def on(loop: asyncio.AbstractEventLoop, coroutine, timeout: float = 30.0):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


def test_a_spare_s_channel_comes_connected_and_its_first_batch_goes_over_the_stream_opened_ahead(
        worker, client, loop_thread, tmp_path):
    ahead = connect_ahead(worker.socket_path, loop_thread, 10)
    assert ahead is not None and ahead.loop is loop_thread
    # Opened while the worker is a spare: before its module is loaded.
    worker.load(client, "slow", tmp_path)
    channel = LoopChannel(worker.socket_path, loop_thread, ahead)

    async def ready_now() -> bool:
        return channel.ready()

    assert on(loop_thread, ready_now())
    try:
        assert replies(on(loop_thread, channel.handle(batch(b"1", b"2"), HANG_BOUND_S))) == [b"1", b"2"]
        assert not ahead.stream.done()  # the very stream opened ahead carried it, and stays open
    finally:
        channel.close()
    wait_until(lambda: ahead.stream.done(), 10, "the stream opened ahead to end with its channel")


def test_connecting_ahead_to_a_worker_that_is_not_there_gives_up_in_time(tmp_path, loop_thread):
    assert connect_ahead(str(tmp_path / "nobody.sock"), loop_thread, 0.5) is None

    async def pending() -> int:
        await asyncio.sleep(0.05)  # let the cancelled connect close its channel
        return len([task for task in asyncio.all_tasks() if task is not asyncio.current_task()])

    assert on(loop_thread, pending()) == 0
