"""SendStreamFlow's account of the results it holds (supervisor/messaging.py).

In process: results are added as the dispatchers would add them, and the
writer writes them to a context that only collects frames. What the stream
charges to the memory budget for results waiting to be written must all
come back once they are written, whatever their sizes.
"""

from __future__ import annotations

import asyncio

import grpc

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


def test_waiting_results_are_charged_in_steps_and_all_released_once_written():
    budget = MemoryBudget(1024 * MIB, 64 * MIB)
    loop = asyncio.new_event_loop()
    try:
        flow = SendStreamFlow(Routed(budget), loop, Deadline.never(), Principal("admin", Role.ADMIN))
        flow._reading = False  # the client has sent everything
        sizes = [100] * 200 + [MIB] + [10] * 50
        flow._open = len(sizes)
        message = caxton_pb2.AgentMessage(receiver="a", sender="b", content=b"x")
        for item_id, size in enumerate(sizes):
            flow._result(item_id, message, 1, OK, "", b"r" * size)
        held = sum(size + MESSAGE_OVERHEAD_BYTES for size in sizes)
        # Charged as results wait, short of what they hold by less than a step.
        assert held - CHARGE_STEP_BYTES < budget.used <= held
        context = Collecting()
        loop.run_until_complete(asyncio.wait_for(flow.write(context), 5))
    finally:
        loop.close()
    assert [result.id for frame in context.frames for result in frame.results] == list(range(len(sizes)))
    assert budget.used == 0
