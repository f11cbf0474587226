"""Deploy, stop, start, remove, restart: real supervisor processes."""

from __future__ import annotations

import functools
import os
import signal
import threading

import grpc
import psutil
import pytest

from caxton.v1 import caxton_pb2

from .harness import alive, module, wait_until, worker_pids_of


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_each_agent_runs_in_its_own_worker_process(shared_supervisor):
    sup = shared_supervisor
    a = sup.deploy("proc-a", "echo")
    b = sup.deploy("proc-b", "echo")
    pid_a, pid_b = a.instances[0].pid, b.instances[0].pid
    assert pid_a != pid_b
    assert pid_a in sup.worker_pids() and pid_b in sup.worker_pids()
    assert psutil.Process(pid_a).name() == "caxton-worker"
    assert sup.pid not in (pid_a, pid_b)


def test_status_reports_what_a_user_needs(shared_supervisor):
    sup = shared_supervisor
    deployed = sup.deploy("status-echo", "echo", memory_bytes=2 << 20)
    sup.send("status-echo", b"x")
    status = sup.status("status-echo")
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING
    assert status.version == 1
    assert status.messages == 1 and status.errors == 0 and status.restarts == 0
    assert status.memory_bytes == 65536
    assert status.limits.memory_bytes == 2 << 20
    assert status.limits.fuel > 0 and status.limits.timeout_ms > 0
    assert len(status.module_sha256) == 64 and status.module_sha256 == deployed.module_sha256
    assert status.instances[0].rss_bytes > 0
    listed = {a.name for a in sup.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=10).agents}
    assert "status-echo" in listed


def test_stop_start_remove(shared_supervisor):
    sup = shared_supervisor
    pid = sup.deploy("cycle", "counter").instances[0].pid
    assert sup.send("cycle", b"x").reply.content == b"1"

    stopped = sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="cycle"), timeout=30).status
    assert stopped.state == caxton_pb2.AGENT_STATE_STOPPED
    assert not stopped.instances
    wait_until(lambda: not alive(pid), 10, "the worker to exit")
    error = _code(lambda: sup.send("cycle", b"x"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "stopped" in error.details()
    error = _code(lambda: sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="cycle"), timeout=30))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    started = sup.lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name="cycle"), timeout=30).status
    assert started.state == caxton_pb2.AGENT_STATE_RUNNING
    assert started.instances[0].pid != pid
    assert sup.send("cycle", b"x").reply.content == b"1"  # a fresh instance

    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name="cycle"), timeout=30)
    assert _code(lambda: sup.status("cycle")).code() == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: sup.send("cycle", b"x")).code() == grpc.StatusCode.NOT_FOUND
    # The name is free again.
    sup.deploy("cycle", "echo")
    assert sup.send("cycle", b"back").reply.content == b"back"


def test_stop_drains_in_flight_messages_and_runs_shutdown(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("drain-slow", "slow")
    replies = []
    sender = threading.Thread(target=lambda: replies.append(sup.send("drain-slow", b"400").reply.content))
    sender.start()
    wait_until(lambda: _inflight(sup, "drain-slow"), 10, "the slow message to be in flight")
    sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="drain-slow", timeout_ms=10_000), timeout=30)
    sender.join(10)
    assert replies == [b"400"]

    sup.deploy("drain-log", "shutdown_log")
    sup.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="drain-log"), timeout=30)
    wait_until(lambda: "[drain-log v1] shutdown" in sup.log_text(), 10, "caxton_shutdown's log line")


def _inflight(sup, name: str) -> bool:
    """True while the worker is busy with a message (its Stats lag behind)."""
    status = sup.status(name)
    return status.state == caxton_pb2.AGENT_STATE_RUNNING and status.messages == 0 and status.instances[0].messages == 1


def test_bad_requests_get_the_right_status(shared_supervisor):
    sup = shared_supervisor
    cases = [
        ("Bad_Name", module("echo"), grpc.StatusCode.INVALID_ARGUMENT, "invalid agent name"),
        ("", module("echo"), grpc.StatusCode.INVALID_ARGUMENT, "invalid agent name"),
        ("x" * 64, module("echo"), grpc.StatusCode.INVALID_ARGUMENT, "invalid agent name"),
        # `$` in a regex also matches before a trailing newline: the name check must not.
        ("a\n", module("echo"), grpc.StatusCode.INVALID_ARGUMENT, "invalid agent name"),
        # Quoted back cut short: a whole megabyte would not fit in the status.
        ("n" * (1 << 20), module("echo"), grpc.StatusCode.INVALID_ARGUMENT, "(1048576 characters)"),
        ("malformed", b"\x00asm\x01\x00\x00\x00\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "structure.invalid"),
        ("not-wasm", b"hello", grpc.StatusCode.INVALID_ARGUMENT, "structure"),
        ("empty", b"", grpc.StatusCode.INVALID_ARGUMENT, "structure.empty"),
        ("no-handle", module("no_handle"), grpc.StatusCode.INVALID_ARGUMENT, "caxton_handle"),
        ("bad-sig", module("bad_handle_sig"), grpc.StatusCode.INVALID_ARGUMENT, "abi.export-signature"),
        ("bad-import", module("bad_import"), grpc.StatusCode.INVALID_ARGUMENT, "abi.unknown-import"),
    ]
    for name, wasm, code, words in cases:
        error = _code(functools.partial(sup.deploy, name, wasm=wasm))
        assert error.code() == code, (name, error.details())
        assert words in error.details(), (name, error.details())
    # Nothing was left behind by the rejected deploys.
    names = {a.name for a in sup.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=10).agents}
    assert not names & {"a\n", "a", "malformed", "not-wasm", "empty", "no-handle", "bad-sig", "bad-import"}


def test_rejection_carries_the_full_report(shared_supervisor):
    error = _code(lambda: shared_supervisor.deploy("report", wasm=module("no_handle")))
    reports = [v for k, v in error.trailing_metadata() if k == "caxton-validation-report-bin"]
    report = caxton_pb2.ValidationReport.FromString(reports[0])
    assert not report.valid
    assert "abi.missing-export" in {f.rule for f in report.findings}


def test_validate_module_is_a_dry_run(shared_supervisor):
    sup = shared_supervisor
    good = sup.lifecycle.ValidateModule(caxton_pb2.ValidateModuleRequest(module=module("echo")), timeout=10)
    assert good.valid and len(good.module_sha256) == 64
    bad = sup.lifecycle.ValidateModule(caxton_pb2.ValidateModuleRequest(module=module("no_handle")), timeout=10)
    assert not bad.valid
    assert any(f.rule == "abi.missing-export" and f.severity == caxton_pb2.SEVERITY_ERROR for f in bad.findings)
    unknown_policy = _code(lambda: sup.lifecycle.ValidateModule(
        caxton_pb2.ValidateModuleRequest(module=module("echo"), policy="nope"), timeout=10))
    assert unknown_policy.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_repeated_deploy_changes_nothing_and_any_difference_is_already_exists(shared_supervisor):
    """A client that lost its connection mid-deploy retries: the same request
    succeeds and changes nothing; one that differs in anything is refused."""
    sup = shared_supervisor

    def request(**changes) -> caxton_pb2.DeployAgentRequest:
        fields = dict(name="twice", module=module("echo"), limits=caxton_pb2.ResourceLimits(memory_bytes=4 << 20),
                      label="build-7", replicas=2, restart=caxton_pb2.RestartPolicy(max_failures=3))
        return caxton_pb2.DeployAgentRequest(**{**fields, **changes})

    first = sup.lifecycle.DeployAgent(request(), timeout=60).status
    again = sup.lifecycle.DeployAgent(request(), timeout=60).status
    assert again.state == caxton_pb2.AGENT_STATE_RUNNING
    assert again.version == first.version == 1 and len(again.history) == 1
    assert sorted(i.pid for i in again.instances) == sorted(i.pid for i in first.instances)
    assert sup.send("twice", b"ok").reply.content == b"ok"

    differing = {
        "module_sha256": dict(module=module("uppercase")),
        "limits": dict(limits=caxton_pb2.ResourceLimits(memory_bytes=8 << 20)),
        "policy": dict(policy="permissive"),
        "replicas": dict(replicas=3),
        "restart": dict(restart=caxton_pb2.RestartPolicy(max_failures=4)),
        "label": dict(label="build-8"),
    }
    for field, change in differing.items():
        error = _code(lambda change=change: sup.lifecycle.DeployAgent(request(**change), timeout=60))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, (field, error.details())
        assert field in error.details(), (field, error.details())
    status = sup.status("twice")
    assert (status.version, status.label, status.replicas) == (1, "build-7", 2)
    assert sorted(i.pid for i in status.instances) == sorted(i.pid for i in first.instances)


def test_init_failure_is_reported_and_leaves_nothing(shared_supervisor):
    sup = shared_supervisor
    error = _code(lambda: sup.deploy("init-fails", "init_fails"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "caxton_init returned 7" in error.details()
    error = _code(lambda: sup.deploy("init-traps", "init_traps"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "caxton_init trapped" in error.details()
    assert _code(lambda: sup.status("init-fails")).code() == grpc.StatusCode.NOT_FOUND


def test_worker_killed_mid_message_gets_unavailable(shared_supervisor):
    sup = shared_supervisor
    pid = sup.deploy("victim", "slow").instances[0].pid
    errors = []

    def send():
        try:
            sup.send("victim", b"5000")
        except grpc.RpcError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: _inflight(sup, "victim"), 10, "the message to be in flight")
    os.kill(pid, signal.SIGKILL)
    sender.join(15)
    assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
    assert "SIGKILL" in errors[0].details()
    # Its neighbours never notice.
    sup.deploy("bystander", "echo")
    assert sup.send("bystander", b"fine").reply.content == b"fine"


def test_agents_survive_a_supervisor_restart(supervisor, tmp_path):
    state = tmp_path / "restart-state"
    first = supervisor(state_dir=state)
    first.deploy("keep-echo", "echo")
    first.deploy("keep-counter", "counter")
    first.deploy("keep-stopped", "uppercase")
    first.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="keep-stopped"), timeout=30)
    old_workers = first.worker_pids()
    assert first.stop() == 0
    assert old_workers and not [p for p in old_workers if alive(p)]

    second = supervisor(state_dir=state)
    assert second.send("keep-echo", b"again").reply.content == b"again"
    assert second.send("keep-counter", b"x").reply.content == b"1"
    assert second.status("keep-stopped").state == caxton_pb2.AGENT_STATE_STOPPED
    second.lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name="keep-stopped"), timeout=30)
    assert second.send("keep-stopped", b"abc").reply.content == b"ABC"


def test_sigkill_of_the_supervisor_takes_every_worker_with_it(supervisor, tmp_path):
    state = tmp_path / "kill-state"
    sup = supervisor(state_dir=state)
    sup.deploy("orphan-a", "echo")
    sup.deploy("orphan-b", "echo")
    assert len(sup.worker_pids()) == 2
    # Spares too: each changed its group at start, which clears the
    # parent-death signal until it is armed again.
    workers = wait_until(lambda: (pids := worker_pids_of(sup.pid, include_spares=True)) and len(pids) >= 3 and pids,
                         20, "the two workers and a spare")
    runtime_dir = sup.runtime_dir
    assert os.path.isdir(runtime_dir)
    sup.kill()
    wait_until(lambda: not any(alive(p) for p in workers), 10, "the workers to die with their supervisor")
    # Killed, the supervisor could not remove its workers' sockets: the
    # harness did.
    assert not os.path.exists(runtime_dir)
    again = supervisor(state_dir=state)
    assert again.send("orphan-a", b"back").reply.content == b"back"


def test_a_start_that_overlaps_a_stop_is_remembered_as_the_last_word(supervisor, tmp_path):
    """StartAgent sent while a StopAgent is still draining: the start runs
    after the stop, so the agent ends up running, and the desired state on
    disk must say so too; a restarted supervisor brings it back running."""
    sup = supervisor()
    sup.deploy("overlap", "slow")
    sender = threading.Thread(target=lambda: sup.send("overlap", b"1500"))
    sender.start()
    wait_until(lambda: _inflight(sup, "overlap"), 10, "the slow message to be in flight")
    stopper = threading.Thread(target=lambda: sup.lifecycle.StopAgent(
        caxton_pb2.StopAgentRequest(name="overlap", timeout_ms=10_000), timeout=30))
    stopper.start()
    wait_until(lambda: sup.status("overlap").state == caxton_pb2.AGENT_STATE_DRAINING, 10, "the stop to be draining")
    sup.lifecycle.StartAgent(caxton_pb2.StartAgentRequest(name="overlap"), timeout=30)
    stopper.join(30)
    sender.join(30)
    assert sup.status("overlap").state == caxton_pb2.AGENT_STATE_RUNNING
    sup.stop()
    again = supervisor(state_dir=sup.state_dir)
    assert again.status("overlap").state == caxton_pb2.AGENT_STATE_RUNNING
    assert again.send("overlap", b"0").reply.content == b"0"
