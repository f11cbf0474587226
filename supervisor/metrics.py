"""Prometheus metrics: what operators alert and draw dashboards on.

Names and labels are a contract (docs/operations.md lists them). Counting a
message stays off the hot path's budget: each worker instance holds its
agent-and-version `Series` and adds to plain integers under one uncontended
lock (a fraction of a microsecond, measured in bench/bench_metrics.py);
nothing is formatted or registered per message. Everything else (agent
states, breakers, restarts, worker memory, mailbox depths) is read from the
runtime when Prometheus scrapes, never per message. Message and error counts
survive a supervisor restart: the runtime saves `MessageTally.snapshot()`
periodically and at shutdown and hands it back to `MessageTally` at start.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

# From 100 µs (an idle round trip) to 10 s (the longest sensible timeout).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_OK = grpc.StatusCode.OK
_OUTCOMES = {code: code.name.lower() for code in grpc.StatusCode}


class Series:
    """One agent version's messages: outcome counts and a latency histogram."""

    __slots__ = ("agent", "version", "outcomes", "buckets", "sum", "_lock")

    def __init__(self, agent: str, version: int) -> None:
        self.agent = agent
        self.version = version
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.sum = 0.0
        # Replicas' dispatchers record into one series concurrently.
        self._lock = threading.Lock()

    def record(self, code: grpc.StatusCode, replied: bool, seconds: float) -> None:
        """A message's result, as its outcome callback gets it (mailbox.Pending
        calls this just before the callback), `seconds` after it was accepted."""
        outcome = ("ok" if replied else "no_reply") if code is _OK else _OUTCOMES[code]
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.sum += seconds

    def record_replies(self, replied: int, no_reply: int, seconds: float) -> None:
        """Many messages' OK results at once, all `seconds` after they were
        accepted (a batch's run of messages accepted together: one lock and
        one bucket search for the run)."""
        count = replied + no_reply
        bucket = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            if replied:
                self.outcomes["ok"] = self.outcomes.get("ok", 0) + replied
            if no_reply:
                self.outcomes["no_reply"] = self.outcomes.get("no_reply", 0) + no_reply
            self.buckets[bucket] += count
            self.sum += seconds * count

    def counts(self) -> tuple[dict[str, int], list[int], float]:
        with self._lock:
            return dict(self.outcomes), list(self.buckets), self.sum


class MessageTally:
    """Every series, by agent and version."""

    def __init__(self, saved: Iterable[tuple[str, int, str, int]] = ()) -> None:
        self._series: dict[tuple[str, int], Series] = {}
        self._lock = threading.Lock()
        for agent, version, outcome, count in saved:
            self.series(agent, version).outcomes[outcome] = count

    def series(self, agent: str, version: int) -> Series:
        key = (agent, version)
        with self._lock:
            found = self._series.get(key)
            if found is None:
                found = self._series[key] = Series(agent, version)
            return found

    def forget(self, agent: str) -> None:
        """The agent was removed: its series go with it."""
        with self._lock:
            for key in [key for key in self._series if key[0] == agent]:
                del self._series[key]

    def all(self) -> list[Series]:
        with self._lock:
            return list(self._series.values())

    def snapshot(self) -> list[tuple[str, int, str, int]]:
        """(agent, version, outcome, count) rows, for saving."""
        return [(s.agent, s.version, outcome, count) for s in self.all() for outcome, count in s.counts()[0].items()]


@dataclass(frozen=True)
class AgentFigures:
    """What the collector needs of one agent at scrape time."""

    name: str
    state: str  # lifecycle state value
    breaker: str  # closed, open, half-open
    restarts: int
    resets: int
    memory_bytes: int  # linear memory, summed over instances
    mailbox_depth: int
    worker_rss: tuple[tuple[int, int], ...]  # (pid, rss bytes)


DEPLOY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Deployments:
    """Deployments and rollbacks, counted as they finish (never per message)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], int] = {}
        self._durations: dict[str, tuple[list[int], float]] = {}  # bucket counts (+Inf last), sum
        self._rollbacks: dict[tuple[str, str], int] = {}

    def finished(self, strategy: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self._totals[(strategy, outcome)] = self._totals.get((strategy, outcome), 0) + 1
            buckets, total = self._durations.get(strategy, ([0] * (len(DEPLOY_BUCKETS) + 1), 0.0))
            buckets[bisect.bisect_left(DEPLOY_BUCKETS, seconds)] += 1
            self._durations[strategy] = (buckets, total + seconds)

    def rolled_back(self, agent: str, reason: str) -> None:
        with self._lock:
            self._rollbacks[(agent, reason)] = self._rollbacks.get((agent, reason), 0) + 1

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, tuple[list[int], float]],
                                dict[tuple[str, str], int]]:
        with self._lock:
            durations = {k: (list(b), t) for k, (b, t) in self._durations.items()}
            return dict(self._totals), durations, dict(self._rollbacks)


class AgentTraffic:
    """Messages between agents, per agent (never per sender-receiver pair,
    which would multiply the series): sent by outcome, and received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], int] = {}
        self._received: dict[str, int] = {}

    def count_sent(self, agent: str, outcome: str, count: int = 1) -> None:
        with self._lock:
            self._sent[(agent, outcome)] = self._sent.get((agent, outcome), 0) + count

    def count_received(self, agent: str) -> None:
        with self._lock:
            self._received[agent] = self._received.get(agent, 0) + 1

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        with self._lock:
            return dict(self._sent), dict(self._received)


STATES = ("unloaded", "loaded", "running", "draining", "stopped", "failed")
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class CaxtonCollector(Collector):
    """Builds every caxton_* family at scrape time."""

    def __init__(self, tally: MessageTally, deployments: Deployments,
                 agents: Callable[[], list[AgentFigures]], traffic: AgentTraffic | None = None) -> None:
        self._tally = tally
        self._deployments = deployments
        self._agents = agents
        self._traffic = traffic or AgentTraffic()

    def collect(self) -> Iterator[Metric]:
        yield from self._messages()
        yield from self._traffic_families()
        yield from self._agent_families(self._agents())
        yield from self._deployment_families()

    def _traffic_families(self) -> Iterator[Metric]:
        sent, received = self._traffic.snapshot()
        sent_total = CounterMetricFamily(
            "caxton_agent_messages_sent", "Messages agents sent to agents, by outcome (ok, suppressed, or why "
            "not: unknown_agent, denied, inbox_full, hop_limit, receiver_failed)", labels=["agent", "outcome"])
        for (agent, outcome), count in sorted(sent.items()):
            sent_total.add_metric([agent, outcome], count)
        received_total = CounterMetricFamily("caxton_agent_messages_received", "Messages agents got from agents",
                                             labels=["agent"])
        for agent, count in sorted(received.items()):
            received_total.add_metric([agent], count)
        yield sent_total
        yield received_total

    def _messages(self) -> Iterator[Metric]:
        total = CounterMetricFamily("caxton_messages", "Messages handled, by outcome",
                                    labels=["agent", "version", "outcome"])
        duration = HistogramMetricFamily("caxton_message_duration_seconds",
                                         "From accepting a message to its result", labels=["agent", "version"])
        for series in self._tally.all():
            outcomes, buckets, total_s = series.counts()
            labels = [series.agent, str(series.version)]
            for outcome, count in sorted(outcomes.items()):
                total.add_metric([*labels, outcome], count)
            duration.add_metric(labels, _cumulative(BUCKETS, buckets), total_s)
        yield total
        yield duration

    @staticmethod
    def _agent_families(agents: list[AgentFigures]) -> Iterator[Metric]:
        state = GaugeMetricFamily("caxton_agent_state", "1 for the agent's current state", labels=["agent", "state"])
        breaker = GaugeMetricFamily("caxton_breaker_state", "0 closed, 1 half-open, 2 open", labels=["agent"])
        restarts = CounterMetricFamily("caxton_agent_restarts", "Worker restarts", labels=["agent"])
        resets = CounterMetricFamily("caxton_instance_resets", "Wasm instances replaced after a trap",
                                     labels=["agent"])
        memory = GaugeMetricFamily("caxton_agent_memory_bytes", "Linear memory, all instances", labels=["agent"])
        depth = GaugeMetricFamily("caxton_mailbox_depth", "Messages waiting for a worker", labels=["agent"])
        rss = GaugeMetricFamily("caxton_worker_rss_bytes", "Resident memory of each worker", labels=["agent", "pid"])
        workers = 0
        for agent in agents:
            for name in STATES:
                state.add_metric([agent.name, name], 1.0 if agent.state == name else 0.0)
            breaker.add_metric([agent.name], BREAKER_VALUES.get(agent.breaker, 0))
            restarts.add_metric([agent.name], agent.restarts)
            resets.add_metric([agent.name], agent.resets)
            memory.add_metric([agent.name], agent.memory_bytes)
            depth.add_metric([agent.name], agent.mailbox_depth)
            for pid, bytes_ in agent.worker_rss:
                rss.add_metric([agent.name, str(pid)], bytes_)
            workers += len(agent.worker_rss)
        yield from (state, breaker, restarts, resets, memory, depth, rss)
        yield GaugeMetricFamily("caxton_agents", "Agents known to the supervisor", value=len(agents))
        yield GaugeMetricFamily("caxton_workers", "Worker processes serving agents", value=workers)

    def _deployment_families(self) -> Iterator[Metric]:
        totals, durations, rollbacks = self._deployments.snapshot()
        total = CounterMetricFamily("caxton_deployments", "Deployments, by strategy and outcome",
                                    labels=["strategy", "outcome"])
        for (strategy, outcome), count in sorted(totals.items()):
            total.add_metric([strategy, outcome], count)
        duration = HistogramMetricFamily("caxton_deployment_duration_seconds", "How long deployments took",
                                         labels=["strategy"])
        for strategy, (buckets, seconds) in sorted(durations.items()):
            duration.add_metric([strategy], _cumulative(DEPLOY_BUCKETS, buckets), seconds)
        rolled = CounterMetricFamily("caxton_rollbacks", "Rollbacks, by reason", labels=["agent", "reason"])
        for (agent, reason), count in sorted(rollbacks.items()):
            rolled.add_metric([agent, reason], count)
        yield from (total, duration, rolled)


class MetricsEndpoint:
    """Prometheus' text exposition over HTTP at HOST:PORT, from a registry
    of its own: the caxton_* families and the process collector."""

    def __init__(self, address: str, collector: CaxtonCollector) -> None:
        host, _, port = address.rpartition(":")
        registry = CollectorRegistry()
        registry.register(collector)
        ProcessCollector(registry=registry)
        self._server, self._thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                       registry=registry)
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last for +Inf) as Prometheus' cumulative buckets."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out
