"""Message round trip: one `Messaging.Send` of 100 bytes to the echo agent.

Measured beside two bare gRPC baselines in the same run (see
bench/baselines.py), all called the same way from this process with the same
protobuf messages:

- one hop: client -> echo server over TCP loopback (the floor of any gRPC call);
- two hops: client -> forwarder over TCP -> echo server over a Unix socket,
  which is the shape of client -> supervisor -> worker without Caxton in it.

Send p50 / two-hop p50 is what Caxton itself costs per message when idle.
Every reply is checked, so a failing path cannot pass for a fast one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import SupervisorProcess

from . import report
from .support import PAYLOAD, CpuMeter, Metadata, auth_metadata

ROUNDS = 2000  # calls measured per target: enough for a stable p99
WARMUP = 200

AGENT = "rt-echo"


@pytest.fixture(scope="module")
def rt_agent(supervisor: SupervisorProcess, echo_wasm: bytes) -> Iterator[str]:
    supervisor.deploy(AGENT, wasm=echo_wasm)
    try:
        yield AGENT
    finally:
        supervisor.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=AGENT), timeout=60)


def _measure(benchmark, address: str, receiver: str, cpu_groups: dict[str, list[int]], key: str, label: str,
             metadata: Metadata | None = None) -> None:
    """Time ROUNDS sequential Send calls on a fresh channel, each carrying
    `metadata` (Caxton's: the token); record p50/p99 and the CPU each
    process spent per call."""
    request = caxton_pb2.SendRequest(
        message=caxton_pb2.AgentMessage(receiver=receiver, sender="bench", content=PAYLOAD)
    )
    calls = 0
    with grpc.insecure_channel(address) as channel:
        stub = caxton_pb2_grpc.MessagingStub(channel)

        def call() -> None:
            nonlocal calls
            response = stub.Send(request, timeout=10, metadata=metadata)
            calls += 1
            assert response.has_reply and response.reply.content == PAYLOAD, "wrong reply"

        call()  # connect outside the measurement
        with CpuMeter(cpu_groups) as meter:
            benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=WARMUP)
    samples = benchmark.stats.stats.data
    p50 = report.percentile(samples, 50) * 1e6
    p99 = report.percentile(samples, 99) * 1e6
    benchmark.extra_info.update(p50_us=round(p50, 1), p99_us=round(p99, 1), **meter.per_message_us(calls))
    report.record(f"roundtrip.{key}.p50", p50, "µs", f"{label} p50")
    report.record(f"roundtrip.{key}.p99", p99, "µs", f"{label} p99")


@pytest.mark.benchmark(group="roundtrip: 100-byte Send, sequential")
def test_one_hop_baseline(benchmark, one_hop) -> None:
    _measure(benchmark, one_hop.address, "echo", {"client": [os.getpid()], "server": [one_hop.pid]},
             "one_hop", "bare gRPC one hop (TCP)")


@pytest.mark.benchmark(group="roundtrip: 100-byte Send, sequential")
def test_two_hop_baseline(benchmark, two_hop) -> None:
    forwarder, upstream = two_hop
    _measure(benchmark, forwarder.address, "echo",
             {"client": [os.getpid()], "forwarder": [forwarder.pid], "upstream": [upstream.pid]},
             "two_hop", "bare gRPC two hops (TCP+unix)")


@pytest.mark.benchmark(group="roundtrip: 100-byte Send, sequential")
def test_caxton_send(benchmark, supervisor: SupervisorProcess, rt_agent: str) -> None:
    worker_pids = [i.pid for i in supervisor.status(rt_agent).instances]
    _measure(benchmark, supervisor.address, rt_agent,
             {"client": [os.getpid()], "supervisor": [supervisor.pid], "worker": worker_pids},
             "send", "Caxton Messaging.Send", auth_metadata(supervisor))
