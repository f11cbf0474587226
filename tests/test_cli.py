"""The `caxton` command-line client, run as a real subprocess against a real supervisor."""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import pty
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tty

import psutil
import pytest

from caxton.client import connection
from caxton.client.cli import _parser
from caxton.client.duration import parse_duration
from caxton.client.escape import escape
from caxton.contract import TOKEN_ENV, TOKEN_FILE_ENV

from .harness import AGENTS, EXAMPLES, ROOT, SupervisorProcess, wait_until

ECHO = str(EXAMPLES / "echo.wat")
CLI_TIMEOUT = 90  # seconds for any one CLI invocation


def cli_argv(target: SupervisorProcess | str) -> list[str]:
    """`python -m caxton` for a supervisor (with its admin token file) or a bare address."""
    if isinstance(target, str):
        return [sys.executable, "-m", "caxton", "--address", target]
    return [sys.executable, "-m", "caxton", "--address", target.address, "--token-file", str(target.token_file)]


def cli(target: SupervisorProcess | str, *args: str, rpc_timeout: float | None = None,
        timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `python -m caxton --address ADDRESS [--token-file FILE] ARGS...`;
    stdout as bytes, stderr as text."""
    argv = cli_argv(target)
    if rpc_timeout is not None:
        argv += ["--rpc-timeout", str(rpc_timeout)]
    result = subprocess.run(
        argv + list(args), capture_output=True, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=timeout,
    )
    result.stderr = result.stderr.decode(errors="replace")
    return result


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}; stderr: {result.stderr}"
    assert result.stderr == ""
    return result.stdout.decode()


def error_line(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The command failed with `code`, printed nothing on stdout and exactly one line on stderr."""
    assert result.returncode == code, f"exit {result.returncode}; stdout: {result.stdout!r}; stderr: {result.stderr}"
    assert result.stdout == b""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("caxton: ")
    return lines[0]


def status_json(target: SupervisorProcess, name: str) -> dict:
    out = ok(cli(target, "status", name, "--json"))
    assert out.endswith("\n") and out.count("\n") == 1
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------- messaging


def test_deploy_and_send_prints_reply_exactly(shared_supervisor):
    sup = shared_supervisor
    assert ok(cli(sup, "deploy", "cli-echo", ECHO)) == "deployed cli-echo v1\n"
    # stdout is a pipe, not a tty: the reply exactly, no newline added
    assert cli(sup, "send", "cli-echo", "hello, world").stdout == b"hello, world"
    result = cli(sup, "send", "cli-echo", "  spaces\tand tabs ")
    assert ok(result) == "  spaces\tand tabs "


def test_send_file_returns_binary_bytes_unchanged(shared_supervisor, tmp_path):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-echo-bin", ECHO))
    payload = bytes(range(256)) * 8 + b"\x00\xff\r\n\x00" + os.urandom(1000)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    result = cli(sup, "send", "cli-echo-bin", "--file", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == payload
    assert status_json(sup, "cli-echo-bin")["messages"] == 1


# ---------------------------------------------------------------- status / list


def test_status_json(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-status", ECHO))
    assert cli(sup, "send", "cli-status", "ping").stdout == b"ping"
    assert cli(sup, "send", "cli-status", "pong").stdout == b"pong"
    status = status_json(sup, "cli-status")
    assert status["name"] == "cli-status"
    assert status["state"] == "running"
    assert status["version"] == 1
    pid = status["pid"]
    assert type(pid) is int and pid > 0
    assert psutil.pid_exists(pid)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert pid in sup.worker_pids()
    assert [i["pid"] for i in status["instances"]] == [pid]
    assert isinstance(status["uptime_s"], float) and status["uptime_s"] >= 0
    assert type(status["memory_bytes"]) is int and status["memory_bytes"] >= 65536  # echo has one 64 KiB page
    assert status["messages"] == 2
    assert status["errors"] == 0
    assert status["restarts"] == 0
    assert set(status["limits"]) == {"memory_bytes", "fuel", "timeout_ms", "max_message_bytes"}
    assert all(type(v) is int and v > 0 for v in status["limits"].values())


def test_status_plain_line(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-status-line", ECHO))
    out = ok(cli(sup, "status", "cli-status-line"))
    assert out.count("\n") == 1
    fields = out.split()
    assert fields[:3] == ["cli-status-line", "running", "v1"]
    assert fields[fields.index("messages") + 1] == "0"
    assert fields[fields.index("errors") + 1] == "0"
    assert fields[fields.index("restarts") + 1] == "0"


def test_list(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-listed", ECHO))
    agents = json.loads(ok(cli(sup, "list", "--json")))
    assert isinstance(agents, list)
    mine = [a for a in agents if a["name"] == "cli-listed"]
    assert len(mine) == 1
    assert (mine[0]["state"], mine[0]["version"]) == ("running", 1)
    assert mine[0]["pid"] in sup.worker_pids()

    lines = ok(cli(sup, "list")).splitlines()
    mine = [line for line in lines if line.split()[0] == "cli-listed"]
    assert len(mine) == 1
    assert mine[0].split()[1:3] == ["running", "v1"]


# ---------------------------------------------------------------- lifecycle


def test_stop_start_remove(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-life", ECHO))
    first_pid = status_json(sup, "cli-life")["pid"]

    assert ok(cli(sup, "stop", "cli-life")) == "stopped cli-life\n"
    status = status_json(sup, "cli-life")
    assert status["state"] == "stopped"
    assert status["pid"] is None
    assert status["instances"] == []
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE

    line = error_line(cli(sup, "send", "cli-life", "hi"))
    assert line.startswith("caxton: FAILED_PRECONDITION: ")
    assert "cli-life" in line

    # stopping a stopped agent is refused, not silently accepted
    assert error_line(cli(sup, "stop", "cli-life")).startswith("caxton: FAILED_PRECONDITION: ")

    assert ok(cli(sup, "start", "cli-life")) == "started cli-life v1\n"
    status = status_json(sup, "cli-life")
    assert status["state"] == "running"
    assert status["version"] == 1
    assert status["pid"] in sup.worker_pids()
    assert status["pid"] != first_pid
    assert cli(sup, "send", "cli-life", "back again").stdout == b"back again"

    assert ok(cli(sup, "remove", "cli-life")) == "removed cli-life\n"
    line = error_line(cli(sup, "status", "cli-life"))
    assert line == "caxton: NOT_FOUND: no agent named 'cli-life'"
    agents = json.loads(ok(cli(sup, "list", "--json")))
    assert "cli-life" not in [a["name"] for a in agents]
    assert error_line(cli(sup, "remove", "cli-life")).startswith("caxton: NOT_FOUND: ")


def test_stop_with_timeout(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-stop-timeout", ECHO))
    assert ok(cli(sup, "stop", "cli-stop-timeout", "--timeout", "1.5")) == "stopped cli-stop-timeout\n"
    assert status_json(sup, "cli-stop-timeout")["state"] == "stopped"


# ---------------------------------------------------------------- limits


def test_deploy_limits_are_applied_exactly(shared_supervisor):
    sup = shared_supervisor
    result = cli(
        sup, "deploy", "cli-limits", ECHO, "--memory", "2MiB", "--fuel", "12345",
        "--timeout-ms", "777", "--max-message-bytes", "4KiB", "--json",
    )
    deployed = json.loads(ok(result))
    expected = {"memory_bytes": 2 * 1024 * 1024, "fuel": 12345, "timeout_ms": 777, "max_message_bytes": 4096}
    assert deployed["limits"] == expected
    assert (deployed["name"], deployed["state"], deployed["version"]) == ("cli-limits", "running", 1)
    assert status_json(sup, "cli-limits")["limits"] == expected


def test_deploy_decimal_size_units(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-limits-dec", ECHO, "--memory", "3MB", "--max-message-bytes", "2000"))
    limits = status_json(sup, "cli-limits-dec")["limits"]
    assert (limits["memory_bytes"], limits["max_message_bytes"]) == (3_000_000, 2000)


def test_max_message_bytes_enforced_through_cli(shared_supervisor, tmp_path):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-small-msg", ECHO, "--max-message-bytes", "4KiB"))
    fits = tmp_path / "fits.bin"
    fits.write_bytes(b"a" * 4096)
    assert cli(sup, "send", "cli-small-msg", "--file", str(fits)).stdout == b"a" * 4096
    too_big = tmp_path / "too_big.bin"
    too_big.write_bytes(b"b" * 4097)
    line = error_line(cli(sup, "send", "cli-small-msg", "--file", str(too_big)))
    assert line.startswith("caxton: RESOURCE_EXHAUSTED: ")
    assert "4096" in line


def test_bad_size_is_a_one_line_error(shared_supervisor):
    sup = shared_supervisor
    line = error_line(cli(sup, "deploy", "cli-bad-size", ECHO, "--memory", "2XB"))
    assert line == "caxton: not a size: '2XB' (examples: 4096, 10MB, 64MiB)"
    assert error_line(cli(sup, "status", "cli-bad-size")).startswith("caxton: NOT_FOUND: ")


# ---------------------------------------------------------------- validation


def test_validate_good_module(shared_supervisor):
    sup = shared_supervisor
    out = ok(cli(sup, "validate", ECHO))
    assert out.count("\n") == 1
    assert out.startswith("valid (policy default, sha256 ")


def test_validate_missing_export(shared_supervisor):
    sup = shared_supervisor
    result = cli(sup, "validate", str(AGENTS / "no_handle.wat"))
    assert result.returncode == 1
    assert result.stderr == ""
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("invalid (policy default, sha256 ")
    assert "error: abi.missing-export: required export 'caxton_handle' is missing" in lines[1:]


def test_validate_json_findings(shared_supervisor):
    sup = shared_supervisor
    result = cli(sup, "validate", str(AGENTS / "no_handle.wat"), "--json")
    assert result.returncode == 1
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["policy"] == "default"
    assert len(report["module_sha256"]) == 64
    rules = [f["rule"] for f in report["findings"]]
    assert "abi.missing-export" in rules
    finding = report["findings"][rules.index("abi.missing-export")]
    assert finding["severity"] == "SEVERITY_ERROR"
    assert "caxton_handle" in finding["message"]

    good = json.loads(ok(cli(sup, "validate", ECHO, "--json")))
    assert good["valid"] is True
    assert good["policy"] == "default"


def test_validate_json_prints_valid_false(shared_supervisor):
    sup = shared_supervisor
    result = cli(sup, "validate", str(AGENTS / "no_handle.wat"), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False


def test_validate_missing_file(shared_supervisor, tmp_path):
    missing = tmp_path / "nope.wat"
    line = error_line(cli(shared_supervisor, "validate", str(missing)))
    assert line == f"caxton: cannot read {missing}: No such file or directory"


def test_deploy_rejected_module_names_rule(shared_supervisor):
    sup = shared_supervisor
    result = cli(sup, "deploy", "cli-bad-import", str(AGENTS / "bad_import.wat"))
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("caxton: INVALID_ARGUMENT: ")
    assert "abi.unknown-import" in lines[0]
    # the validation report follows, one finding per line
    assert lines[1:] == [line for line in lines[1:] if line.startswith("error: abi.unknown-import: ")]
    assert any("env.abort" in line for line in lines[1:])
    assert any("wasi_snapshot_preview1.fd_write" in line for line in lines[1:])
    assert error_line(cli(sup, "status", "cli-bad-import")).startswith("caxton: NOT_FOUND: ")


# ---------------------------------------------------------------- errors


def test_bad_name_is_invalid_argument(shared_supervisor):
    line = error_line(cli(shared_supervisor, "deploy", "Bad_Name", ECHO))
    assert line.startswith("caxton: INVALID_ARGUMENT: ")
    assert "Bad_Name" in line


def test_unknown_agent_is_not_found(shared_supervisor):
    line = error_line(cli(shared_supervisor, "send", "nobody", "x"))
    assert line == "caxton: NOT_FOUND: no agent named 'nobody'"


def test_missing_module_file(shared_supervisor, tmp_path):
    missing = tmp_path / "missing.wat"
    line = error_line(cli(shared_supervisor, "deploy", "cli-missing-module", str(missing)))
    assert line == f"caxton: cannot read {missing}: No such file or directory"
    assert error_line(cli(shared_supervisor, "status", "cli-missing-module")).startswith("caxton: NOT_FOUND: ")


def test_missing_send_file(shared_supervisor, tmp_path):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-missing-send", ECHO))
    missing = tmp_path / "missing.bin"
    line = error_line(cli(sup, "send", "cli-missing-send", "--file", str(missing)))
    assert line == f"caxton: cannot read {missing}: No such file or directory"
    assert status_json(sup, "cli-missing-send")["messages"] == 0


def test_usage_error_exits_2(shared_supervisor):
    result = cli(shared_supervisor, "deploy", "cli-usage")
    assert result.returncode == 2
    assert result.stdout == b""
    assert "usage: caxton" in result.stderr


@pytest.mark.parametrize("args", [["list"], ["status", "cli-nowhere"], ["send", "cli-nowhere", "x"]])
def test_nothing_listening_fails_fast(args):
    started = time.monotonic()
    result = cli("127.0.0.1:1", *args, rpc_timeout=2, timeout=30)
    elapsed = time.monotonic() - started
    line = error_line(result)
    assert line.startswith(("caxton: UNAVAILABLE: ", "caxton: DEADLINE_EXCEEDED: "))
    assert elapsed < 15, f"took {elapsed:.1f}s with --rpc-timeout 2"


def test_reload_shows_progress_and_rollback_goes_back(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-swap", str(AGENTS / "version1.wat")))
    result = cli(sup, "reload", "cli-swap", str(AGENTS / "version2.wat"), "--label", "two", "--warmup", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("reloaded cli-swap v1 -> v2 (switched after ")
    progress = [line.split()[3].rstrip(":") for line in result.stderr.splitlines()]
    assert progress == ["reload-started", "reload-ready", "reload-switched", "reload-drained"]
    assert ok(cli(sup, "send", "cli-swap", "x")) == "v2:x"

    failed = cli(sup, "reload", "cli-swap", str(AGENTS / "init_fails.wat"))
    assert failed.returncode == 1
    assert "reload-failed" in failed.stderr
    assert "caxton: FAILED_PRECONDITION: reload of 'cli-swap' to v3 failed, v2 keeps serving" in failed.stderr
    assert ok(cli(sup, "send", "cli-swap", "x")) == "v2:x"

    back = cli(sup, "rollback", "cli-swap", "--to", "1")
    assert back.returncode == 0, back.stderr
    assert back.stdout.decode().startswith("rolled back cli-swap v2 -> v1")
    assert ok(cli(sup, "send", "cli-swap", "x")) == "v1:x"
    status = json.loads(ok(cli(sup, "status", "cli-swap", "--json")))
    assert status["version"] == 1
    assert [h["version"] for h in status["history"]] == [1, 2, 3]
    assert [v["version"] for v in status["versions"]] == [1]


def test_rollback_to_a_missing_version_is_not_found(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-norollback", ECHO))
    assert error_line(cli(sup, "rollback", "cli-norollback", "--to", "9")).startswith("caxton: NOT_FOUND:")
    assert error_line(cli(sup, "rollback", "cli-norollback")).startswith("caxton: FAILED_PRECONDITION:")


def test_events_follows_the_stream(shared_supervisor):
    sup = shared_supervisor
    follower = subprocess.Popen(
        [*cli_argv(sup), "events", "cli-evented"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, text=True,
    )
    try:
        # Deploy until the follower has seen it (it may subscribe after the
        # first deploy); each round removes the agent again.
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True)
        reader.start()

        def seen() -> bool:
            if any(" deployed" in line for line in lines):
                return True
            cli(sup, "deploy", "cli-evented", ECHO)
            cli(sup, "remove", "cli-evented")
            return any(" deployed" in line for line in lines)

        wait_until(seen, 30, "the follower to print a deployed event")
        assert all(" cli-evented " in line for line in lines)
    finally:
        follower.terminate()
        follower.wait(10)


def test_rollback_skips_a_version_that_never_served(shared_supervisor):
    """v1 works; v2's caxton_init fails, so v1 keeps serving; v3 works. A
    plain `caxton rollback` must go to v1, the last version that took all
    traffic before v3, not to v2, which never did."""
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-neverstable", str(AGENTS / "version1.wat")))
    failed = cli(sup, "reload", "cli-neverstable", str(AGENTS / "init_fails.wat"))
    assert failed.returncode == 1
    good = cli(sup, "reload", "cli-neverstable", str(AGENTS / "version2.wat"))
    assert good.returncode == 0, good.stderr
    assert ok(cli(sup, "send", "cli-neverstable", "x")) == "v2:x"

    back = cli(sup, "rollback", "cli-neverstable")
    assert back.returncode == 0, back.stderr
    assert back.stdout.decode().startswith("rolled back cli-neverstable v3 -> v1")
    assert ok(cli(sup, "send", "cli-neverstable", "x")) == "v1:x"


# ---------------------------------------------------------------- tokens


def _env_without_tokens() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, TOKEN_FILE_ENV)}


def _run_bare(address: str, *args: str, cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m caxton` with no token option, from `cwd`, with `env`."""
    result = subprocess.run([sys.executable, "-m", "caxton", "--address", address, *args], capture_output=True,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=env, timeout=CLI_TIMEOUT)
    result.stderr = result.stderr.decode(errors="replace")
    return result


def test_the_readme_flow_needs_no_token_option(tmp_path):
    """`caxton-supervisor` in a directory keeps its state in ./.caxton; the
    CLI run from the same directory finds the admin token there."""
    sup = SupervisorProcess(tmp_path / ".caxton").start()
    try:
        assert json.loads(ok(_run_bare(sup.address, "list", "--json", cwd=tmp_path, env=_env_without_tokens()))) == []
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        line = error_line(_run_bare(sup.address, "list", cwd=elsewhere, env=_env_without_tokens()))
        assert line == ("caxton: UNAUTHENTICATED: missing token: send 'authorization: Bearer <token>' "
                        "(the caxton CLI takes --token or --token-file)")
        # $CAXTON_TOKEN_FILE, then $CAXTON_TOKEN; an explicit option comes first
        env = _env_without_tokens()
        assert ok(_run_bare(sup.address, "list", cwd=elsewhere, env={**env, TOKEN_FILE_ENV: str(sup.token_file)})) == ""
        assert ok(_run_bare(sup.address, "list", cwd=elsewhere, env={**env, TOKEN_ENV: sup.token})) == ""
        line = error_line(_run_bare(sup.address, "--token", "wrong", "list", cwd=tmp_path,
                                    env={**env, TOKEN_ENV: sup.token}))
        assert line == "caxton: UNAUTHENTICATED: unknown token"
    finally:
        sup.stop()


def test_an_unreadable_token_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "missing.token"
    line = error_line(cli("127.0.0.1:1", "--token-file", str(missing), "list"))
    assert line == f"caxton: cannot read token file {missing}: No such file or directory"


@pytest.fixture
def token_places(tmp_path, monkeypatch):
    """A working directory and the two default token files, all empty."""
    monkeypatch.chdir(tmp_path)
    system = tmp_path / "var-lib-caxton" / "admin.token"
    monkeypatch.setattr(connection, "DEFAULT_TOKEN_FILES", (".caxton/admin.token", str(system)))
    (tmp_path / ".caxton").mkdir()
    system.parent.mkdir()
    return tmp_path / ".caxton" / "admin.token", system


def test_the_token_is_found_in_the_documented_order(tmp_path, token_places):
    local, system = token_places
    given = tmp_path / "given.token"
    named = tmp_path / "named.token"
    for path in (local, system, given, named):
        path.write_text(f"from-{path.stem}-{path.parent.name}\n")
    env = {TOKEN_ENV: "from-env", TOKEN_FILE_ENV: str(named)}
    find = connection.find_token
    assert find("explicit", given, env) == "explicit"
    assert find(None, given, env) == f"from-given-{tmp_path.name}"
    assert find(None, None, env) == "from-env"
    assert find(None, None, {TOKEN_FILE_ENV: str(named)}) == f"from-named-{tmp_path.name}"
    assert find(None, None, {}) == "from-admin-.caxton"
    local.unlink()
    assert find(None, None, {}) == "from-admin-var-lib-caxton"
    system.unlink()
    assert find(None, None, {}) is None


def test_a_named_token_file_must_be_readable_and_not_empty(tmp_path, token_places):
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(connection.ConnectionSetupError, match="is empty"):
        connection.find_token(None, empty, {})
    with pytest.raises(connection.ConnectionSetupError, match="cannot read token file"):
        connection.find_token(None, None, {TOKEN_FILE_ENV: str(tmp_path / "nope")})
    # an empty default file is passed over
    token_places[0].write_text("")
    assert connection.find_token(None, None, {}) is None


# ---------------------------------------------------------------- conventions


def _plain_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "caxton", *args]


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                            timeout=CLI_TIMEOUT)
    result.stderr = result.stderr.decode(errors="replace")
    return result


def test_connection_options_after_the_command_and_address_from_env(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-opts-after", ECHO))
    after = _run(_plain_argv("status", "cli-opts-after", "--address", sup.address,
                             "--token-file", str(sup.token_file), "--json"))
    assert json.loads(ok(after))["name"] == "cli-opts-after"
    # a value after the command wins over one before it
    both = _run(_plain_argv("--address", "127.0.0.1:1", "status", "cli-opts-after", "--address", sup.address,
                            "--token-file", str(sup.token_file)))
    assert ok(both).split()[0] == "cli-opts-after"
    env = {**os.environ, "CAXTON_ADDRESS": sup.address}
    from_env = _run(_plain_argv("--token-file", str(sup.token_file), "status", "cli-opts-after"), env=env)
    assert ok(from_env).split()[0] == "cli-opts-after"
    # --address beats the environment
    env = {**os.environ, "CAXTON_ADDRESS": "127.0.0.1:1"}
    given = _run(_plain_argv("status", "cli-opts-after", "--address", sup.address,
                             "--token-file", str(sup.token_file)), env=env)
    assert ok(given).split()[0] == "cli-opts-after"
    env_only = _run(_plain_argv("--rpc-timeout", "2", "--token-file", str(sup.token_file), "list"), env=env)
    assert error_line(env_only).startswith(("caxton: UNAVAILABLE: ", "caxton: DEADLINE_EXCEEDED: "))


def _json_lines(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines and text.endswith("\n")
    return [json.loads(line) for line in lines]


def test_json_on_every_command(shared_supervisor):
    sup = shared_supervisor
    [deployed] = _json_lines(ok(cli(sup, "deploy", "cli-json", str(AGENTS / "version1.wat"), "--json")))
    assert (deployed["name"], deployed["version"]) == ("cli-json", 1)

    [sent] = _json_lines(ok(cli(sup, "send", "cli-json", "hi", "--json")))
    assert sent["has_reply"] is True
    assert base64.b64decode(sent["reply"]["content"]) == b"v1:hi"
    assert sent["reply"]["sender"] == "cli-json"
    assert sent["reply"]["receiver"] == "cli"

    reload = cli(sup, "reload", "cli-json", str(AGENTS / "version2.wat"), "--json")
    [reloaded] = _json_lines(reload.stdout.decode())
    assert reload.returncode == 0, reload.stderr
    assert (reloaded["from_version"], reloaded["to_version"]) == (1, 2)
    assert reloaded["status"]["version"] == 2
    progress = _json_lines(reload.stderr)
    assert [e["kind"] for e in progress] == ["reload-started", "reload-ready", "reload-switched", "reload-drained"]
    assert all(e["agent"] == "cli-json" for e in progress)

    back = cli(sup, "rollback", "cli-json", "--json")
    assert back.returncode == 0, back.stderr
    [rolled] = _json_lines(back.stdout.decode())
    assert (rolled["from_version"], rolled["to_version"]) == (2, 1)
    assert _json_lines(back.stderr)[-1]["kind"] == "reload-drained"

    [stopped] = _json_lines(ok(cli(sup, "stop", "cli-json", "--json")))
    assert (stopped["name"], stopped["state"]) == ("cli-json", "stopped")
    [started] = _json_lines(ok(cli(sup, "start", "cli-json", "--json")))
    assert (started["name"], started["state"]) == ("cli-json", "running")
    assert _json_lines(ok(cli(sup, "remove", "cli-json", "--json"))) == [{"name": "cli-json", "removed": True}]


def test_send_json_without_a_reply(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-json-noreply", str(AGENTS / "noreply.wat")))
    [sent] = _json_lines(ok(cli(sup, "send", "cli-json-noreply", "x", "--json")))
    assert sent["has_reply"] is False


def test_send_adds_a_newline_only_on_a_terminal(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-tty", ECHO))
    assert cli(sup, "send", "cli-tty", "no newline").stdout == b"no newline"
    leader, follower = pty.openpty()
    try:
        # raw mode: the terminal must not turn "\n" into "\r\n"
        tty.setraw(follower)
        process = subprocess.run([*cli_argv(sup), "send", "cli-tty", "on a tty"], stdout=follower,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=CLI_TIMEOUT)
        assert process.returncode == 0, process.stderr
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert output == b"on a tty\n"
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_send_envelope_options_reach_the_agent(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-info", str(AGENTS / "info.wat")))
    reply = cli(sup, "send", "cli-info", "x", "--performative", "accept-proposal", "--conversation", "conv-7",
                "--reply-with", "rw-1", "--sender", "alice")
    envelope = json.loads(ok(reply))
    assert {k: envelope[k] for k in ("sender", "performative", "conversation_id", "reply_with")} == {
        "sender": "alice", "performative": "accept-proposal", "conversation_id": "conv-7", "reply_with": "rw-1",
    }
    assert json.loads(ok(cli(sup, "send", "cli-info", "x", "--performative", "INFORM")))["performative"] == "inform"
    default = json.loads(ok(cli(sup, "send", "cli-info", "x")))
    assert (default["sender"], default["performative"]) == ("cli", "request")

    bad = cli(sup, "send", "cli-info", "x", "--performative", "shout")
    assert bad.returncode == 2
    assert "not a performative: 'shout'" in bad.stderr
    assert json.loads(ok(cli(sup, "status", "cli-info", "--json")))["messages"] == 3


def test_bad_duration_is_a_usage_error(shared_supervisor):
    result = cli(shared_supervisor, "logs", "anyone", "--since", "5 minutes")
    assert result.returncode == 2
    assert "not a duration: '5 minutes'" in result.stderr


def test_parse_duration():
    assert [parse_duration(t) for t in ("30s", "5m", "2h", "1d", "90", "1.5m")] == [30, 300, 7200, 86400, 90, 90]
    for bad in ("", "m", "-5m", "5w", "5 m5"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_escape_makes_agent_text_one_safe_line():
    assert escape("a\nb\x1b[31mred\r\t\\ \x9b é") == "a\\nb\\x1b[31mred\\r\\t\\\\ \\u009b é"


# ---------------------------------------------------------------- logs and events --since


def _follow(argv: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """A following CLI process and the lines it prints so far (read by a thread)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               cwd=ROOT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return process, lines


def _end(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


def test_logs_prints_escaped_lines_and_follows(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-logs", str(AGENTS / "logger.wat")))
    assert ok(cli(sup, "send", "cli-logs", "first\n\x1b[31mline")) == "logged"
    lines = ok(cli(sup, "logs", "cli-logs")).splitlines()
    assert [line.split()[1:3] for line in lines] == [["info", "v1"], ["info", "v1"]]
    assert lines[0].endswith(" v1 init")
    assert lines[1].endswith(" v1 first\\n\\x1b[31mline")

    records = _json_lines(ok(cli(sup, "logs", "cli-logs", "--json")))
    assert [(r["agent"], r["version"], r["level"], r["text"]) for r in records] == [
        ("cli-logs", 1, "info", "init"), ("cli-logs", 1, "info", "first\n\x1b[31mline")]
    assert all(abs(r["at"] - time.time()) < 300 for r in records)

    follower, followed = _follow([*cli_argv(sup), "logs", "cli-logs", "-f", "--json"])
    try:
        wait_until(lambda: len(followed) >= 2, 30, "the follower to print the kept lines")
        assert ok(cli(sup, "send", "cli-logs", "later")) == "logged"
        wait_until(lambda: len(followed) >= 3, 30, "the follower to print the new line")
        assert json.loads(followed[2])["text"] == "later"
        assert follower.poll() is None
    finally:
        _end(follower)


def test_logs_since_leaves_out_older_lines(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-logs-since", str(AGENTS / "logger.wat")))
    assert ok(cli(sup, "send", "cli-logs-since", "kept")) == "logged"
    texts = [r["text"] for r in _json_lines(ok(cli(sup, "logs", "cli-logs-since", "--since", "1h", "--json")))]
    assert texts == ["init", "kept"]
    # Lines older than 1 s are left out; poll until the two lines have aged.
    wait_until(lambda: ok(cli(sup, "logs", "cli-logs-since", "--since", "1s")) == "", 30, "old lines to be left out")
    assert error_line(cli(sup, "logs", "cli-nobody")).startswith("caxton: NOT_FOUND: ")


def test_events_since_replays_recent_events(shared_supervisor):
    sup = shared_supervisor
    ok(cli(sup, "deploy", "cli-replayed", ECHO))
    ok(cli(sup, "stop", "cli-replayed"))
    follower, lines = _follow([*cli_argv(sup), "events", "cli-replayed", "--since", "1h", "--json"])
    try:
        wait_until(lambda: {"deployed", "stopped"} <= {json.loads(line)["kind"] for line in lines}, 30,
                   "the follower to replay the deploy and the stop")
        kinds = [json.loads(line)["kind"] for line in lines]
        assert kinds.index("deployed") < kinds.index("stopped")
        assert "watching" not in kinds
        assert all(json.loads(line)["agent"] == "cli-replayed" for line in lines)
        ok(cli(sup, "start", "cli-replayed"))
        wait_until(lambda: "started" in [json.loads(line)["kind"] for line in lines], 30, "the follower to follow")
    finally:
        _end(follower)
    # without --since nothing from before is printed
    follower, lines = _follow([*cli_argv(sup), "events", "cli-replayed"])
    try:
        # The follower subscribes in the background: stop and start the
        # agent until it has shown one of those events (none is replayed).
        commands = itertools.cycle(["stop", "start"])
        wait_until(lambda: ok(cli(sup, next(commands), "cli-replayed")) is not None
                   and any(" stopped" in line or " started" in line for line in lines),
                   30, "the follower to show a new event", interval=0.2)
        assert not any(" deployed" in line for line in lines)
    finally:
        _end(follower)


# ---------------------------------------------------------------- completion


COMMANDS = ["deploy", "reload", "rollback", "events", "logs", "send", "status", "list", "stop", "start", "remove",
            "validate", "completion"]


def _completion(shell: str) -> str:
    result = _run(_plain_argv("completion", shell))
    assert result.returncode == 0 and result.stderr == ""
    return result.stdout.decode()


def test_completion_scripts_name_every_command():
    for shell in ("bash", "zsh"):
        text = _completion(shell)
        for command in COMMANDS:
            assert f"{command})" in text or f"|{command}" in text, (shell, command)
        assert "--performative" in text and "--follow" in text and "--address" in text
    bash_script = _completion("bash")
    check = subprocess.run(["bash", "-n"], input=bash_script.encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_completion_scripts_offer_every_option_of_the_parser():
    """Walks the parser itself: each command's every option string is in that
    command's case of both scripts (and the top level's before any command)."""
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) <= set(subparsers.choices)
    scopes = {"": parser, **subparsers.choices}
    # A case is one line in bash; in zsh, the options and then the values.
    for shell, case, span in (("bash", "        {name}) ", 1), ("zsh", "        ({name}) ", 2)):
        lines = _completion(shell).splitlines()
        for name, sub in scopes.items():
            start = next(i for i, line in enumerate(lines) if line.startswith(case.format(name=name or '""')))
            text = "\n".join(lines[start:start + span])
            for action in sub._actions:
                for option in action.option_strings:
                    quoted = f"'{option}:" if shell == "zsh" else option
                    assert quoted in text, (shell, name or "top level", option)


ZSH = shutil.which("zsh")


def _zsh_complete(tmp_path, line: str, *, autoload: bool) -> set[str]:
    """What zsh's completion system offers for `line` (TAB at its end), in a
    real interactive zsh on a pseudo-terminal with compinit, the script
    sourced (or autoloaded from $fpath as `_caxton`), and `compadd` wrapped to
    print each match it is given (after zsh's own matching)."""
    functions = tmp_path / "functions"
    functions.mkdir(exist_ok=True)
    (functions / "_caxton").write_text(_completion("zsh"))
    setup = tmp_path / "setup.zsh"
    setup.write_text(
        (f"fpath=({functions} $fpath)\n" if autoload else "")
        + f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump\n"
        + ("" if autoload else f"source {functions}/_caxton\n")
        # The matches compsys adds, after matching: -O/-A/-D calls only ask for lists.
        + "compadd() {\n"
        + "    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd \"$@\"; return; fi\n"
        + "    local -a hits\n"
        + "    builtin compadd -A hits \"$@\"\n"
        + "    print -rl -- '' ${(@)hits/#/MATCH:}\n"
        + "}\n"
        # Keys typed before zle reads the line are lost to the completion:
        # wait for this before typing.
        + "zle-line-init() { print -rn -- LINE-READY-$((6 * 7)) }\n"
        + "zle -N zle-line-init\n")
    leader, follower = pty.openpty()
    shell = subprocess.Popen([ZSH, "-f", "-i"], stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path,
                             start_new_session=True,
                             env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "dumb", "PS1": "> "})
    os.close(follower)
    output = b""

    def read_until(marker: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + 30
        while marker not in output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"zsh did not print {marker!r}: {output.decode(errors='replace')}"
            if select.select([leader], [], [], remaining)[0]:
                output += os.read(leader, 65536)

    try:
        os.write(leader, f"source {setup}\n".encode())
        read_until(b"LINE-READY-42")
        # TAB, then Ctrl-U (kill the line) and a command printing a marker:
        # zle finishes one widget before it reads the next key.
        os.write(leader, line.encode() + b"\t\x15print -r -- DONE-$((6 * 7))\n")
        read_until(b"DONE-42")
        os.write(leader, b"exit\n")
        assert shell.wait(30) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        os.close(leader)
    completed = output.split(b"LINE-READY-42", 1)[1].split(b"DONE-42", 1)[0].decode(errors="replace")
    return {line.strip()[len("MATCH:"):] for line in completed.splitlines() if line.strip().startswith("MATCH:")}


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed")
def test_zsh_completion_script_parses():
    check = subprocess.run([ZSH, "-n"], input=_completion("zsh").encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed")
@pytest.mark.parametrize("autoload", [False, True], ids=["sourced", "fpath"])
@pytest.mark.parametrize(("line", "expected"), [
    ("caxton lo", {"logs"}),
    ("caxton --address x st", {"status", "stop", "start"}),
    ("caxton logs --f", {"--follow"}),
    ("caxton send a --per", {"--performative"}),
    ("caxton --addr", {"--address"}),
    ("caxton --address st", {"state.toml"}),  # an option's value: a file name, never a command
    ("caxton deploy ticker st", {"state.toml"}),
])
def test_zsh_completion_offers_the_right_words(tmp_path, line, expected, autoload):
    (tmp_path / "state.toml").write_text("")
    assert _zsh_complete(tmp_path, line, autoload=autoload) == expected


@pytest.mark.parametrize(("words", "expected"), [
    (["caxton", "lo"], {"logs"}),
    (["caxton", "--address", "x", "st"], {"status", "stop", "start"}),
    (["caxton", "logs", "--f"], {"--follow"}),
    (["caxton", "send", "a", "--per"], {"--performative"}),
    (["caxton", "--addr"], {"--address"}),
    (["caxton", "--address", "st"], set()),  # an option's value: file names (complete -o default), not commands
])
def test_bash_completion_offers_the_right_words(words, expected):
    """Runs the generated function in bash as `complete` would."""
    array = " ".join(shlex.quote(word) for word in words)
    program = (f"{_completion('bash')}\nCOMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _caxton\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == expected
