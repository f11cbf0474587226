"""Operable in production: Prometheus metrics under load, systemd's
notification protocol, and what SIGHUP reloads, from a real supervisor process."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from caxton.supervisor.config import ConfigError, config_from_table
from caxton.v1 import caxton_pb2

from .harness import LoadGenerator, SupervisorProcess, module, wait_until

EXPECTED = {
    "caxton_messages", "caxton_message_duration_seconds", "caxton_agent_state", "caxton_breaker_state",
    "caxton_agent_restarts", "caxton_instance_resets", "caxton_deployments", "caxton_deployment_duration_seconds",
    "caxton_rollbacks", "caxton_worker_rss_bytes", "caxton_agent_memory_bytes", "caxton_mailbox_depth",
    "caxton_agents", "caxton_workers", "process_resident_memory_bytes",
}


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_streams_results_are_counted_once_each_by_outcome(supervisor):
    """SendStream's OK results are delivered and counted in runs
    (supervisor/answers.py): the counts must still be one per message."""
    sup = supervisor('metrics_listen = "127.0.0.1:0"\n')
    match = wait_until(lambda: re.search(r"metrics on (http://\S+)", sup.log_text()), 10, "the metrics address")
    sup.deploy("streamed", "echo")
    sup.deploy("quiet", "noreply")
    sup.deploy("crasher", "trap")

    def receiver(k: int) -> str:
        return "crasher" if k % 10 == 0 else "streamed" if k % 2 else "quiet"

    def content(n: int) -> bytes:
        return b"unreachable" if receiver(n % 100) == "crasher" else f"m{n}".encode()

    def frames():
        for frame in range(6):
            items = [caxton_pb2.StreamItem(id=n, message=caxton_pb2.AgentMessage(
                receiver=receiver(n % 100), content=content(n), conversation_id=f"c{n % 100}"))
                for n in range(frame * 100, frame * 100 + 100)]
            yield caxton_pb2.SendStreamRequest(items=items)

    results = {r.id: r for response in sup.messaging.SendStream(frames(), timeout=60) for r in response.results}
    assert len(results) == 600
    for n, result in results.items():
        if receiver(n % 100) == "streamed":
            assert (result.code, result.has_reply, result.reply.content) == (0, True, f"m{n}".encode())
            assert (result.reply.sender, result.reply.conversation_id) == ("streamed", f"c{n % 100}")
            assert result.reply.in_reply_to  # the message id the supervisor gave it
        elif receiver(n % 100) == "quiet":
            assert (result.code, result.has_reply) == (0, False)
        else:
            assert result.code == grpc.StatusCode.INTERNAL.value[0], result
    metrics = _scrape(match.group(1))
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="streamed", outcome="ok") == 300
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="quiet", outcome="no_reply") == 240
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="crasher", outcome="internal") == 60
    for agent, count in (("streamed", 300), ("quiet", 240), ("crasher", 60)):
        assert _value(metrics["caxton_message_duration_seconds"], "caxton_message_duration_seconds_count",
                      agent=agent, version="1") == count
        assert _value(metrics["caxton_message_duration_seconds"], "caxton_message_duration_seconds_bucket",
                      agent=agent, version="1", le="+Inf") == count


def test_a_scrape_under_load_shows_every_metric(supervisor):
    sup = supervisor('metrics_listen = "127.0.0.1:0"\n')
    match = wait_until(lambda: re.search(r"metrics on (http://\S+)", sup.log_text()), 10, "the metrics address")
    url = match.group(1)
    sup.deploy("metered", "echo")
    sup.deploy("trapper", "trap")
    with LoadGenerator(sup, "metered", callers=2, timeout=10, warmup=20):
        pass
    for _ in range(3):
        try:
            sup.send("trapper", b"unreachable")
            raise AssertionError("a trap must fail its message")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INTERNAL
    sup.lifecycle.HotReloadAgent(caxton_pb2.HotReloadAgentRequest(name="metered", module=module("uppercase")),
                                 timeout=60)
    sup.lifecycle.RollbackAgent(caxton_pb2.RollbackAgentRequest(name="metered"), timeout=60)

    metrics = _scrape(url)
    assert EXPECTED <= set(metrics), EXPECTED - set(metrics)
    ok = _value(metrics["caxton_messages"], "caxton_messages_total", agent="metered", version="1", outcome="ok")
    assert ok >= 40
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="trapper", outcome="internal") == 3
    count = _value(metrics["caxton_message_duration_seconds"], "caxton_message_duration_seconds_count",
                   agent="metered", version="1")
    assert count == ok
    assert _value(metrics["caxton_message_duration_seconds"], "caxton_message_duration_seconds_bucket",
                  agent="metered", version="1", le="10.0") == count
    assert _value(metrics["caxton_agent_state"], "caxton_agent_state", agent="metered", state="running") == 1
    assert _value(metrics["caxton_agent_state"], "caxton_agent_state", agent="metered", state="failed") == 0
    assert _value(metrics["caxton_breaker_state"], "caxton_breaker_state", agent="metered") == 0
    assert _value(metrics["caxton_deployments"], "caxton_deployments_total", strategy="deploy",
                  outcome="succeeded") == 2
    assert _value(metrics["caxton_deployments"], "caxton_deployments_total", strategy="graceful",
                  outcome="succeeded") == 1
    assert _value(metrics["caxton_rollbacks"], "caxton_rollbacks_total", agent="metered", reason="manual") == 1
    assert _value(metrics["caxton_agents"], "caxton_agents") == 2
    assert _value(metrics["caxton_workers"], "caxton_workers") == 2
    rss = [s.value for s in metrics["caxton_worker_rss_bytes"] if s.labels["agent"] == "metered"]
    assert len(rss) == 1 and rss[0] > 10 << 20
    assert _value(metrics["caxton_agent_memory_bytes"], "caxton_agent_memory_bytes", agent="metered") >= 65536


class ServiceManager:
    """A datagram socket standing in for systemd's: what the supervisor
    notifies arrives here, in order (every wait with a deadline)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(20)
        self.messages: list[str] = []  # the first line of each

    def receive_until(self, prefix: str) -> str:
        while True:
            message = self.sock.recv(4096).decode()
            self.messages.append(message.split("\n")[0])
            if message.startswith(prefix):
                return message

    def close(self) -> None:
        self.sock.close()


def test_systemd_hears_ready_watchdog_reloading_and_stopping_in_order(tmp_path):
    manager = ServiceManager(tmp_path / "notify.sock")
    sup = SupervisorProcess(tmp_path / "state", config="worker_pool = 0\n",
                            env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"})
    try:
        sup.start()
        ready = manager.receive_until("READY=1")
        assert "STATUS=0 of 0 agents running" in ready
        manager.receive_until("WATCHDOG=1")
        manager.receive_until("WATCHDOG=1")
        sup.proc.send_signal(signal.SIGHUP)
        manager.receive_until("RELOADING=1")
        manager.receive_until("READY=1")
        assert sup.proc.poll() is None, "SIGHUP must not end the supervisor"
        sup.proc.send_signal(signal.SIGTERM)
        manager.receive_until("STOPPING=1")
        assert sup.proc.wait(30) == 0
        kinds = [m for m in manager.messages if not m.startswith(("STATUS=", "WATCHDOG=1"))]
        assert kinds == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], manager.messages
    finally:
        sup.kill()
        manager.close()


def test_an_agent_cannot_forge_a_supervisor_log_line(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("forger", "logger")
    forged = "hi\n2026-11-30 03:00:00,000 caxton.supervisor ERROR all agents deleted\x1b[2J"
    assert sup.send("forger", forged.encode()).reply.content == b"logged"
    line = wait_until(lambda: next((line for line in sup.log_text().splitlines() if "[forger v1] hi" in line), None),
                      10, "the agent's log line")
    assert line.endswith("[forger v1] hi\\n2026-11-30 03:00:00,000 caxton.supervisor ERROR all agents deleted\\x1b[2J")
    assert not any(line.startswith("2026-11-30 03:00:00,000 caxton.supervisor") for line in sup.log_text().splitlines())
    assert "\x1b" not in sup.log_text()


def test_counts_survive_a_supervisor_restart(supervisor, tmp_path):
    state = tmp_path / "counted"
    first = supervisor('metrics_listen = "127.0.0.1:0"\n', state_dir=state)
    first.deploy("counted", "trap")
    for _ in range(5):
        assert first.send("counted", b"x").reply.content == b"x"
    try:
        first.send("counted", b"unreachable")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INTERNAL
    before = first.status("counted")
    assert (before.messages, before.errors) == (6, 1)
    assert first.stop() == 0

    second = supervisor('metrics_listen = "127.0.0.1:0"\n', state_dir=state)
    after = second.status("counted")
    assert (after.messages, after.errors, after.restarts) == (6, 1, before.restarts)
    match = wait_until(lambda: re.findall(r"metrics on (http://\S+)", second.log_text()), 10, "the metrics address")
    metrics = _scrape(match[-1])
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="counted", outcome="ok") == 5
    assert _value(metrics["caxton_messages"], "caxton_messages_total", agent="counted", outcome="internal") == 1


def test_agent_logs_are_kept_and_followed(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("diarist", "logger")
    for text in (b"first", b"second"):
        assert sup.send("diarist", text).reply.content == b"logged"
    lines = list(sup.lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name="diarist"), timeout=10))
    assert [line.text for line in lines] == ["init", "first", "second"]
    assert {(line.agent, line.version, line.level) for line in lines} == {("diarist", 1, "info")}
    later = list(sup.lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name="diarist", since=lines[1].at), timeout=10))
    assert [line.text for line in later] == ["second"]

    follow = sup.lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name="diarist", since=lines[-1].at, follow=True),
                                     timeout=30)
    assert sup.send("diarist", b"third").reply.content == b"logged"
    assert next(follow).text == "third"
    follow.cancel()
    try:
        list(sup.lifecycle.AgentLogs(caxton_pb2.AgentLogsRequest(name="nobody-here"), timeout=10))
        raise AssertionError("logs of an unknown agent")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_events_since_replays_what_happened_before_watching(shared_supervisor):
    sup = shared_supervisor
    before = time.time()
    sup.deploy("historian", "echo")
    sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="historian"), timeout=30)
    stream = sup.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent="historian", since=before), timeout=30)
    kinds = []
    for event in stream:
        kinds.append(event.kind)
        if event.kind == "stopped":
            break
    stream.cancel()
    assert kinds[0] == "watching"
    assert {"started", "deployed", "stopped"} <= set(kinds)


def test_sighup_reloads_caps_and_defaults_without_touching_running_agents(supervisor):
    sup = supervisor("[caps]\nmemory = \"64MiB\"\n")
    sup.deploy("steady", "echo", memory_bytes=32 << 20)
    sup.config_path.write_text(sup.config_path.read_text().replace('memory = "64MiB"', 'memory = "16MiB"')
                               + '\n[limits]\nmemory = "8MiB"\n')
    sup.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: config reloaded" in sup.log_text(), 10, "the reload")
    try:
        sup.deploy("too-big", "echo", memory_bytes=32 << 20)
        raise AssertionError("the new cap must apply to new deploys")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "16777216" in exc.details() or "16MiB" in exc.details() or "16 MiB" in exc.details()
    assert sup.deploy("small", "echo").limits.memory_bytes == 8 << 20  # the new default
    # The running agent keeps what it was deployed with, and serves.
    assert sup.status("steady").limits.memory_bytes == 32 << 20
    assert sup.send("steady", b"still").reply.content == b"still"


# ---------------------------------------------------------------- SIGHUP: the log level

# Logged at DEBUG on every watchdog tick, just before the WATCHDOG=1 ping.
TICK_LINE = "caxton.supervisor DEBUG the launcher thread and the state store answered"


def test_the_log_level_is_one_of_four_names():
    assert config_from_table({"log_level": "DEBUG"}).log_level == "DEBUG"
    assert config_from_table({}).log_level == ""
    with pytest.raises(ConfigError) as refused:
        config_from_table({"log_level": "verbose"})
    assert refused.value.field == "log_level"


class LevelProbe:
    """A supervisor pinging a watchdog every 0.1 s, each ping preceded by a
    DEBUG line: whether the lines logged between two pings include it tells
    the log level in force (a line is written before its ping is sent)."""

    def __init__(self, tmp_path: Path, config: str, args: tuple[str, ...] = ()) -> None:
        self.manager = ServiceManager(tmp_path / "notify.sock")
        self.sup = SupervisorProcess(tmp_path / "state", config="worker_pool = 0\n" + config, args=args,
                                     env={"NOTIFY_SOCKET": str(self.manager.path), "WATCHDOG_USEC": "200000"})

    def __enter__(self) -> LevelProbe:
        try:
            self.sup.start()
            self.manager.receive_until("READY=1")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.sup.stop()
        self.manager.close()

    def debug_logged(self) -> bool:
        """Whether the next two watchdog ticks log at DEBUG."""
        start = len(self.sup.log_text())
        self.manager.receive_until("WATCHDOG=1")  # may be a tick begun before `start`
        self.manager.receive_until("WATCHDOG=1")
        return TICK_LINE in self.sup.log_text()[start:]

    def reload(self, config: str) -> str:
        """Rewrite the config, SIGHUP, wait until the reload is done: what
        it logged."""
        assert self.sup.config_path is not None
        self.sup.config_path.write_text("worker_pool = 0\n" + config)
        start = len(self.sup.log_text())
        self.sup.proc.send_signal(signal.SIGHUP)
        self.manager.receive_until("RELOADING=1")
        self.manager.receive_until("READY=1")
        return self.sup.log_text()[start:]


def test_sighup_sets_the_log_level_the_config_names(tmp_path):
    with LevelProbe(tmp_path, 'log_level = "INFO"\n') as probe:
        assert not probe.debug_logged()
        assert "SIGHUP: config reloaded (" in probe.reload('log_level = "DEBUG"\n')
        assert probe.debug_logged()
        # No log_level (and no --log-level): back to INFO.
        assert "SIGHUP: config reloaded (" in probe.reload("")
        assert not probe.debug_logged()


def test_the_flag_wins_at_start_and_the_config_on_sighup(tmp_path):
    with LevelProbe(tmp_path, 'log_level = "WARNING"\n', args=("--log-level", "DEBUG")) as probe:
        assert probe.debug_logged()
        logged = probe.reload('log_level = "WARNING"\n')
        assert "SIGHUP: config reloaded" not in logged  # an INFO line, logged once WARNING was in force
        assert not probe.debug_logged()
        # The config names no level: the flag's applies again.
        assert "SIGHUP: config reloaded (" in probe.reload("")
        assert probe.debug_logged()
