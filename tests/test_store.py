"""Durable state (supervisor/store.py): records in SQLite, modules by digest."""

from __future__ import annotations

import hashlib
import sqlite3
import stat

import pytest

from caxton.supervisor.config import Limits
from caxton.supervisor.restart import RestartSettings
from caxton.supervisor.store import AgentRecord, StateStore, VersionRecord

WASM_A = b"\x00asm\x01\x00\x00\x00" + b"A" * 32
WASM_B = b"\x00asm\x01\x00\x00\x00" + b"B" * 32
LIMITS = Limits(memory_bytes=8 << 20, fuel=12345, timeout_ms=250, max_message_bytes=4096)


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state")
    yield s
    s.close()


def module_files(store: StateStore) -> list[str]:
    return sorted(p.name for p in store.modules_dir.iterdir())


# ------------------------------------------------------------ modules


def test_put_module_is_content_addressed(store):
    digest = store.put_module(WASM_A)
    assert digest == hashlib.sha256(WASM_A).hexdigest()
    assert store.put_module(WASM_A) == digest
    assert module_files(store) == [f"{digest}.wasm"]  # one file, no temporaries left
    assert store.module_path(digest).read_bytes() == WASM_A


def test_different_modules_different_files(store):
    a = store.put_module(WASM_A)
    b = store.put_module(WASM_B)
    assert a != b
    assert module_files(store) == sorted([f"{a}.wasm", f"{b}.wasm"])
    assert store.module_path(b).read_bytes() == WASM_B


def test_module_path_is_under_modules_dir(store):
    digest = store.put_module(WASM_A)
    path = store.module_path(digest)
    assert path.parent == store.modules_dir
    assert path.name == f"{digest}.wasm"


def test_directories_are_private(tmp_path):
    s = StateStore(tmp_path / "deep" / "state")
    try:
        for directory in (s.state_dir, s.modules_dir, s.cache_dir):
            assert directory.is_dir()
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    finally:
        s.close()


# ------------------------------------------------------------ records


def test_empty_store_has_no_agents(store):
    assert store.agents() == []


def test_create_agent_round_trip(store):
    digest = store.put_module(WASM_A)
    created = store.create_agent("echo", "strict", digest, LIMITS, "v1-label")
    assert isinstance(created, VersionRecord)
    assert created.agent == "echo"
    assert created.version == 1
    assert created.label == "v1-label"
    assert created.module_sha256 == digest
    assert created.limits == LIMITS

    (agent,) = store.agents()
    assert agent == AgentRecord(
        name="echo", desired_state="running", current_version=1, policy="strict", created_at=created.deployed_at,
        restart=RestartSettings(),
    )
    assert store.version("echo", 1) == created
    assert isinstance(store.version("echo", 1).limits, Limits)


def test_default_limits_round_trip(store):
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, Limits(), "")
    assert store.version("a", 1).limits == Limits()


def test_agents_sorted_by_name(store):
    digest = store.put_module(WASM_A)
    for name in ("zeta", "alpha", "mid"):
        store.create_agent(name, "default", digest, LIMITS, name)
    assert [a.name for a in store.agents()] == ["alpha", "mid", "zeta"]


def test_unknown_version_raises_key_error(store):
    with pytest.raises(KeyError):
        store.version("nobody", 1)
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    with pytest.raises(KeyError):
        store.version("a", 2)


def test_duplicate_agent_rejected_and_rolled_back(store):
    a = store.put_module(WASM_A)
    b = store.put_module(WASM_B)
    store.create_agent("dup", "default", a, LIMITS, "first")
    with pytest.raises(sqlite3.IntegrityError):
        store.create_agent("dup", "strict", b, Limits(), "second")
    (agent,) = store.agents()
    assert agent.policy == "default"
    assert store.version("dup", 1).label == "first"
    assert store.version("dup", 1).module_sha256 == a
    # the store is still usable after the failed transaction
    store.create_agent("other", "default", b, LIMITS, "")
    assert [x.name for x in store.agents()] == ["dup", "other"]


def test_set_desired_state(store):
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.set_desired_state("a", "stopped")
    assert store.agents()[0].desired_state == "stopped"
    store.set_desired_state("a", "running")
    assert store.agents()[0].desired_state == "running"


def test_set_desired_state_rejects_unknown_state(store):
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    with pytest.raises(sqlite3.IntegrityError):
        store.set_desired_state("a", "paused")
    assert store.agents()[0].desired_state == "running"


# ------------------------------------------------------------ delete and GC


def test_delete_agent_removes_records_and_unused_module(store):
    digest = store.put_module(WASM_A)
    compiled = store.cache_dir / f"{digest}-x86_64.cwasm"
    compiled.write_bytes(b"native")
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("a")
    assert store.agents() == []
    with pytest.raises(KeyError):
        store.version("a", 1)
    assert not store.module_path(digest).exists()
    assert not compiled.exists()
    assert module_files(store) == []


def test_delete_keeps_module_shared_with_another_agent(store):
    digest = store.put_module(WASM_A)
    compiled = store.cache_dir / f"{digest}-x86_64.cwasm"
    compiled.write_bytes(b"native")
    store.create_agent("a", "default", digest, LIMITS, "")
    store.create_agent("b", "default", digest, LIMITS, "")
    store.delete_agent("a")
    assert [x.name for x in store.agents()] == ["b"]
    assert store.module_path(digest).read_bytes() == WASM_A
    assert compiled.exists()
    store.delete_agent("b")
    assert not store.module_path(digest).exists()
    assert not compiled.exists()


def test_delete_only_collects_own_module(store):
    a = store.put_module(WASM_A)
    b = store.put_module(WASM_B)
    other_cache = store.cache_dir / f"{b}-x86_64.cwasm"
    other_cache.write_bytes(b"native")
    store.create_agent("a", "default", a, LIMITS, "")
    store.create_agent("b", "default", b, LIMITS, "")
    store.delete_agent("a")
    assert not store.module_path(a).exists()
    assert store.module_path(b).exists()
    assert other_cache.exists()


def test_delete_unknown_agent_is_harmless(store):
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("nobody")
    assert [x.name for x in store.agents()] == ["a"]
    assert store.module_path(digest).exists()


def test_agent_can_be_recreated_after_delete(store):
    digest = store.put_module(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("a")
    digest = store.put_module(WASM_A)
    store.create_agent("a", "strict", digest, Limits(), "again")
    assert store.version("a", 1).label == "again"
    assert store.module_path(digest).exists()


# ------------------------------------------------------------ durability


def test_reopen_sees_same_records(tmp_path):
    state = tmp_path / "state"
    first = StateStore(state)
    a = first.put_module(WASM_A)
    b = first.put_module(WASM_B)
    first.create_agent("one", "strict", a, LIMITS, "L1")
    first.create_agent("two", "default", b, Limits(), "L2")
    first.set_desired_state("two", "stopped")
    agents_before = first.agents()
    versions_before = [first.version("one", 1), first.version("two", 1)]
    first.close()

    second = StateStore(state)
    try:
        assert second.agents() == agents_before
        assert [second.version("one", 1), second.version("two", 1)] == versions_before
        assert second.agents()[1].desired_state == "stopped"
        assert second.module_path(a).read_bytes() == WASM_A
        # and it can still write
        second.delete_agent("one")
        assert [x.name for x in second.agents()] == ["two"]
        assert not second.module_path(a).exists()
    finally:
        second.close()


def test_restart_settings_round_trip(tmp_path):
    store = StateStore(tmp_path / "state")
    digest = store.put_module(b"\0asm\1\0\0\0")
    settings = RestartSettings(initial_delay_s=0.05, max_failures=2, window_s=10.0)
    store.create_agent("tuned", "default", digest, Limits(), "", settings)
    store.create_agent("plain", "default", digest, Limits(), "")
    store.close()
    records = {r.name: r for r in StateStore(tmp_path / "state").agents()}
    assert records["tuned"].restart == settings
    assert records["plain"].restart == RestartSettings()
