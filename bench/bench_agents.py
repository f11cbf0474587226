"""Agents talking to agents: a ping-pong pair's round trip and message rate.

examples/agents/ping.wat and pong.wat (deployed as `ping` and `pong`: ping
sends to the agent named "pong") play games: an outside `Send` of "N" to
ping (with a conversation_id of our own) makes ping send "ping 1/N" to pong;
pong's reply "pong 1/N" comes back to ping as an INFORM, ping's reply
"ping 2/N" goes back to pong, and so on: 2N agent-to-agent messages, one in
flight at a time, after which ping logs "finished after N rounds". A game
is one benchmark round; GAMES games of ROUNDS_PER_GAME rounds, after one
untimed warm-up game of WARMUP_ROUNDS.

**Round trip** (the headline), from `TraceConversation`: the supervisor
stamps each agent-to-agent message with `at` (its Unix clock, just after
handing the message to the receiver's inbox). With m0, m1, m2, ... the
game's messages in order (m2k: ping -> pong at t2k, m2k+1: pong -> ping at
t2k+1), one round trip is **t2k+2 - t2k**: from ping's message to pong being
routed to ping's next message to pong being routed, i.e. pong's turn (the
supervisor hands the message to pong's worker, pong handles it, the reply
comes back with the result and is routed) plus ping's turn (the same for
ping, whose reply is its next message). That is A's send to B's reply
arriving at A *and handled there*: the reply's arrival inside ping is not
observable, only ping's next message, so every round trip also holds one
handling of the reply by ping (one more worker `Handle`; in-wasm alone that
is ~70 µs, see bench_sandbox.py). N rounds give N-1 round trips; every game's
are pooled for p50/p99. Both turns separately (t2k+1 - t2k: pong's turn,
t2k+2 - t2k+1: ping's turn) are in `extra_info`, and pong's turn is in the
table: it is the part of an outside `Send` inside the supervisor (to the
worker and back), without the client's hops. The trace is read after each
game (not followed during it), so reading it adds nothing to the game; the
supervisor keeps the newest 1,000 messages of a conversation by default
([messaging] trace_messages), hence ROUNDS_PER_GAME = 500.

Cross-check, on the client's clock: the games' mean wall time (the `Send`
to ping, until the "finished after N rounds" line arrives on an `AgentLogs`
stream opened before the game) divided by N, read against the mean of the
traced round trips: the ratio is ~1 plus the game's fixed costs over N.

Baseline, same supervisor, same run: an **outside `Messaging.Send`** round
trip, sequential, 100 bytes, to one echo agent, called as
bench_roundtrip.py does (plain channel, token as call metadata). The issue
expects the agents' round trip to be faster, as it skips the client; note
that it has two worker turns where a `Send` has one worker turn and the
client's hop.

**Rate**: the pair's agent-to-agent messages per second, 2N over a game's
wall time on the client's clock (best game; median game and the rate on the
supervisor's clock, (2N-1) / (t_last - t_0), in `extra_info`), against
`SendStream` to one echo agent driven as bench_throughput.py does (frames
of 256, 4 in flight), best of STREAM_ROUNDS. A ping-pong is sequential by
nature (one message in flight), so this is a latency-bound rate, read
against the pipelined one.

Asserted, so a broken path cannot look fast: every `Send` reply is the
echo; every game started ("started N"), ended with its "finished" line and
no warning from ping (a FAILURE), and its trace holds exactly 2N messages,
all delivered, alternating ping -> pong / pong -> ping with the right
content ("ping K/N", "pong K/N"), the first a REQUEST and every other an
INFORM answering the one before it (`in_reply_to`); every stream result is
its own message's echo. CPU per message of the client, the supervisor and
each worker is in `extra_info`. `CAXTON_BENCH_QUICK=1`: 2 games, 500 Sends,
a quarter of the stream.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Iterator
from typing import Protocol

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import SupervisorProcess, module

from . import report
from .bench_throughput import FRAME, WINDOW, _frames, _stream_round
from .support import CpuMeter, Metadata, auth_metadata, measure_sends

QUICK = os.environ.get("CAXTON_BENCH_QUICK") == "1"
ROUNDS_PER_GAME = 500  # 1,000 messages: the trace a conversation keeps by default
GAMES = 2 if QUICK else 5
WARMUP_ROUNDS = 50  # the untimed first game
SEND_CALLS = 500 if QUICK else 2000
SEND_WARMUP = 50 if QUICK else 200
STREAM_MESSAGES = FRAME * (20 if QUICK else 80)
STREAM_ROUNDS = 3
GAME_DEADLINE_S = 120.0

PING, PONG = "ping", "pong"  # ping.wat sends to the agent named "pong"
ECHO = "a2a-echo"
REQUEST = caxton_pb2.PERFORMATIVE_REQUEST
INFORM = caxton_pb2.PERFORMATIVE_INFORM

_conversations = itertools.count()

# The rows this file adds to the summary table (bench/report.py).
report.ROWS.extend([
    report.Row("agents", "agents.pair.p50", "agents.send.p50", "< 1 (skips the client)"),
    report.Row("agents", "agents.pair.p99", "agents.send.p99"),
    report.Row("agents", "agents.pong_turn.p50", "agents.send.p50"),
    report.Row("agents", "agents.per_round", "agents.pair.mean", "≈ 1 (cross-check)"),
    report.Row("agents", "agents.pair.rate", "agents.stream_1.rate"),
])


class LogStream(Protocol):
    """A followed AgentLogs call: its lines as they come, until cancelled."""

    def __iter__(self) -> Iterator[caxton_pb2.LogLine]: ...

    def cancel(self) -> bool: ...


def _wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm(module(name).decode()))


@pytest.fixture(scope="module")
def pair(supervisor: SupervisorProcess, echo_wasm: bytes) -> Iterator[None]:
    """ping, pong and an echo agent on the benchmarks' supervisor."""
    deployed: list[str] = []
    try:
        for name, wasm in ((ECHO, echo_wasm), (PONG, _wasm("pong")), (PING, _wasm("ping"))):
            supervisor.deploy(name, wasm=wasm)
            deployed.append(name)
        yield
    finally:
        for name in reversed(deployed):
            supervisor.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def _pids(supervisor: SupervisorProcess, name: str) -> list[int]:
    return [i.pid for i in supervisor.status(name).instances]


# ------------------------------------------------------------ round trip


@pytest.mark.benchmark(group="agents: round trip")
def test_outside_send_baseline(benchmark, supervisor: SupervisorProcess, pair: None) -> None:
    """SEND_CALLS sequential Sends of 100 bytes to the echo agent."""
    groups = {"client": [os.getpid()], "supervisor": [supervisor.pid], "worker": _pids(supervisor, ECHO)}
    measure_sends(benchmark, supervisor.address, ECHO, groups, "agents.send", "outside Messaging.Send",
                  auth_metadata(supervisor), rounds=SEND_CALLS, warmup=SEND_WARMUP)


class Games:
    """Plays ping-pong games through one channel and checks each one's trace."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata) -> None:
        self._messaging = caxton_pb2_grpc.MessagingStub(channel)
        self._lifecycle = caxton_pb2_grpc.AgentLifecycleStub(channel)
        self._metadata = metadata
        self._prefix = f"bench-pp-{os.getpid()}-{time.time_ns()}"

    def new(self) -> tuple[str, LogStream]:
        """A fresh conversation id, and ping's log lines from now on,
        followed (opened before the game, so none is missed)."""
        request = caxton_pb2.AgentLogsRequest(name=PING, since=time.time(), follow=True)
        logs = self._lifecycle.AgentLogs(request, timeout=GAME_DEADLINE_S, metadata=self._metadata)
        return f"{self._prefix}-{next(_conversations)}", logs

    def play(self, rounds: int, conversation: str, logs: LogStream) -> None:
        """Start a game of `rounds` rounds; return when ping logs its end."""
        try:
            message = caxton_pb2.AgentMessage(receiver=PING, sender="bench", content=str(rounds).encode(),
                                              conversation_id=conversation)
            response = self._messaging.Send(caxton_pb2.SendRequest(message=message), timeout=30,
                                            metadata=self._metadata)
            assert response.has_reply and response.reply.content == f"started {rounds}".encode(), response
            finished = f"finished after {rounds} rounds"
            for line in logs:
                # ping warns on a FAILURE or a stray message: the game is broken.
                assert line.level not in ("warning", "error"), f"ping logged {line.level}: {line.text!r}"
                if line.text == finished:
                    return
            raise AssertionError(f"ping's log stream ended before {finished!r}")
        finally:
            logs.cancel()

    def times(self, rounds: int, conversation: str) -> list[float]:
        """The game's traced messages, checked; their `at` in order."""
        request = caxton_pb2.TraceConversationRequest(conversation_id=conversation, include_content=True)
        kept = list(self._lifecycle.TraceConversation(request, timeout=30, metadata=self._metadata))
        assert len(kept) == 2 * rounds, (f"{len(kept)} messages traced, {2 * rounds} expected (is [messaging] "
                                         f"trace_messages at least {2 * rounds}?)")
        previous = None
        for i, traced in enumerate(kept):
            m = traced.message
            k = i // 2 + 1
            expected = (PING, PONG, f"ping {k}/{rounds}") if i % 2 == 0 else (PONG, PING, f"pong {k}/{rounds}")
            assert (traced.outcome, m.sender, m.receiver, m.content.decode()) == ("delivered", *expected), (i, traced)
            assert m.performative == (REQUEST if i == 0 else INFORM), (i, traced)
            if previous is not None:
                assert m.in_reply_to == (previous.reply_with or previous.message_id), (i, traced)
            previous = m
        return [traced.at for traced in kept]


@pytest.mark.benchmark(group="agents: ping-pong games")
def test_ping_pong(benchmark, supervisor: SupervisorProcess, pair: None) -> None:
    """GAMES games of ROUNDS_PER_GAME rounds, one benchmark round each."""
    metadata = auth_metadata(supervisor)
    round_trips: list[float] = []  # seconds, t2k+2 - t2k, every game
    pong_turns: list[float] = []  # t2k+1 - t2k
    ping_turns: list[float] = []  # t2k+2 - t2k+1
    traced_rates: list[float] = []  # per game, on the supervisor's clock
    with grpc.insecure_channel(supervisor.address) as channel:
        games = Games(channel, metadata)
        warmup, logs = games.new()
        games.play(WARMUP_ROUNDS, warmup, logs)
        games.times(WARMUP_ROUNDS, warmup)

        groups = {"client": [os.getpid()], "supervisor": [supervisor.pid],
                  "ping": _pids(supervisor, PING), "pong": _pids(supervisor, PONG)}
        # CPU of the games only, summed: each game's meter runs from the end
        # of its setup to the start of its teardown, so reading the trace
        # (supervisor and client) is not counted.
        spent = CpuMeter(groups)

        def setup() -> tuple[tuple[str, LogStream, CpuMeter], dict]:
            conversation, logs = games.new()
            return (conversation, logs, CpuMeter(groups).__enter__()), {}

        def play(conversation: str, logs: LogStream, meter: CpuMeter) -> None:
            games.play(ROUNDS_PER_GAME, conversation, logs)

        def teardown(conversation: str, logs: LogStream, meter: CpuMeter) -> None:
            meter.__exit__(None, None, None)
            for name, seconds in meter.used.items():
                spent.used[name] = spent.used.get(name, 0.0) + seconds
            at = games.times(ROUNDS_PER_GAME, conversation)
            round_trips.extend(at[i + 2] - at[i] for i in range(0, len(at) - 2, 2))
            pong_turns.extend(at[i + 1] - at[i] for i in range(0, len(at) - 1, 2))
            ping_turns.extend(at[i + 1] - at[i] for i in range(1, len(at) - 1, 2))
            traced_rates.append((len(at) - 1) / (at[-1] - at[0]))

        benchmark.pedantic(play, setup=setup, teardown=teardown, rounds=GAMES)
    assert len(round_trips) == GAMES * (ROUNDS_PER_GAME - 1)

    def us(samples: list[float], q: float) -> float:
        return report.percentile(samples, q) * 1e6

    messages = 2 * ROUNDS_PER_GAME
    game_s = benchmark.stats.stats
    rate = messages / game_s.min
    per_round = game_s.mean / ROUNDS_PER_GAME * 1e6
    mean = statistics.fmean(round_trips) * 1e6
    benchmark.extra_info.update(
        rounds_per_game=ROUNDS_PER_GAME, games=GAMES, round_trips=len(round_trips),
        round_trip_p50_us=round(us(round_trips, 50), 1), round_trip_p99_us=round(us(round_trips, 99), 1),
        round_trip_mean_us=round(mean, 1), round_trip_max_us=round(max(round_trips) * 1e6, 1),
        pong_turn_p50_us=round(us(pong_turns, 50), 1), pong_turn_p99_us=round(us(pong_turns, 99), 1),
        ping_turn_p50_us=round(us(ping_turns, 50), 1), ping_turn_p99_us=round(us(ping_turns, 99), 1),
        game_mean_per_round_us=round(per_round, 1),
        msg_per_s=round(rate), median_msg_per_s=round(messages / game_s.median),
        traced_msg_per_s=[round(r) for r in traced_rates],
        **spent.per_message_us(GAMES * messages),
    )
    report.record("agents.pair.p50", us(round_trips, 50), "µs", "ping -> pong -> ping round trip p50")
    report.record("agents.pair.p99", us(round_trips, 99), "µs", "ping -> pong -> ping round trip p99")
    report.record("agents.pair.mean", mean, "µs", "round trip mean (trace)")
    report.record("agents.pong_turn.p50", us(pong_turns, 50), "µs", "pong's turn (routed to reply routed) p50")
    report.record("agents.per_round", per_round, "µs", "game wall time / N (client clock, every game)")
    report.record("agents.pair.rate", rate, "msg/s", "ping-pong pair, agent-to-agent messages")


# ------------------------------------------------------------ throughput


@pytest.mark.benchmark(group="agents: messages per second")
def test_stream_one_agent_baseline(benchmark, supervisor: SupervisorProcess, pair: None) -> None:
    """SendStream to the echo agent, as bench_throughput.py drives it."""
    metadata = auth_metadata(supervisor)
    rounds_run = 0
    with grpc.insecure_channel(supervisor.address) as channel:
        stub = caxton_pb2_grpc.MessagingStub(channel)

        def setup() -> tuple[tuple[list[caxton_pb2.SendStreamRequest]], dict]:
            return (_frames([ECHO], STREAM_MESSAGES),), {}

        def run(frames: list[caxton_pb2.SendStreamRequest]) -> None:
            nonlocal rounds_run
            _stream_round(stub, frames, metadata)
            rounds_run += 1

        groups = {"client": [os.getpid()], "supervisor": [supervisor.pid], "worker": _pids(supervisor, ECHO)}
        with CpuMeter(groups) as meter:
            benchmark.pedantic(run, setup=setup, rounds=STREAM_ROUNDS, warmup_rounds=1)
    rate = STREAM_MESSAGES / benchmark.stats.stats.min
    benchmark.extra_info.update(frame=FRAME, window=WINDOW, messages_per_round=STREAM_MESSAGES, msg_per_s=round(rate),
                                median_msg_per_s=round(STREAM_MESSAGES / benchmark.stats.stats.median),
                                **meter.per_message_us(rounds_run * STREAM_MESSAGES))
    report.record("agents.stream_1.rate", rate, "msg/s", f"SendStream, 1 agent ({FRAME}/frame, {WINDOW} in flight)")
