"""SendStreamFlow's account of the results it holds (supervisor/messaging.py).

In process: results are added as the dispatchers would add them, and the
writer writes them to a context that only collects frames. What the stream
charges to the memory budget for results waiting to be written must all
come back once they are written, whatever their sizes.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from caxton.supervisor.auth import Principal, Role
from caxton.supervisor.deadline import Deadline
from caxton.supervisor.memory_budget import MESSAGE_OVERHEAD_BYTES, MemoryBudget
from caxton.supervisor.messaging import CHARGE_STEP_BYTES, SendStreamFlow
from caxton.v1 import caxton_pb2

OK = grpc.StatusCode.OK
MIB = 1 << 20


class Routed:
    """What SendStreamFlow needs of a Router to write results: its budget."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget


class Collecting:
    """A ServicerContext that keeps what is written."""

    def __init__(self) -> None:
        self.frames: list[caxton_pb2.SendStreamResponse] = []

    async def write(self, response: caxton_pb2.SendStreamResponse) -> None:
        self.frames.append(response)


def _callbacks(flow: SendStreamFlow, count: int) -> list:
    """The outcome callbacks the flow makes for `count` messages of one
    receiver as it reads them from a frame (1 byte of content each)."""
    items = [caxton_pb2.StreamItem(id=i, message=caxton_pb2.AgentMessage(receiver="a", sender="b", content=b"x"))
             for i in range(count)]
    taken, groups = flow._take_in(items, 0)
    assert taken == count and len(groups) == 1
    [(_, callbacks)] = groups.values()
    return callbacks


def _one_by_one(flow: SendStreamFlow, callbacks: list, replies: list[bytes | None]) -> None:
    for callback, reply in zip(callbacks, replies, strict=True):
        callback(OK, "", reply)


def _in_runs(flow: SendStreamFlow, callbacks: list, replies: list[bytes | None]) -> None:
    """As answers.Answers delivers a batch's replies: runs, here of 7."""
    pairs = list(zip(callbacks, replies, strict=True))
    for start in range(0, len(pairs), 7):
        flow.add_replies(pairs[start:start + 7])


@pytest.mark.parametrize("deliver", [_one_by_one, _in_runs])
def test_waiting_results_are_charged_in_steps_and_all_released_once_written(deliver):
    budget = MemoryBudget(1024 * MIB, 64 * MIB)
    loop = asyncio.new_event_loop()
    try:
        flow = SendStreamFlow(Routed(budget), loop, Deadline.never(), Principal("admin", Role.ADMIN))
        sizes = [100] * 200 + [MIB] + [10] * 50
        callbacks = _callbacks(flow, len(sizes))
        flow._reading = False  # the client has sent everything
        deliver(flow, callbacks, [b"r" * size for size in sizes])
        held = sum(size + MESSAGE_OVERHEAD_BYTES for size in sizes)
        # Charged as results wait, short of what they hold by less than a step.
        assert held - CHARGE_STEP_BYTES < budget.used <= held
        context = Collecting()
        loop.run_until_complete(asyncio.wait_for(flow.write(context), 5))
    finally:
        loop.close()
    results = [result for frame in context.frames for result in frame.results]
    assert [result.id for result in results] == list(range(len(sizes)))
    assert [len(result.reply.content) for result in results] == sizes
    assert all(result.has_reply and result.reply.receiver == "b" and result.reply.sender == "a" for result in results)
    assert budget.used == 0


def test_a_run_mixes_replies_and_no_replies_and_errors_come_alone():
    loop = asyncio.new_event_loop()
    try:
        flow = SendStreamFlow(Routed(MemoryBudget(1024 * MIB, 64 * MIB)), loop, Deadline.never(),
                              Principal("admin", Role.ADMIN))
        callbacks = _callbacks(flow, 3)
        flow._reading = False
        flow.add_replies([(callbacks[0], b"yes"), (callbacks[1], None)])
        callbacks[2](grpc.StatusCode.RESOURCE_EXHAUSTED, "too much", None)
        context = Collecting()
        loop.run_until_complete(asyncio.wait_for(flow.write(context), 5))
    finally:
        loop.close()
    first, second, third = [result for frame in context.frames for result in frame.results]
    assert (first.id, first.has_reply, first.reply.content) == (0, True, b"yes")
    assert (second.id, second.has_reply, second.code) == (1, False, 0)
    assert (third.id, third.has_reply, third.code, third.error) == (
        2, False, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "too much")
