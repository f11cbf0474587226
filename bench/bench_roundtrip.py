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

import pytest

from caxton.v1 import caxton_pb2
from tests.harness import SupervisorProcess

from .support import Metadata, auth_metadata, measure_sends

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
    measure_sends(benchmark, address, receiver, cpu_groups, f"roundtrip.{key}", label, metadata,
                  rounds=ROUNDS, warmup=WARMUP)


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
