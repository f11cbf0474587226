"""The gRPC engine Caxton's processes run on (grpc_engine.py): the choice
(pure), and that a real supervisor, its fork server and its workers run with
it and grpc knows every experiment named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from caxton.supervisor import grpc_engine
from caxton.supervisor.grpc_engine import EXPERIMENTS, experiments

from .harness import SupervisorProcess, wait_until, worker_pids_of

OURS = ",".join(EXPERIMENTS)


# ------------------------------------------------------------ the choice (pure)


def test_nothing_set_gives_ours():
    assert experiments("", "1.85.3") == OURS


def test_an_operators_other_experiments_are_kept_first():
    assert experiments("call_tracer_in_transport, -retry_in_callv3", "1.85.0") == \
        f"call_tracer_in_transport,-retry_in_callv3,{OURS}"


@pytest.mark.parametrize("operator", ["event_engine_client", "-event_engine_client"])
def test_an_experiment_the_operator_names_stays_as_set(operator):
    assert experiments(operator, "1.85.3") == f"{operator},-event_engine_listener"


def test_all_ours_named_by_the_operator_changes_nothing():
    assert experiments("event_engine_client,event_engine_listener", "1.85.3") is None


@pytest.mark.parametrize("version", ["1.86.0", "1.84.1", "2.0.0", ""])
def test_another_grpcio_keeps_grpcs_default(version):
    assert experiments("", version) is None
    assert experiments("-some_experiment", version) is None


def test_a_childs_environment_keeps_an_operators_setting_under_another_grpcio(monkeypatch):
    monkeypatch.setattr(grpc_engine, "_grpcio_version", lambda: "9.9.9")
    assert grpc_engine.environment({"GRPC_EXPERIMENTS": "x"}) == {"GRPC_EXPERIMENTS": "x"}
    assert grpc_engine.environment({}) == {}


def test_select_changes_nothing_once_grpc_is_imported(monkeypatch):
    import grpc  # noqa: F401  (this test process has grpc; the point is that select knows)

    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    assert grpc_engine.select() is False
    assert "GRPC_EXPERIMENTS" not in os.environ


def test_the_installed_grpcio_is_the_one_measured():
    """Fails when grpcio moves to another minor version: measure the worker
    link on both engines again (bench_throughput, Send p50) before moving
    TESTED_GRPCIO, or drop the module if the old engine is gone."""
    assert grpc_engine.environment({}) == {"GRPC_EXPERIMENTS": OURS}


# ------------------------------------------------------------ a real supervisor


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


@pytest.mark.parametrize("worker_start", ["fork", "exec"])
def test_the_supervisor_and_its_workers_run_on_the_chosen_engine(tmp_path, worker_start):
    sup = SupervisorProcess(tmp_path / "state", config=f'worker_start = "{worker_start}"\nworker_pool = 1\n')
    try:
        sup.start()
        sup.deploy("engine", "echo")
        assert sup.send("engine", b"over the link").reply.content == b"over the link"
        processes = wait_until(
            lambda: (p := worker_pids_of(sup.pid, include_fork_server=True, include_spares=True))
            and len(p) >= 2 + (worker_start == "fork") and p, 30, "a worker, a spare (and the fork server)")
        for pid in processes:
            assert _environ(pid).get("GRPC_EXPERIMENTS") == OURS, pid
        log = sup.log_text()
        assert f"gRPC experiments: {OURS}" in log
        # grpc names an experiment it does not know in an error line.
        assert "Unknown experiment" not in log
    finally:
        sup.stop()
