"""Automatic rollback: how soon a bad version leaves traffic, and what callers saw meanwhile.

For each judged strategy, an agent running tests/agents/version1.wat (echo
with a "v1:" prefix, 2 replicas) is rolled to tests/agents/picky.wat (a bad
v2: "v2:" echo that traps on content starting with '!') while 3 client
threads (`tests.harness.LoadGenerator`) send continuously, every other
message of each caller starting with '!'. Strategies and options (the ones
tests/test_rollout_strategies.py rolls back):
- `canary`, `canary_replicas` 1, steps 10, 50, 100;
- `traffic-split`, steps 10, 50, 100;
- `parallel`, `compare = "outcome"` (v1 and v2 reply with different
  prefixes, so only a different outcome, picky's trap, is a mismatch);
each with `min_messages` 20, `max_error_rate` 0.05, `max_latency_ratio` 20
(a busy two-core machine must not roll back on latency) and `step_s` 5 (a
step cannot pass before the bad version is caught). Every rollout must end
`rolled-back` (cause `error-rate`, or for parallel also `shadow-mismatch`),
with v1 serving. A fresh agent per round; 10 rounds a strategy
(`CAXTON_BENCH_QUICK=1`: 3).

Per round, all on the client's `time.monotonic()` clock, measured in this
process (no clock of the supervisor's is compared with the client's):
- **detection** (the headline): from the moment the first caller got an
  error back from v2 (its `Send` returned) to the moment a `WatchEvents`
  stream on the agent delivered `rollout-rolled-back` to this process.
  Under `parallel` the callers see no error at all, so the start is the
  arrival of the first `rollout-step` event, the one that gave v2 its copy
  of every message. (The shadow copies actually begin a little earlier:
  the candidate's lane is admitted while the `HotReloadAgent` call is still
  running, before the rollout's thread publishes that event; the gap is
  the thread's start, milliseconds.) Both ends carry a client-side delivery
  delay (a `Send`'s reply, an event on the stream), of the same order.
  For comparison, `extra_info` also has the supervisor's own view: the
  `at` of the rolled-back event minus the `at` of the first rollout-step
  event (both the supervisor's wall clock).
- **error share**: the errors callers saw, over the messages sent during
  the rollout (a `Send` that began between the `HotReloadAgent` request
  and the arrival of the rolled-back event). `extra_info` adds the share
  over the messages sent while v2 was exposed (from the first rollout-step
  event), which leaves out the candidate's start-up.
- **errors**: how many messages failed (all must be INTERNAL: the trap).

pytest-benchmark's own time per round is the `HotReloadAgent` request to
the rolled-back event's arrival (the baseline's: the abort request to the
aborted event's); the figures above are in `extra_info` and the table. The
callers are the test harness's, which authenticate through
`caxton.client.connection.connect()` (call credentials: more client CPU per
call than bench.support.auth_metadata, see README): that shifts when a
caller sees its error by well under a millisecond, and it is the same load
for the baseline.

Asserted, so that a broken path cannot make a nice number: the rollout was
rolled back for the right cause, v1 serves afterwards, no message was lost
(sent = outcomes), every reply is an echo of its own message by v1 or v2,
every error is INTERNAL, and under parallel no caller saw an error or a v2
reply.

Baseline, same supervisor, same run: a **manual rollback of the same kind
of rollout**, `ControlRollout(abort)`, timed from the request to the
arrival of the `rollout-aborted` event, on the same clock. Same agent
shape, same strategy and steps, same load; v2 is version2.wat (the good
echo), and the step can neither pass nor fail (`step_s` 600,
`min_messages` 1,000,000), so the abort meets a rollout that has had v2
answering its share (under parallel: its copies) for a moment. An abort
and an automatic rollback take the same way back (the candidate's lane
withdrawn, traffic to the stable workers that never stopped, the ending
recorded and published), so the ratio detection / abort is what deciding
by itself costs over an operator's instant decision: the analysis (judged
every 0.1 s) waiting for enough errors to be certain. A graceful reload's
switch time would be the wrong yardstick: it starts new workers, which a
rollback never does.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2
from tests.harness import LoadGenerator, SupervisorProcess, Trip, module, wait_until

from . import report
from .support import running_supervisor

QUICK = os.environ.get("CAXTON_BENCH_QUICK") == "1"
ROUNDS = 3 if QUICK else 10
CALLERS = 3
REPLICAS = 2
WARMUP = 5  # outcomes per caller before a rollout starts
SETTLE = 10  # more outcomes per caller after it ended, before counting
WATCH_DEADLINE_S = 600.0  # of one round's event stream
ENDING_WITHIN_S = 60.0

STRATEGIES: dict[str, dict] = {
    "canary": {"steps": [10, 50, 100], "canary_replicas": 1},
    "traffic-split": {"steps": [10, 50, 100]},
    "parallel": {"compare": "outcome"},
}
JUDGED = {"step_s": 5.0, "min_messages": 20, "max_error_rate": 0.05, "max_latency_ratio": 20.0, "bake_s": 0.0}
# The abort baseline's rollout: a step that neither passes nor fails.
HELD = {**JUDGED, "step_s": 600.0, "min_messages": 1_000_000}
CAUSES = {"canary": ("error-rate",), "traffic-split": ("error-rate",), "parallel": ("error-rate", "shadow-mismatch")}
ENDINGS = ("rollout-promoted", "rollout-rolled-back", "rollout-aborted")

GROUP = "rollback: a bad version under load"

_names = itertools.count()

# The rows this file adds to the summary table (bench/report.py).
report.ROWS.extend(
    row
    for strategy in STRATEGIES
    for row in (
        report.Row("rollback", f"rollback.{strategy}.detect.p50", f"rollback.{strategy}.abort.p50",
                   "seconds (Argo, Flagger: minutes)"),
        report.Row("rollback", f"rollback.{strategy}.detect.max", f"rollback.{strategy}.abort.p50"),
        report.Row("rollback", f"rollback.{strategy}.error_share",
                   target="0" if strategy == "parallel" else "≤ 10 % (the first step's share)"),
        report.Row("rollback", f"rollback.{strategy}.errors.max", target="0" if strategy == "parallel" else ""),
    )
)


def _bang_every_other(caller: int, n: int) -> bytes:
    """LoadGenerator content: every other message of a caller starts with '!' (picky traps on it)."""
    return (b"!" if n % 2 else b"") + f"c{caller}-{n}".encode()


@pytest.fixture(scope="module")
def rollback_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorProcess]:
    with running_supervisor(tmp_path_factory.mktemp("rollback") / "state") as sup:
        yield sup


@pytest.fixture(scope="session")
def wasm() -> dict[str, bytes]:
    return {name: bytes(wasmtime.wat2wasm(module(name).decode())) for name in ("version1", "version2", "picky")}


# ------------------------------------------------------------ one round


class Watcher:
    """An agent's events as they arrive, each stamped with this process's
    `time.monotonic()` on arrival (a thread reading `WatchEvents`)."""

    def __init__(self, sup: SupervisorProcess, name: str) -> None:
        self._call = sup.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent=name), timeout=WATCH_DEADLINE_S)
        self.events: list[tuple[float, caxton_pb2.Event]] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, name=f"watch-{name}", daemon=True)
        self._thread.start()
        try:
            wait_until(lambda: self.first("watching") or self.error, 10, f"{name}'s event stream to subscribe")
            assert self.error is None, f"WatchEvents failed: {self.error}"
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        try:
            for event in self._call:
                self.events.append((time.monotonic(), event))
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = exc

    def first(self, *kinds: str) -> tuple[float, caxton_pb2.Event] | None:
        """The first event of one of `kinds` and when it arrived, if any yet."""
        return next(((t, e) for t, e in list(self.events) if e.kind in kinds), None)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)


@dataclass
class Round:
    """One agent, its event stream and its load, from deploy to remove."""

    sup: SupervisorProcess
    name: str
    load: LoadGenerator  # started by `Rounds.start`, once the event stream is on
    watcher: Watcher | None = None
    loading: bool = False
    requested: float = math.nan  # monotonic: the HotReloadAgent request sent
    step: tuple[float, caxton_pb2.Event] | None = None  # the first rollout-step event, when it arrived
    ending: tuple[float, caxton_pb2.Event] | None = None
    asked: float = math.nan  # baseline: the abort request sent
    answered: float = math.nan  # baseline: the abort call returned
    status: caxton_pb2.AgentStatus | None = None
    trips: list[Trip] = field(default_factory=list)
    sent: int = 0
    closed: bool = False

    @property
    def watching(self) -> Watcher:
        assert self.watcher is not None, f"{self.name} has no event stream"
        return self.watcher

    def wait_ending(self) -> None:
        watcher = self.watching
        self.ending = wait_until(lambda: watcher.first(*ENDINGS), ENDING_WITHIN_S, f"{self.name}'s rollout to end")
        self.step = watcher.first("rollout-step")

    def close(self, *, failed: bool) -> None:
        """Stop the load and the stream and remove the agent; counts the load
        first. Also after a failure (then never raises over it)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.loading:
                self.load.__exit__(RuntimeError if failed else None, None, None)
                self.trips, self.sent = self.load.trips(), sum(self.load.sent.values())
            if not failed:
                self.status = self.sup.status(self.name)
        finally:
            if self.watcher is not None:
                self.watcher.close()
            with contextlib.suppress(grpc.RpcError):
                self.sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=self.name), timeout=60)


class Rounds:
    """The rounds of one benchmark, as pytest-benchmark's pedantic drives
    them (setup, target, teardown); `close_all` ends any a failure left open."""

    def __init__(self, sup: SupervisorProcess, wasm: dict[str, bytes], strategy: str) -> None:
        self.sup = sup
        self.wasm = wasm
        self.strategy = strategy
        self.done: list[Round] = []
        self._open: list[Round] = []

    def start(self) -> Round:
        """Untimed: a fresh agent on v1, its event stream, the load going."""
        sup = self.sup
        name = f"rollback-{self.strategy}-{next(_names)}"
        request = caxton_pb2.DeployAgentRequest(name=name, module=self.wasm["version1"], replicas=REPLICAS)
        status = sup.lifecycle.DeployAgent(request, timeout=60).status
        round_ = Round(sup, name, LoadGenerator(sup, name, callers=CALLERS, warmup=WARMUP, content=_bang_every_other))
        self._open.append(round_)
        assert len(status.instances) == REPLICAS, f"{len(status.instances)} instances for {REPLICAS} replicas"
        round_.watcher = Watcher(sup, name)
        round_.loading = True  # __enter__ stops its callers itself if it fails
        round_.load.__enter__()
        return round_

    def reload(self, round_: Round, module_name: str, options: dict) -> None:
        rollout = caxton_pb2.RolloutOptions(strategy=self.strategy, **STRATEGIES[self.strategy], **options)
        request = caxton_pb2.HotReloadAgentRequest(name=round_.name, module=self.wasm[module_name], rollout=rollout)
        round_.requested = time.monotonic()
        response = self.sup.lifecycle.HotReloadAgent(request, timeout=60)
        assert response.rollout.state == "progressing", response.rollout

    def finish(self, round_: Round) -> None:
        """Untimed: every caller gets SETTLE more answers, then the round ends."""
        _more_answers(round_.load, "the load to go on after the rollout")
        round_.close(failed=False)
        self._open.remove(round_)
        self.done.append(round_)

    def close_all(self) -> None:
        for round_ in self._open:
            round_.close(failed=True)
        self._open.clear()


def _more_answers(load: LoadGenerator, what: str) -> None:
    """Until every caller has SETTLE more outcomes than now."""
    marks = [len(r) for r in load.results]
    wait_until(lambda: all(len(r) >= m + SETTLE for r, m in zip(load.results, marks, strict=True)), 30, what)


def _check_replies(round_: Round) -> Counter[bytes]:
    """Every message accounted for, every reply its own message's echo by
    v1 or v2; returns the replies per version."""
    trips = round_.trips
    assert round_.sent == len(trips), f"{round_.sent - len(trips)} messages lost in {round_.name}"
    versions: Counter[bytes] = Counter()
    for trip in trips:
        if trip.status != "ok":
            continue
        prefix, _, rest = trip.reply.partition(b":")
        assert prefix in (b"v1", b"v2") and rest == trip.content, f"wrong reply {trip.reply[:40]!r} to {trip.content!r}"
        versions[prefix] += 1
    status = round_.status
    assert status is not None and status.version == 1 and {i.version for i in status.instances} == {1}, status
    return versions


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def _p50_ms(samples: list[float]) -> float:
    return report.percentile(samples, 50) * 1e3


def _timed(rounds: Rounds, benchmark, setup: Callable[[], Round], target: Callable[[Round], None]) -> None:
    def pedantic_setup() -> tuple[tuple[Round], dict]:
        return (setup(),), {}

    try:
        benchmark.pedantic(target, setup=pedantic_setup, teardown=rounds.finish, rounds=ROUNDS)
    finally:
        rounds.close_all()


# ------------------------------------------------------------ baseline


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_abort(benchmark, rollback_supervisor: SupervisorProcess, wasm: dict[str, bytes], strategy: str) -> None:
    """The baseline: an operator's abort of the same kind of rollout (a good
    v2 that has served its share), request to the rollout-aborted event."""
    rounds = Rounds(rollback_supervisor, wasm, strategy)

    def exposed() -> Round:
        round_ = rounds.start()
        rounds.reload(round_, "version2", HELD)
        watcher, results = round_.watching, round_.load.results
        wait_until(lambda: watcher.first("rollout-step"), 30, "the first step")
        if strategy == "parallel":
            _more_answers(round_.load, "copies to v2")  # callers never see v2: give it a few copies' time
        else:
            wait_until(lambda: sum(t.reply.startswith(b"v2:") for r in list(results) for t in list(r)) >= 3, 30,
                       "v2 to answer its share")
        return round_

    def abort(round_: Round) -> None:
        round_.asked = time.monotonic()
        record = rollback_supervisor.lifecycle.ControlRollout(
            caxton_pb2.ControlRolloutRequest(name=round_.name, action="abort"), timeout=60)
        round_.answered = time.monotonic()
        assert record.state == "aborted", record
        round_.wait_ending()

    _timed(rounds, benchmark, exposed, abort)

    took, calls = [], []
    for round_ in rounds.done:
        assert round_.ending is not None and round_.status is not None
        arrived, event = round_.ending
        assert event.kind == "rollout-aborted", (event.kind, event.message)
        assert round_.status.rollout.state == "aborted", round_.status.rollout
        versions = _check_replies(round_)
        assert not [t for t in round_.trips if t.status != "ok"], "errors from a good v2"
        assert strategy == "parallel" or versions[b"v2"], "v2 never answered"
        took.append(arrived - round_.asked)
        calls.append(round_.answered - round_.asked)
    benchmark.extra_info.update(
        strategy=strategy, rounds=len(took), clock="client time.monotonic(): abort request to event arrival",
        abort_ms=[_ms(t) for t in took], abort_p50_ms=round(_p50_ms(took), 1),
        call_ms=[_ms(t) for t in calls], call_p50_ms=round(_p50_ms(calls), 1),
    )
    report.record(f"rollback.{strategy}.abort.p50", _p50_ms(took), "ms", f"manual abort ({strategy}) p50")


# ------------------------------------------------------------ automatic rollback


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_automatic_rollback(benchmark, rollback_supervisor: SupervisorProcess, wasm: dict[str, bytes],
                            strategy: str) -> None:
    """A bad v2 under load, rolled back by the analysis; pytest-benchmark's
    own time is the HotReloadAgent request to the rolled-back event."""
    rounds = Rounds(rollback_supervisor, wasm, strategy)

    def roll(round_: Round) -> None:
        rounds.reload(round_, "picky", JUDGED)
        round_.wait_ending()

    _timed(rounds, benchmark, rounds.start, roll)

    shadow = strategy == "parallel"
    detect, server_detect, first_error_after_step, whole = [], [], [], []
    sent_during, sent_exposed, errors, v2_replies, late_errors, reasons, steps = [], [], [], [], [], [], []
    for round_ in rounds.done:
        assert round_.ending is not None and round_.step is not None and round_.status is not None
        arrived, event = round_.ending
        record = round_.status.rollout
        assert event.kind == "rollout-rolled-back", (event.kind, event.message)
        assert record.state == "rolled-back" and record.reason.startswith(CAUSES[strategy]), record
        versions = _check_replies(round_)
        failed = [t for t in round_.trips if t.status != "ok"]
        assert all(t.status == "INTERNAL" for t in failed), Counter(t.status for t in failed)
        step_arrived, step_event = round_.step
        if shadow:
            assert not failed and not versions[b"v2"], (len(failed), versions)
            start = step_arrived
        else:
            assert failed, "the bad version never failed a message"
            start = min(t.end for t in failed)
            first_error_after_step.append(start - step_arrived)
        detect.append(arrived - start)
        server_detect.append(event.at - step_event.at)
        whole.append(arrived - round_.requested)
        sent_during.append(sum(round_.requested <= t.start <= arrived for t in round_.trips))
        sent_exposed.append(sum(step_arrived <= t.start <= arrived for t in round_.trips))
        errors.append(len(failed))
        late_errors.append(sum(t.start > arrived for t in failed))
        v2_replies.append(versions[b"v2"])
        reasons.append(record.reason.split(":", 1)[0])
        steps.append(record.step)

    share = sum(errors) / sum(sent_during) if sum(sent_during) else 0.0
    share_exposed = sum(errors) / sum(sent_exposed) if sum(sent_exposed) else 0.0
    benchmark.extra_info.update(
        strategy=strategy, rounds=len(detect), callers=CALLERS, replicas=REPLICAS,
        options={**STRATEGIES[strategy], **JUDGED},
        clock=("client time.monotonic(): " + ("first rollout-step event arrival" if shadow
                                               else "first error a caller got back")
               + " to the rollout-rolled-back event's arrival"),
        detect_ms=[_ms(t) for t in detect], detect_p50_ms=round(_p50_ms(detect), 1),
        detect_max_ms=_ms(max(detect)),
        server_step_to_rollback_ms=[_ms(t) for t in server_detect],
        first_error_after_step_ms=[_ms(t) for t in first_error_after_step],
        request_to_rollback_ms=[_ms(t) for t in whole],
        sent_during_rollout=sent_during, sent_while_exposed=sent_exposed, errors=errors,
        errors_sent_after_rollback=late_errors, v2_replies=v2_replies,
        error_share_pct=round(share * 100, 2), error_share_exposed_pct=round(share_exposed * 100, 2),
        reasons=dict(Counter(reasons)), steps_at_rollback=steps,
    )
    key, label = f"rollback.{strategy}", f"({strategy})"
    start_words = "first rollout-step" if shadow else "first error"
    report.record(f"{key}.detect.p50", _p50_ms(detect), "ms", f"{start_words} to rolled back {label} p50")
    report.record(f"{key}.detect.max", max(detect) * 1e3, "ms", f"{start_words} to rolled back {label}, "
                                                                 f"max of {len(detect)}")
    report.record(f"{key}.error_share", share * 100, "%", f"messages that saw an error {label}, "
                                                          f"of {sum(sent_during):,} sent")
    report.record(f"{key}.errors.max", max(errors), "msg", f"errors per rollback {label}, max of {len(errors)}")
