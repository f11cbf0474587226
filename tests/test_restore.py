"""Restore never bricks the supervisor: a real state directory, damaged by hand.

Agents are deployed, the supervisor is stopped, and rows and files of its
state are corrupted the way a disk, an editor or an older version could:
the supervisor must start again, the damaged agents come back FAILED with a
reason that names the problem (and no host path), every other agent serves,
and a corrupt compiled module is found and compiled again. The worker's half
of that (the compiled-module cache and the module's digest) is tested
directly at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
from pathlib import Path

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2
from caxton.worker.sandbox import LoadError, SandboxLimits, engine_config, engine_fingerprint, load_module

from .harness import module, wait_until

# Something that looks like a host path: a slash, a word, a slash.
HOST_PATH = re.compile(r"/[\w.-]+/")


def _sql(state: Path, statement: str, *args) -> None:
    db = sqlite3.connect(state / "caxton.db")
    try:
        with db:
            assert db.execute(statement, args).rowcount == 1, statement
    finally:
        db.close()


def _listed(sup) -> dict[str, caxton_pb2.AgentStatus]:
    return {a.name: a for a in sup.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30).agents}


def _cached(state: Path, digest: str) -> Path:
    (path,) = (state / "cache").glob(f"{digest}-*.cwasm")
    return path


def test_a_damaged_state_directory_still_starts_and_the_rest_serves(supervisor, tmp_path):
    state = tmp_path / "damaged"
    first = supervisor(state_dir=state)
    digests = {}
    for name, wat in [("intact", "echo"), ("limits-json", "echo"), ("limits-value", "echo"),
                      ("restart-json", "echo"), ("replicas-text", "echo"), ("replicas-negative", "echo"),
                      ("no-module", "uppercase"), ("bad-cache", "counter"), ("old-version", "version1"),
                      ("asleep", "logger")]:
        digests[name] = first.deploy(name, wat).module_sha256
    first.lifecycle.HotReloadAgent(caxton_pb2.HotReloadAgentRequest(name="old-version", module=module("version2")),
                                   timeout=60)
    first.lifecycle.StopAgent(caxton_pb2.StopAgentRequest(name="asleep"), timeout=30)
    assert first.stop() == 0

    # Everything the supervisor and its workers wrote is owner-only.
    written = [state / "caxton.db", *(state / "modules").iterdir(), *(state / "cache").iterdir()]
    assert len(written) > 5
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is readable by others"

    _sql(state, "UPDATE versions SET limits = ? WHERE agent = 'limits-json'", '{"memory_bytes": 67')
    _sql(state, "UPDATE versions SET limits = ? WHERE agent = 'limits-value'", json.dumps({"memory_bytes": 2**64 - 1}))
    _sql(state, "UPDATE agents SET restart = ? WHERE name = 'restart-json'", "not json")
    _sql(state, "UPDATE agents SET replicas = ? WHERE name = 'replicas-text'", "many")
    _sql(state, "UPDATE agents SET replicas = ? WHERE name = 'replicas-negative'", -3)
    # An old version's record damaged: history loses it, the agent does not.
    _sql(state, "UPDATE versions SET limits = ? WHERE agent = 'old-version' AND version = 1", "[]")
    (state / "modules" / f"{digests['no-module']}.wasm").unlink()
    cwasm = _cached(state, digests["bad-cache"])
    compiled = bytearray(cwasm.read_bytes())
    middle = len(compiled) // 2
    compiled[middle:middle + 64] = b"\xcc" * 64
    cwasm.write_bytes(compiled)

    second = supervisor(state_dir=state)
    listed = _listed(second)  # one call for everyone: no damaged row may fail it
    assert set(listed) == set(digests)
    damaged = {
        "limits-json": "versions.limits of limits-json v1 is not valid JSON",
        "limits-value": "limits.memory_bytes is 18446744073709551615, outside what can run",
        "restart-json": "agents.restart of restart-json is not valid JSON",
        "replicas-text": "agents.replicas of replicas-text is 'many', not an integer",
        "replicas-negative": "replicas is -3, outside what can run",
        "no-module": f"module {digests['no-module'][:12]} is missing",
    }
    for name, reason in damaged.items():
        status = listed[name]
        assert status.state == caxton_pb2.AGENT_STATE_FAILED, (name, status.last_error)
        assert status.last_error.startswith("cannot be restored: ") and reason in status.last_error, status.last_error
        assert not HOST_PATH.search(status.last_error), status.last_error
        error = pytest.raises(grpc.RpcError, second.send, name, b"x").value
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reason in error.details()
        error = pytest.raises(grpc.RpcError, second.lifecycle.StartAgent,
                              caxton_pb2.StartAgentRequest(name=name), timeout=30).value
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "remove it" in error.details()

    assert second.send("intact", b"alive").reply.content == b"alive"
    assert second.send("old-version", b"x").reply.content.startswith(b"v2:")
    assert [h.version for h in listed["old-version"].history] == [2]
    assert listed["asleep"].state == caxton_pb2.AGENT_STATE_STOPPED
    # The corrupt compiled module was found and compiled again.
    assert second.send("bad-cache", b"x").reply.content == b"1"
    assert "does not match its recorded digest" in second.log_text()
    # Said by the worker's own logging, under its own pid (a forked worker
    # inherits the fork server's handler).
    said = re.search(r"worker\[(\d+)\] WARNING compiled module \S+ does not match", second.log_text())
    assert said and int(said[1]) in second.worker_pids(), second.log_text()[-2000:]
    fresh = _cached(state, digests["bad-cache"]).read_bytes()
    assert fresh != bytes(compiled)
    recorded = Path(f"{_cached(state, digests['bad-cache'])}.sha256").read_text().strip()
    assert hashlib.sha256(fresh).hexdigest() == recorded

    # A damaged agent can be removed and deployed again; another start is clean.
    for name in damaged:
        second.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=30)
    second.deploy("no-module", "uppercase")
    assert second.send("no-module", b"abc").reply.content == b"ABC"
    assert second.stop() == 0
    third = supervisor(state_dir=state)
    listed = _listed(third)
    assert set(listed) == set(digests) - set(damaged) | {"no-module"}
    assert all(s.state in (caxton_pb2.AGENT_STATE_RUNNING, caxton_pb2.AGENT_STATE_STOPPED) for s in listed.values())
    wait_until(lambda: third.send("no-module", b"q").reply.content == b"Q", 10, "the redeployed agent")


# ------------------------------------------------------------ the worker's side


def _echo(tmp_path: Path) -> tuple[Path, str]:
    wasm = bytes(wasmtime.wat2wasm(module("echo").decode()))
    digest = hashlib.sha256(wasm).hexdigest()
    path = tmp_path / "modules" / f"{digest}.wasm"
    path.parent.mkdir()
    path.write_bytes(wasm)
    return path, digest


LIMITS = SandboxLimits(memory_bytes=1 << 20, fuel=1_000_000, timeout_ms=1000)


def _load(path: Path, cache: Path, digest: str) -> tuple[wasmtime.Module, bool]:
    engine = wasmtime.Engine(engine_config(LIMITS))
    return load_module(engine, str(path), str(cache), engine_fingerprint(LIMITS), digest)


def test_a_compiled_module_is_used_only_while_it_matches_its_recorded_digest(tmp_path, caplog):
    path, digest = _echo(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert _load(path, cache, digest)[1] is False
    (entry,) = cache.glob("*.cwasm")
    sidecar = Path(f"{entry}.sha256")
    for written in (entry, sidecar):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert sidecar.read_text() == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert _load(path, cache, digest)[1] is True

    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    entry.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="caxton.worker.sandbox"):
        assert _load(path, cache, digest)[1] is False
    assert "does not match its recorded digest" in caplog.text
    assert entry.read_bytes() != damaged
    assert _load(path, cache, digest)[1] is True

    sidecar.unlink()  # an entry without a recorded digest is not trusted either
    assert _load(path, cache, digest)[1] is False
    assert _load(path, cache, digest)[1] is True


def test_a_module_file_that_does_not_match_its_digest_is_refused(tmp_path):
    path, digest = _echo(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(LoadError, match=f"module file of {digest[:12]} is damaged") as refused:
        _load(path, cache, digest)
    assert not list(cache.iterdir())
    os.unlink(path)
    with pytest.raises(LoadError, match="cannot read the module file: No such file or directory") as missing:
        _load(path, cache, digest)
    for error in (refused.value, missing.value):
        assert str(tmp_path) not in str(error)
