"""Throughput: messages per second through the supervisor to echo agents.

Four ways in, each to one agent and to eight:

- `SendStream`, frames of FRAME messages with WINDOW frames in flight (the
  way the API is meant to be used for throughput);
- N=8 concurrent unary `Send` clients (threads, one channel each).

Baselines, same run:

- the same echo agent called in-process through `worker.sandbox.Sandbox`
  (default limits, inside `running()`): what one core can do with wasmtime
  and nothing else, the physical limit of one worker;
- 8 unary clients against the bare two-hop chain (bench/baselines.py): what
  gRPC itself allows for unary calls on this machine.

The client runs on the same two cores as the supervisor and its workers, so
its CPU is part of the picture; the CPU each process spends per message is in
extra_info. Every result is matched to its request by the number carried in
its content.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from caxton.worker.sandbox import Sandbox, SandboxLimits
from tests.harness import SupervisorProcess

from . import report
from .frozen_call_path import FrozenCallPath
from .support import CpuMeter, Metadata, auth_metadata, numbered_payload, payload_number

FRAME = 256  # messages per SendStream frame (= the supervisor's batch bound)
WINDOW = 4  # frames in flight per stream
STREAM_MESSAGES = FRAME * 80  # per round
UNARY_CLIENTS = 8
UNARY_PER_CLIENT = 500  # per client per round
IN_PROCESS_MESSAGES = 20_000
ROUNDS = 3
AGENTS = [f"tp-{i}" for i in range(8)]
GROUP = "throughput: 100-byte messages, time per round"

DEFAULT_LIMITS = SandboxLimits(memory_bytes=64 << 20, fuel=1_000_000_000, timeout_ms=5000, max_message_bytes=1 << 20)


@pytest.fixture(scope="module")
def tp_agents(supervisor: SupervisorProcess, echo_wasm: bytes) -> Iterator[list[str]]:
    deployed = []
    try:
        for name in AGENTS:
            supervisor.deploy(name, wasm=echo_wasm)
            deployed.append(name)
        yield deployed
    finally:
        for name in deployed:
            supervisor.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def _record_rate(benchmark, messages: int, meter: CpuMeter, total_messages: int, key: str, label: str) -> float:
    """Rate of the best round (the least disturbed by other work on the
    machine); the median round's rate goes to extra_info beside it."""
    rate = messages / benchmark.stats.stats.min
    median_rate = messages / benchmark.stats.stats.median
    benchmark.extra_info.update(messages_per_round=messages, msg_per_s=round(rate), median_msg_per_s=round(median_rate),
                                **meter.per_message_us(total_messages))
    report.record(f"throughput.{key}.rate", rate, "msg/s", label)
    return rate


def _cpu_groups(supervisor: SupervisorProcess) -> dict[str, list[int]]:
    return {"client": [os.getpid()], "supervisor": [supervisor.pid], "workers": supervisor.worker_pids()}


# ------------------------------------------------------------ streaming


def _frames(receivers: list[str], total: int) -> list[caxton_pb2.SendStreamRequest]:
    """Messages numbered 0..total-1, spread round-robin over `receivers`."""
    frames = []
    for start in range(0, total, FRAME):
        items = [
            caxton_pb2.StreamItem(
                id=n,
                message=caxton_pb2.AgentMessage(
                    receiver=receivers[n % len(receivers)], sender="bench", content=numbered_payload(n)
                ),
            )
            for n in range(start, min(start + FRAME, total))
        ]
        frames.append(caxton_pb2.SendStreamRequest(items=items))
    return frames


def _stream_round(stub: caxton_pb2_grpc.MessagingStub, frames: list[caxton_pb2.SendStreamRequest],
                  metadata: Metadata, window: int = WINDOW) -> int:
    """Send every frame on one stream (which carries `metadata` once), at most
    `window` frames unanswered; return the number of correct results (every
    one must be)."""
    total = sum(len(f.items) for f in frames)
    credits = threading.Semaphore(window)
    finished = threading.Event()

    def requests() -> Iterator[caxton_pb2.SendStreamRequest]:
        for frame in frames:
            while not credits.acquire(timeout=0.1):
                if finished.is_set():
                    return
            yield frame

    responses = stub.SendStream(requests(), timeout=300, metadata=metadata)
    received = ok = released = 0
    try:
        for response in responses:
            for result in response.results:
                if result.code == 0 and result.has_reply and payload_number(result.reply.content) == result.id:
                    ok += 1
            received += len(response.results)
            while released < received // FRAME:
                credits.release()
                released += 1
    finally:
        finished.set()
        responses.cancel()
    assert received == total and ok == total, f"{ok} correct results of {received} received, {total} sent"
    return ok


def _bench_stream(benchmark, supervisor: SupervisorProcess, receivers: list[str], key: str, label: str) -> None:
    rounds_run = 0
    metadata = auth_metadata(supervisor)
    with grpc.insecure_channel(supervisor.address) as channel:
        stub = caxton_pb2_grpc.MessagingStub(channel)

        def setup():
            return (_frames(receivers, STREAM_MESSAGES),), {}

        def run(frames: list[caxton_pb2.SendStreamRequest]) -> None:
            nonlocal rounds_run
            _stream_round(stub, frames, metadata)
            rounds_run += 1

        with CpuMeter(_cpu_groups(supervisor)) as meter:
            benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info.update(frame=FRAME, window=WINDOW, agents=len(receivers))
    _record_rate(benchmark, STREAM_MESSAGES, meter, rounds_run * STREAM_MESSAGES, key, label)


@pytest.mark.benchmark(group=GROUP)
def test_stream_one_agent(benchmark, supervisor: SupervisorProcess, tp_agents: list[str]) -> None:
    _bench_stream(benchmark, supervisor, tp_agents[:1], "stream_1", f"SendStream, 1 agent ({FRAME}/frame)")


@pytest.mark.benchmark(group=GROUP)
def test_stream_eight_agents(benchmark, supervisor: SupervisorProcess, tp_agents: list[str]) -> None:
    _bench_stream(benchmark, supervisor, tp_agents, "stream_8", f"SendStream, 8 agents ({FRAME}/frame)")


# ------------------------------------------------------------ unary clients


class UnaryClients:
    """UNARY_CLIENTS threads, each with its own channel and connection (as
    separate client processes would have), each sending sequentially, every
    call carrying `metadata` (Caxton's: the token)."""

    def __init__(self, address: str, count: int = UNARY_CLIENTS, metadata: Metadata | None = None):
        self._metadata = metadata
        # A local subchannel pool per channel: otherwise grpc shares one
        # connection between channels to the same address.
        self._channels = [
            grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)
        ]
        self._stubs = [caxton_pb2_grpc.MessagingStub(c) for c in self._channels]
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="client")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for channel in self._channels:
            channel.close()

    def run(self, receivers: list[str], per_client: int) -> int:
        """Every client sends `per_client` messages to its receiver (client i
        to receivers[i % len]); returns the number of correct replies."""
        futures = [
            self._pool.submit(self._client, stub, receivers[i % len(receivers)], i * per_client, per_client,
                              self._metadata)
            for i, stub in enumerate(self._stubs)
        ]
        return sum(f.result() for f in futures)

    @staticmethod
    def _client(stub: caxton_pb2_grpc.MessagingStub, receiver: str, first: int, count: int,
                metadata: Metadata | None) -> int:
        ok = 0
        for n in range(first, first + count):
            message = caxton_pb2.AgentMessage(receiver=receiver, sender="bench", content=numbered_payload(n))
            response = stub.Send(caxton_pb2.SendRequest(message=message), timeout=60, metadata=metadata)
            if response.has_reply and payload_number(response.reply.content) == n:
                ok += 1
        return ok


def _bench_unary(benchmark, address: str, receivers: list[str], cpu_groups: dict[str, list[int]],
                 key: str, label: str, metadata: Metadata | None = None) -> None:
    clients = UnaryClients(address, metadata=metadata)
    total = UNARY_CLIENTS * UNARY_PER_CLIENT
    rounds_run = 0
    try:
        clients.run(receivers, 2)  # connect every channel outside the measurement

        def run() -> None:
            nonlocal rounds_run
            ok = clients.run(receivers, UNARY_PER_CLIENT)
            assert ok == total, f"{ok} correct replies of {total}"
            rounds_run += 1

        with CpuMeter(cpu_groups) as meter:
            benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    finally:
        clients.close()
    benchmark.extra_info.update(clients=UNARY_CLIENTS, agents=len(receivers))
    _record_rate(benchmark, total, meter, rounds_run * total, key, label)


@pytest.mark.benchmark(group=GROUP)
def test_unary8_one_agent(benchmark, supervisor: SupervisorProcess, tp_agents: list[str]) -> None:
    _bench_unary(benchmark, supervisor.address, tp_agents[:1], _cpu_groups(supervisor),
                 "unary8_1", "8 unary clients, 1 agent", auth_metadata(supervisor))


@pytest.mark.benchmark(group=GROUP)
def test_unary8_eight_agents(benchmark, supervisor: SupervisorProcess, tp_agents: list[str]) -> None:
    _bench_unary(benchmark, supervisor.address, tp_agents, _cpu_groups(supervisor),
                 "unary8_8", "8 unary clients, 8 agents", auth_metadata(supervisor))


@pytest.mark.benchmark(group=GROUP)
def test_two_hop_unary8_baseline(benchmark, two_hop) -> None:
    forwarder, upstream = two_hop
    groups = {"client": [os.getpid()], "forwarder": [forwarder.pid], "upstream": [upstream.pid]}
    _bench_unary(benchmark, forwarder.address, ["echo"], groups, "two_hop_unary8", "bare two hops, 8 unary clients")


# ------------------------------------------------------------ in-process baseline


@pytest.mark.benchmark(group=GROUP)
def test_in_process_baseline(benchmark, tmp_path: Path, echo_wasm: bytes) -> None:
    """The echo agent through `Sandbox.handle` in this process: no gRPC, no
    other process, one core."""
    wasm_path = tmp_path / "echo.wasm"
    wasm_path.write_bytes(echo_wasm)
    sandbox = Sandbox(str(wasm_path), DEFAULT_LIMITS, cache_dir="")
    messages = [
        caxton_pb2.AgentMessage(receiver="echo", sender="bench", content=numbered_payload(n))
        for n in range(IN_PROCESS_MESSAGES)
    ]
    rounds_run = 0
    with sandbox.running():
        assert sandbox.start() == 0

    def run() -> None:
        """One round is one batch, as a worker runs a Handle request."""
        nonlocal rounds_run
        ok = 0
        with sandbox.running():
            for n, message in enumerate(messages):
                if payload_number(sandbox.handle(message).reply) == n:
                    ok += 1
        assert ok == len(messages), f"{ok} correct replies of {len(messages)}"
        rounds_run += 1

    try:
        with CpuMeter({"client": [os.getpid()]}) as meter:
            benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    finally:
        with sandbox.running():
            sandbox.shutdown()
    _record_rate(benchmark, IN_PROCESS_MESSAGES, meter, rounds_run * IN_PROCESS_MESSAGES, "in_process",
                 "in-process Sandbox.handle (1 core)")


@pytest.mark.benchmark(group=GROUP)
def test_in_process_frozen_baseline(benchmark, echo_wasm: bytes) -> None:
    """The same echo agent through a frozen copy of the call path Sandbox.handle
    had before the fast call path (bench/frozen_call_path.py): the fixed
    yardstick for SendStream, since the live Sandbox.handle got faster."""
    frozen = FrozenCallPath(echo_wasm, DEFAULT_LIMITS)
    messages = [
        caxton_pb2.AgentMessage(receiver="echo", sender="bench", content=numbered_payload(n))
        for n in range(IN_PROCESS_MESSAGES)
    ]
    rounds_run = 0

    def run() -> None:
        nonlocal rounds_run
        ok = sum(payload_number(frozen.handle(message).reply) == n for n, message in enumerate(messages))
        assert ok == len(messages), f"{ok} correct replies of {len(messages)}"
        rounds_run += 1

    with CpuMeter({"client": [os.getpid()]}) as meter:
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    _record_rate(benchmark, IN_PROCESS_MESSAGES, meter, rounds_run * IN_PROCESS_MESSAGES, "in_process_frozen",
                 "in-process, frozen pre-fastcall call path (1 core)")
