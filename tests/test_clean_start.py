"""Every worker starts clean: an allow-listed environment, `/` as working
directory, umask 077, stdin /dev/null, stderr its own pipe, and no
descriptor of the supervisor's (exec-started and forked alike)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from caxton.contract import TOKEN_ENV
from caxton.supervisor import grpc_engine
from caxton.supervisor.launcher import worker_environment

from .harness import SupervisorProcess, wait_until, worker_pids_of

# Set in the supervisor's environment: none of it may reach a worker.
SECRETS = {
    TOKEN_ENV: "secret-api-token",
    "CAXTON_API_TOKEN": "secret-api-token-2",
    "HTTP_PROXY": "http://proxy.invalid:3128",
    "https_proxy": "http://proxy.invalid:3128",
    "AWS_SECRET_ACCESS_KEY": "secret-aws-key",
    "HOME": "/root-secret-home",
    "CAXTON_WORKERS_NOT_A_WORKER_SETTING": "secret-prefix",  # CAXTON_WORKER_ is the prefix, with its underscore
    "LD_PRELOAD": "",
}
PASSED = {"CAXTON_WORKER_CLEAN_START_TEST": "passed through", "TZ": "UTC"}
ALLOWED = {"PATH", "LANG", "LC_ALL", "TZ", "MALLOC_ARENA_MAX", "GRPC_EXPERIMENTS"}
# The supervisor's choice of gRPC engine, the one setting of its own a worker
# gets (test_grpc_engine.py tests the choice).
ENGINE = grpc_engine.environment({})


# ------------------------------------------------------------ the allow-list (pure)


def test_the_worker_environment_is_an_allow_list():
    source = {**SECRETS, **PASSED, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "xterm",
              "MALLOC_ARENA_MAX": "8", "PYTHONPATH": "/evil", "CAXTON_WORKER_CALL_PATH": "public"}
    assert worker_environment(source) == {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "MALLOC_ARENA_MAX": "1",
        "CAXTON_WORKER_CLEAN_START_TEST": "passed through", "CAXTON_WORKER_CALL_PATH": "public",
        **ENGINE,
    }


def test_a_worker_gets_a_path_even_when_the_supervisor_has_none():
    assert worker_environment({}) == {"PATH": os.defpath, "MALLOC_ARENA_MAX": "1", **ENGINE}


# ------------------------------------------------------------ real workers


@pytest.fixture(scope="module")
def dirty_supervisor(tmp_path_factory, worker_start):
    """A supervisor whose own environment holds secrets, with one agent
    deployed twice (the second deploy loads the module from the cache)."""
    sup = SupervisorProcess(tmp_path_factory.mktemp(f"clean-{worker_start}") / "state",
                            config=f'worker_start = "{worker_start}"\nworker_pool = 1\n', env={**SECRETS, **PASSED})
    try:
        sup.start()
        sup.deploy("clean-a", "echo")
        sup.deploy("clean-b", "echo")
        wait_until(lambda: len(_processes(sup)) >= 3 + (worker_start == "fork"), 30,
                   "two workers, a spare (and the fork server)")
        yield sup
    finally:
        sup.stop()


def _processes(sup: SupervisorProcess) -> list[int]:
    return worker_pids_of(sup.pid, include_fork_server=True, include_spares=True)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def _links(pid: int) -> dict[int, str]:
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass  # closed meanwhile
    return links


def test_workers_and_the_fork_server_get_only_the_allowed_environment(dirty_supervisor):
    pids = _processes(dirty_supervisor)
    assert SECRETS.items() <= _environ(dirty_supervisor.pid).items()  # the test set them where it matters
    for pid in pids:
        env = _environ(pid)
        names = set(env)
        assert names - ALLOWED <= {"CAXTON_WORKER_CLEAN_START_TEST", "CAXTON_WORKER_CALL_PATH",
                                   "CAXTON_WORKER_ESCAPE_PROBE"}, (pid, sorted(names))
        assert env["CAXTON_WORKER_CLEAN_START_TEST"] == "passed through"
        assert env["MALLOC_ARENA_MAX"] == "1" and env["TZ"] == "UTC"
        assert not any(secret in value for value in env.values() for secret in SECRETS.values() if secret)


def test_workers_run_in_the_root_directory_with_umask_077(dirty_supervisor):
    for pid in _processes(dirty_supervisor):
        assert os.readlink(f"/proc/{pid}/cwd") == "/", pid
        assert _status(pid, "Umask") == "0077", pid


def test_workers_hold_no_descriptor_of_the_supervisors(dirty_supervisor):
    sup = dirty_supervisor
    state = str(sup.state_dir.resolve())
    log = str(sup.log_path.resolve())
    supervisor_sockets = {link for link in _links(sup.pid).values() if link.startswith("socket:")}
    assert supervisor_sockets  # its listening socket among them
    workers = worker_pids_of(sup.pid, include_spares=True)
    assert len(workers) >= 3

    def pipes(pid: int) -> list[int]:
        return sorted(fd for fd, link in _links(pid).items() if link.startswith("pipe:"))
    # A worker closes its ready pipe once it is serving (a spare may still
    # be starting): from then on its stderr is its only pipe.
    wait_until(lambda: all(pipes(pid) == [2] for pid in workers), 20,
               "stderr to be the only pipe of every worker")
    for pid in workers:
        links = _links(pid)
        assert links[0] == "/dev/null" and links[1] == "/dev/null", (pid, links)
        assert links[2].startswith("pipe:"), (pid, links)
        for fd, link in links.items():
            if link.startswith(state + "/cache/") and link.endswith(".cwasm"):
                # wasmtime maps the compiled module it loaded from the cache
                # and keeps that file open, read-only: the worker's own code.
                flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
                assert flags & os.O_ACCMODE == os.O_RDONLY, (pid, fd, link)
                continue
            assert link == "/dev/null" or link.startswith(("pipe:", "socket:", "anon_inode:")), (pid, fd, link)
            assert link != log and not link.startswith(state), (pid, fd, link)
            assert link not in supervisor_sockets, (pid, fd, link)


def test_a_workers_stderr_is_not_the_supervisors_log(dirty_supervisor):
    sup = dirty_supervisor
    log_inode = os.stat(sup.log_path).st_ino
    for pid in worker_pids_of(sup.pid, include_spares=True):
        stderr = os.stat(f"/proc/{pid}/fd/2")
        assert stat.S_ISFIFO(stderr.st_mode) and stderr.st_ino != log_inode


def test_a_relative_state_dir_still_reaches_workers_that_start_in_the_root(tmp_path):
    """Workers run in "/": the module and socket paths they are given must
    not be relative to the supervisor's working directory."""
    sup = SupervisorProcess(tmp_path / "state", args=["--state-dir", "state"], cwd=tmp_path).start()
    try:
        sup.deploy("echo", "echo")
        assert sup.send("echo", b"hi").reply.content == b"hi"
    finally:
        sup.stop()
