"""The CLI's rollout part: the `--strategy` options, following a rollout to
its end, and `caxton rollout`.

The options are parsed as `caxton` parses them. Following and steering run
the real CLI against a real gRPC server in this process whose AgentLifecycle
is a fake serving canned answers and the events each test publishes: the
CLI's own logic is under test here; rollouts with a real supervisor are
tested end to end elsewhere.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from caxton.client import cli, rollout
from caxton.client.completion import script
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .fake_lifecycle import serving
from .harness import ROOT, wait_until

AGENT = "shop"
FINISH_S = 20.0  # for any one in-process CLI run

OPTIONAL_FIELDS = ("keep_old_s", "step_s", "min_messages", "max_error_rate", "max_latency_ratio", "bake_s",
                   "max_mismatch_rate")


def parse(*argv: str):
    """`caxton ARGV...` parsed as main() parses it."""
    args = cli._parser().parse_args(list(argv))
    args.rollout = rollout.rollout_options(args)
    return args


def options(*extra: str, command: str = "reload") -> caxton_pb2.RolloutOptions:
    found = parse(command, AGENT, "v2.wat", *extra).rollout
    assert found is not None
    return found


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("extra", "field", "value"), [
    (["--strategy", "rolling", "--batch", "2"], "batch", 2),
    (["--strategy", "blue-green", "--keep-old-s", "90"], "keep_old_s", 90.0),
    (["--strategy", "blue-green", "--keep-old-s", "2m"], "keep_old_s", 120.0),
    (["--strategy", "canary", "--canary-replicas", "3"], "canary_replicas", 3),
    (["--strategy", "canary", "--steps", "10,50,100"], "steps", [10.0, 50.0, 100.0]),
    (["--strategy", "traffic-split", "--steps", "5%,25%,100%"], "steps", [5.0, 25.0, 100.0]),
    (["--strategy", "traffic-split", "--step-s", "2.5"], "step_s", 2.5),
    (["--strategy", "canary", "--min-messages", "40"], "min_messages", 40),
    (["--strategy", "canary", "--max-error-rate", "0.05"], "max_error_rate", 0.05),
    (["--strategy", "traffic-split", "--max-error-rate", "5%"], "max_error_rate", 0.05),
    (["--strategy", "canary", "--max-latency-ratio", "3"], "max_latency_ratio", 3.0),
    (["--strategy", "graceful", "--bake-s", "30s"], "bake_s", 30.0),
    (["--strategy", "parallel", "--compare", "outcome"], "compare", "outcome"),
    (["--strategy", "parallel", "--max-mismatch-rate", "1%"], "max_mismatch_rate", 0.01),
    # Zero is a value, not "unset": it must reach the supervisor.
    (["--strategy", "canary", "--max-error-rate", "0"], "max_error_rate", 0.0),
    (["--strategy", "graceful", "--bake-s", "0"], "bake_s", 0.0),
])
@pytest.mark.parametrize("command", ["deploy", "reload"])
def test_each_option_sets_its_own_field_only(command, extra, field, value):
    found = options(*extra, command=command)
    assert found.strategy == extra[1]
    assert getattr(found, field) == value
    assert {f.name for f, _ in found.ListFields()} == {"strategy", field}
    for optional in OPTIONAL_FIELDS:
        assert found.HasField(optional) == (optional == field), optional


def test_every_option_at_once():
    found = options("--strategy", "canary", "--canary-replicas", "2", "--steps", "10,50,100", "--step-s", "5",
                    "--min-messages", "20", "--max-error-rate", "2%", "--max-latency-ratio", "1.5", "--bake-s", "1m")
    assert (found.canary_replicas, list(found.steps), found.step_s) == (2, [10.0, 50.0, 100.0], 5.0)
    assert (found.min_messages, found.max_error_rate, found.max_latency_ratio) == (20, 0.02, 1.5)
    assert found.bake_s == 60.0
    assert not found.HasField("keep_old_s") and not found.HasField("max_mismatch_rate")


@pytest.mark.parametrize("command", ["deploy", "reload"])
def test_without_a_strategy_no_rollout_is_asked_for(command):
    assert parse(command, AGENT, "v2.wat").rollout is None
    assert {f.name for f, _ in options("--strategy", "immediate", command=command).ListFields()} == {"strategy"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--strategy", "sideways"], "invalid choice: 'sideways'"),
    (["--strategy", "canary", "--steps", "10,abc,100"], "not comma-separated percentages"),
    (["--strategy", "canary", "--steps", "50,10,100"], "steps must ascend"),
    (["--strategy", "canary", "--steps", "10,50,50,100"], "steps must ascend"),
    (["--strategy", "canary", "--steps", "10,50"], "the last step must be 100"),
    (["--strategy", "canary", "--steps", "0,100"], "above 0 and at most 100"),
    (["--strategy", "canary", "--steps", "10,150"], "above 0 and at most 100"),
    (["--strategy", "canary", "--steps", "nan,100"], "above 0 and at most 100"),
    (["--strategy", "canary", "--max-error-rate", "1.5"], "not between 0 and 1"),
    (["--strategy", "canary", "--max-error-rate", "120%"], "not between 0 and 1"),
    (["--strategy", "canary", "--max-error-rate", "-0.1"], "not between 0 and 1"),
    (["--strategy", "canary", "--max-error-rate", "inf"], "not between 0 and 1"),
    (["--strategy", "canary", "--max-error-rate", "lots"], "not a fraction or a percentage"),
    (["--strategy", "canary", "--max-latency-ratio", "0.5"], "not a ratio of at least 1"),
    (["--strategy", "canary", "--max-latency-ratio", "nan"], "not a ratio of at least 1"),
    (["--strategy", "canary", "--min-messages", "0"], "not a whole number of at least 1"),
    (["--strategy", "canary", "--canary-replicas", "1.5"], "not a whole number of at least 1"),
    (["--strategy", "rolling", "--batch", "-1"], "not a whole number of at least 1"),
    (["--strategy", "canary", "--step-s", "-3"], "not a duration"),
    (["--strategy", "canary", "--bake-s", "soon"], "not a duration"),
    (["--strategy", "parallel", "--compare", "fuzzy"], "invalid choice: 'fuzzy'"),
    (["--strategy", "parallel", "--max-mismatch-rate", "2"], "not between 0 and 1"),
    (["--steps", "10,100"], "--steps needs --strategy"),
    (["--bake-s", "10"], "--bake-s needs --strategy"),
    (["--strategy", "canary", "--batch", "2"], "--batch applies to --strategy rolling only"),
    (["--strategy", "rolling", "--steps", "10,100"], "--steps applies to --strategy canary or traffic-split"),
    (["--strategy", "canary", "--compare", "exact"], "--compare applies to --strategy parallel only"),
    (["--strategy", "graceful", "--keep-old-s", "5"], "--keep-old-s applies to --strategy blue-green only"),
])
def test_bad_values_are_usage_errors(capsys, extra, message):
    """Refused by the parser (exit 2) before anything is sent: the address
    here has nothing listening."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--address", "127.0.0.1:9", "reload", AGENT, "v2.wat", *extra])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


# ---------------------------------------------------------------- the fake supervisor


def rollout_status(state: str, reason: str = "", **fields) -> caxton_pb2.RolloutStatus:
    base = {"strategy": "canary", "steps": [10.0, 50.0, 100.0], "stable_version": 1, "candidate_version": 2}
    return caxton_pb2.RolloutStatus(state=state, reason=reason, **(base | fields))


class FakeLifecycle(caxton_pb2_grpc.AgentLifecycleServicer):
    """Canned answers, the events a test publishes, and a record of requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: list[queue.SimpleQueue] = []
        self.requests: list = []
        self.during: list[tuple[str, str]] = []  # (kind, message) published inside the rollout call
        self.answer: caxton_pb2.RolloutStatus | None = rollout_status("progressing", step=1, share=0.1)
        self.status = caxton_pb2.AgentStatus(name=AGENT, state=caxton_pb2.AGENT_STATE_RUNNING, version=1)
        self.watchers_at_call: int | None = None
        self.status_calls = 0
        self.answered = threading.Event()
        self.address = ""

    def publish(self, kind: str, message: str = "", agent: str = AGENT) -> None:
        event = caxton_pb2.Event(at=time.time(), agent=agent, kind=kind, version=2, message=message)
        with self.lock:
            for stream in self.streams:
                stream.put(event)

    def WatchEvents(self, request, context):
        stream: queue.SimpleQueue = queue.SimpleQueue()
        context.add_callback(lambda: stream.put(None))  # the call ended: stop the generator
        with self.lock:
            self.streams.append(stream)
        try:
            yield caxton_pb2.Event(at=time.time(), kind="watching")
            while (event := stream.get()) is not None:
                if request.agent in ("", event.agent):
                    yield event
        finally:
            with self.lock:
                self.streams.remove(stream)

    def _rollout_call(self, request) -> None:
        with self.lock:
            self.requests.append(request)
            self.watchers_at_call = len(self.streams)
        for kind, message in self.during:
            self.publish(kind, message)
        self.answered.set()

    def HotReloadAgent(self, request, context):
        self._rollout_call(request)
        response = caxton_pb2.HotReloadAgentResponse(status=self.status, from_version=1, to_version=2)
        if self.answer is not None:
            response.rollout.CopyFrom(self.answer)
        return response

    def DeployAgent(self, request, context):
        self._rollout_call(request)
        status = caxton_pb2.AgentStatus()
        status.CopyFrom(self.status)
        if self.answer is not None:
            status.rollout.CopyFrom(self.answer)
        finding = caxton_pb2.Finding(rule="abi.old-export", severity=caxton_pb2.SEVERITY_WARNING,
                                     message="caxton_alloc is deprecated")
        return caxton_pb2.DeployAgentResponse(status=status, report=caxton_pb2.ValidationReport(
            valid=True, findings=[finding]))

    def GetAgentStatus(self, request, context):
        with self.lock:
            self.status_calls += 1
        if request.name != AGENT:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no agent named {request.name!r}")
        return self.status

    def ControlRollout(self, request, context):
        with self.lock:
            self.requests.append(request)
        if not self.status.HasField("rollout"):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name!r} has no rollout in progress")
        state = {"promote": "baking", "abort": "aborted", "pause": "paused", "resume": "progressing"}[request.action]
        return rollout_status(state, reason=f"{request.action} by request", step=2, share=0.5)


@pytest.fixture
def fake():
    servicer = FakeLifecycle()
    with serving(servicer, threads=16) as address:
        servicer.address = address
        yield servicer


class CliRun:
    """`caxton ARGV...` on a thread of this process, so that the test can
    publish events while it runs."""

    def __init__(self, fake: FakeLifecycle, *argv: str) -> None:
        self.code: int | str | None = None
        self._argv = ["--address", fake.address, "--token", "t", *argv]
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            cli.main(self._argv)
        except SystemExit as exc:
            self.code = exc.code

    def finish(self) -> int | str | None:
        self._thread.join(FINISH_S)
        assert not self._thread.is_alive(), "the CLI did not end"
        return self.code


def run(fake: FakeLifecycle, *argv: str) -> int | str | None:
    return CliRun(fake, *argv).finish()


EVENT_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \S+ v\d+ ([a-z-]+)")


def kinds(err: str) -> list[str]:
    """The kinds of the event lines in `err`, in order."""
    found = [EVENT_LINE.match(line) for line in err.splitlines()]
    return [match.group(1) for match in found if match]


@pytest.fixture
def module(tmp_path) -> str:
    path = tmp_path / "v2.wat"
    path.write_text("(module)")
    return str(path)


# ---------------------------------------------------------------- following a rollout


def test_reload_shows_the_steps_and_waits_for_promotion(fake, capsys, module):
    fake.during = [("rollout-started", "canary v1 -> v2"), ("rollout-step", "step 1/3: 10% to v2")]
    running = CliRun(fake, "reload", AGENT, module, "--strategy", "canary", "--steps", "10,50,100",
                     "--max-error-rate", "5%")
    fake.answered.wait(FINISH_S)
    fake.publish("rollout-step", "step 2/3: 50% to v2")
    fake.publish("audit", "not progress")
    fake.publish("rollout-promoted", "v2 takes all traffic")
    assert running.finish() == 0
    out, err = capsys.readouterr()
    assert out == "promoted shop v1 -> v2 (canary): v2 takes all traffic\n"
    assert kinds(err) == ["rollout-started", "rollout-step", "rollout-step", "rollout-promoted"]
    assert "step 2/3: 50% to v2" in err
    # Subscribed before the call, so nothing the call set off was missed.
    assert fake.watchers_at_call == 1
    [request] = fake.requests
    assert isinstance(request, caxton_pb2.HotReloadAgentRequest)
    assert (request.rollout.strategy, list(request.rollout.steps)) == ("canary", [10.0, 50.0, 100.0])
    assert request.rollout.max_error_rate == 0.05
    assert not request.rollout.HasField("bake_s")


@pytest.mark.parametrize(("kind", "words"), [("rollout-rolled-back", "rolled back"), ("rollout-aborted", "aborted")])
def test_a_rollout_that_does_not_promote_exits_1_with_the_reason(fake, capsys, module, kind, words):
    running = CliRun(fake, "reload", AGENT, module, "--strategy", "traffic-split")
    fake.answered.wait(FINISH_S)
    fake.publish("rollout-step", "step 2/4: 25% to v2")
    fake.publish(kind, "error rate 20.0% (4 of 20) over the 5.0% limit")
    assert running.finish() == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        f"caxton: rollout of shop v1 -> v2 (canary) {words}: error rate 20.0% (4 of 20) over the 5.0% limit")


def test_the_end_announced_during_the_call_is_not_missed(fake, capsys, module):
    """The answer still says progressing, but the rollout ended before the
    answer arrived: the event says so, and nothing more is waited for."""
    fake.during = [("rollout-started", ""), ("rollout-rolled-back", "v2 crash-looped")]
    assert run(fake, "reload", AGENT, module, "--strategy", "canary") == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith("rolled back: v2 crash-looped")


@pytest.mark.parametrize(("state", "code"), [("promoted", 0), ("rolled-back", 1), ("aborted", 1)])
def test_an_answer_that_says_it_is_over_ends_the_wait(fake, capsys, module, state, code):
    fake.answer = rollout_status(state, reason="decided at once", strategy="blue-green", steps=[])
    fake.during = [("rollout-started", ""), (f"rollout-{state}", "decided at once")]
    assert run(fake, "deploy", AGENT, module, "--strategy", "blue-green") == code
    out, err = capsys.readouterr()
    assert kinds(err)[-1] == f"rollout-{state}"
    if code == 0:
        assert out == "promoted shop v1 -> v2 (blue-green): decided at once\n"
    else:
        assert err.splitlines()[-1].endswith(f"{state.replace('-', ' ')}: decided at once")
    assert fake.status_calls == 0  # the answer was enough


def test_dropped_events_make_it_ask_the_supervisor(fake, capsys, module, monkeypatch):
    monkeypatch.setattr(rollout, "POLL_S", 3600.0)  # so only the dropped events can make it ask
    running = CliRun(fake, "reload", AGENT, module, "--strategy", "parallel")
    fake.answered.wait(FINISH_S)
    fake.status.rollout.CopyFrom(rollout_status("rolled-back", reason="shadow mismatch 30% over 1%",
                                                strategy="parallel", steps=[]))
    fake.publish("events-dropped", "100 events dropped")
    assert running.finish() == 1
    assert fake.status_calls >= 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "caxton: rollout of shop v1 -> v2 (parallel) rolled back: shadow mismatch 30% over 1%")


def test_a_silent_stream_is_cross_checked(fake, capsys, module, monkeypatch):
    """No event ever says it ended; asking GetAgentStatus finds out."""
    monkeypatch.setattr(rollout, "POLL_S", 0.05)
    fake.status.rollout.CopyFrom(rollout_status("progressing", step=1, share=0.1))
    running = CliRun(fake, "reload", AGENT, module, "--strategy", "canary")
    fake.answered.wait(FINISH_S)
    wait_until(lambda: fake.status_calls >= 2, FINISH_S, "the CLI to ask for the status while waiting")
    fake.status.rollout.CopyFrom(rollout_status("promoted", reason="all steps passed", step=3, share=1.0))
    assert running.finish() == 0
    assert capsys.readouterr().out == "promoted shop v1 -> v2 (canary): all steps passed\n"


def test_an_answer_without_a_rollout_is_not_a_promotion(fake, capsys, module):
    fake.answer = None
    assert run(fake, "reload", AGENT, module, "--strategy", "canary") == 1
    assert capsys.readouterr().err.splitlines()[-1] == "caxton: shop: the supervisor reported no rollout"


def test_deploy_with_a_strategy_sends_the_rollout(fake, capsys, module):
    fake.answer = rollout_status("progressing", strategy="rolling", steps=[])
    running = CliRun(fake, "deploy", AGENT, module, "--strategy", "rolling", "--batch", "2", "--bake-s", "0")
    fake.answered.wait(FINISH_S)
    fake.publish("rollout-promoted", "4 of 4 replicas on v2")
    assert running.finish() == 0
    out, err = capsys.readouterr()
    assert out == "promoted shop v1 -> v2 (rolling): 4 of 4 replicas on v2\n"
    assert "warning: abi.old-export: caxton_alloc is deprecated" in err.splitlines()
    [request] = fake.requests
    assert isinstance(request, caxton_pb2.DeployAgentRequest)
    assert (request.rollout.strategy, request.rollout.batch, request.rollout.bake_s) == ("rolling", 2, 0.0)
    assert request.rollout.HasField("bake_s") and not request.rollout.HasField("step_s")


def test_json_prints_each_event_and_the_final_status(fake, capsys, module):
    fake.during = [("rollout-started", "")]
    running = CliRun(fake, "reload", AGENT, module, "--strategy", "canary", "--json")
    fake.answered.wait(FINISH_S)
    fake.status.rollout.CopyFrom(rollout_status("baking", reason="baking 60 s", step=3, share=1.0))
    fake.publish("rollout-promoted", "v2 takes all traffic")
    assert running.finish() == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["kind"] for e in events] == ["rollout-started", "rollout-promoted"]
    assert all(e["agent"] == AGENT for e in events)
    [final] = [json.loads(line) for line in out.splitlines()]
    assert (final["name"], final["outcome"], final["reason"]) == (AGENT, "promoted", "v2 takes all traffic")
    assert final["rollout"]["state"] == "baking"
    assert (final["rollout"]["stable_version"], final["rollout"]["candidate_version"]) == (1, 2)
    assert final["rollout"]["steps"] == [10.0, 50.0, 100.0]


def test_json_failure_still_prints_the_final_status(fake, capsys, module):
    fake.answer = rollout_status("rolled-back", reason="latency p99 5.1x stable")
    assert run(fake, "reload", AGENT, module, "--strategy", "canary", "--json") == 1
    out, err = capsys.readouterr()
    [final] = [json.loads(line) for line in out.splitlines()]
    assert (final["outcome"], final["rollout"]["reason"]) == ("rolled-back", "latency p99 5.1x stable")
    assert err.splitlines()[-1].startswith("caxton: rollout of shop")


def test_ctrl_c_stops_waiting_and_leaves_the_rollout_running(fake, module):
    fake.during = [("rollout-started", "canary v1 -> v2")]
    argv = [sys.executable, "-m", "caxton", "--address", fake.address, "--token", "t",
            "reload", AGENT, module, "--strategy", "canary"]
    # A process started with SIGINT ignored, as a shell starts its background
    # jobs, passes that on to its children, and Python then raises no
    # KeyboardInterrupt: a CLI run in the background must not be stopped by
    # the terminal's Ctrl-C. The CLI here must start as from a terminal,
    # however the tests were started: a signal with a handler is reset to
    # its default in the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   cwd=ROOT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
        reader.start()
        wait_until(lambda: any("rollout-started" in line for line in lines), 30, "the first step to show")
        # Dropped events make the CLI ask for the status, which it only does
        # once it has the answer: then it is surely waiting for the end.
        fake.status.rollout.CopyFrom(rollout_status("progressing", step=1, share=0.1))
        fake.publish("events-dropped", "1 event dropped")
        wait_until(lambda: fake.status_calls >= 1, 30, "the CLI to wait for the end")
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 1
        reader.join(5)
        err = "".join(lines)
        assert "Traceback" not in err
        assert lines[-1].startswith("caxton: stopped waiting; the rollout of shop goes on")
        assert "caxton rollout abort shop" in lines[-1]
        assert process.stdout.read() == ""
        assert not [r for r in fake.requests if isinstance(r, caxton_pb2.ControlRolloutRequest)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()
        process.stderr.close()


# ---------------------------------------------------------------- caxton rollout, caxton status


def test_rollout_status(fake, capsys):
    assert run(fake, "rollout", "status", AGENT) == 0
    assert capsys.readouterr().out == "shop: no rollout\n"
    assert run(fake, "rollout", "status", AGENT, "--json") == 0
    assert capsys.readouterr().out == "null\n"

    fake.status.rollout.CopyFrom(rollout_status("progressing", reason="holding step 2 for 10 s", step=2,
                                                share=0.5, verdict="inconclusive: waiting for 12 of 50 messages"))
    assert run(fake, "rollout", "status", AGENT) == 0
    assert capsys.readouterr().out.splitlines() == [
        "shop: canary progressing step 2/3 (10,50,100%) share 50% v1 -> v2",
        "reason: holding step 2 for 10 s",
        "verdict: inconclusive: waiting for 12 of 50 messages",
    ]
    assert run(fake, "rollout", "status", AGENT, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: shown[k] for k in ("strategy", "state", "step", "steps", "share", "stable_version",
                                  "candidate_version", "reason")} == {
        "strategy": "canary", "state": "progressing", "step": 2, "steps": [10.0, 50.0, 100.0], "share": 0.5,
        "stable_version": 1, "candidate_version": 2, "reason": "holding step 2 for 10 s"}


@pytest.mark.parametrize(("action", "state"), [("promote", "baking"), ("abort", "aborted"), ("pause", "paused"),
                                               ("resume", "progressing")])
def test_rollout_actions_send_control_rollout(fake, capsys, action, state):
    fake.status.rollout.CopyFrom(rollout_status("progressing"))
    assert run(fake, "rollout", action, AGENT) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"shop: canary {state} step 2/3 (10,50,100%) share 50% v1 -> v2"
    assert run(fake, "rollout", action, AGENT, "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == state
    assert [(r.name, r.action) for r in fake.requests] == [(AGENT, action)] * 2


def test_rollout_action_without_a_rollout_is_a_one_line_error(fake, capsys):
    assert run(fake, "rollout", "abort", AGENT) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "caxton: FAILED_PRECONDITION: 'shop' has no rollout in progress\n"


def test_status_shows_health_and_the_rollout_in_progress(fake, capsys):
    fake.status.health_status = "degraded"
    fake.status.health_reason = "error rate 3% on v2"
    fake.status.rollout.CopyFrom(rollout_status("paused", reason="paused by request", step=1, share=0.1))
    assert run(fake, "status", AGENT) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["shop", "running", "v1"]
    assert lines[1:] == ["health: degraded (error rate 3% on v2)",
                         "rollout: canary paused step 1/3 (10,50,100%) share 10% v1 -> v2: paused by request"]

    fake.status.health_status, fake.status.health_reason = "healthy", ""
    fake.status.rollout.CopyFrom(rollout_status("promoted", reason="all steps passed"))
    assert run(fake, "status", AGENT) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []  # healthy, and a rollout that ended, go unsaid


def test_status_json_has_rollout_and_health(fake, capsys):
    fake.status.health_status = "healthy"
    fake.status.rollout.CopyFrom(rollout_status("baking"))
    assert run(fake, "status", AGENT, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["health_status"] == "healthy"
    assert shown["rollout"]["state"] == "baking"


def test_completion_offers_the_rollout_command_and_options():
    text = script(cli._parser(), "bash")
    assert "rollout)" in text
    for option in ("--strategy", "--batch", "--keep-old-s", "--canary-replicas", "--steps", "--step-s",
                   "--min-messages", "--max-error-rate", "--max-latency-ratio", "--bake-s", "--compare",
                   "--max-mismatch-rate"):
        assert option in text, option
