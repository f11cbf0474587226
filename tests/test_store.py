"""Durable state (supervisor/store.py): records in SQLite, modules by digest."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from caxton.supervisor import store as store_module
from caxton.supervisor.config import Limits
from caxton.supervisor.restart import RestartSettings
from caxton.supervisor.store import (
    SCHEMA_VERSION,
    AgentRecord,
    StateDamage,
    StateStore,
    StateVersionError,
    VersionRecord,
)

WASM_A = b"\x00asm\x01\x00\x00\x00" + b"A" * 32
WASM_B = b"\x00asm\x01\x00\x00\x00" + b"B" * 32
LIMITS = Limits(memory_bytes=8 << 20, fuel=12345, timeout_ms=250, max_message_bytes=4096)


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state")
    yield s
    s.close()


def module_files(store: StateStore) -> list[str]:
    return sorted(p.name for p in store.modules.modules_dir.iterdir())


# ------------------------------------------------------------ modules


def test_put_module_is_content_addressed(store):
    digest = store.modules.put(WASM_A)
    assert digest == hashlib.sha256(WASM_A).hexdigest()
    assert store.modules.put(WASM_A) == digest
    assert module_files(store) == [f"{digest}.wasm"]  # one file, no temporaries left
    assert store.modules.path(digest).read_bytes() == WASM_A


def test_different_modules_different_files(store):
    a = store.modules.put(WASM_A)
    b = store.modules.put(WASM_B)
    assert a != b
    assert module_files(store) == sorted([f"{a}.wasm", f"{b}.wasm"])
    assert store.modules.path(b).read_bytes() == WASM_B


def test_module_path_is_under_modules_dir(store):
    digest = store.modules.put(WASM_A)
    path = store.modules.path(digest)
    assert path.parent == store.modules.modules_dir
    assert path.name == f"{digest}.wasm"


def test_directories_are_private(tmp_path):
    s = StateStore(tmp_path / "deep" / "state")
    try:
        for directory in (s.state_dir, s.modules.modules_dir, s.modules.cache_dir):
            assert directory.is_dir()
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    finally:
        s.close()


# ------------------------------------------------------------ records


def test_empty_store_has_no_agents(store):
    assert store.agents() == []


def test_create_agent_round_trip(store):
    digest = store.modules.put(WASM_A)
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
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, Limits(), "")
    assert store.version("a", 1).limits == Limits()


def test_agents_sorted_by_name(store):
    digest = store.modules.put(WASM_A)
    for name in ("zeta", "alpha", "mid"):
        store.create_agent(name, "default", digest, LIMITS, name)
    assert [a.name for a in store.agents()] == ["alpha", "mid", "zeta"]


def test_unknown_version_raises_key_error(store):
    with pytest.raises(KeyError):
        store.version("nobody", 1)
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    with pytest.raises(KeyError):
        store.version("a", 2)


def test_duplicate_agent_rejected_and_rolled_back(store):
    a = store.modules.put(WASM_A)
    b = store.modules.put(WASM_B)
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
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.set_desired_state("a", "stopped")
    assert store.agents()[0].desired_state == "stopped"
    store.set_desired_state("a", "running")
    assert store.agents()[0].desired_state == "running"


def test_set_desired_state_rejects_unknown_state(store):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    with pytest.raises(sqlite3.IntegrityError):
        store.set_desired_state("a", "paused")
    assert store.agents()[0].desired_state == "running"


# ------------------------------------------------------------ delete and GC


def test_delete_agent_removes_records_and_unused_module(store):
    digest = store.modules.put(WASM_A)
    compiled = store.modules.cache_dir / f"{digest}-x86_64.cwasm"
    compiled.write_bytes(b"native")
    recorded = store.modules.cache_dir / f"{digest}-x86_64.cwasm.sha256"
    recorded.write_text("0" * 64)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("a")
    assert store.agents() == []
    with pytest.raises(KeyError):
        store.version("a", 1)
    assert not store.modules.path(digest).exists()
    assert not compiled.exists() and not recorded.exists()
    assert module_files(store) == []


def test_discard_module_spares_a_module_in_use(store):
    used = store.modules.put(WASM_A)
    store.create_agent("a", "default", used, LIMITS, "")
    orphan = store.modules.put(WASM_B)  # stored by a deploy that then failed
    store.discard_module(orphan)
    store.discard_module(used)
    assert module_files(store) == [f"{used}.wasm"]


def test_delete_keeps_module_shared_with_another_agent(store):
    digest = store.modules.put(WASM_A)
    compiled = store.modules.cache_dir / f"{digest}-x86_64.cwasm"
    compiled.write_bytes(b"native")
    store.create_agent("a", "default", digest, LIMITS, "")
    store.create_agent("b", "default", digest, LIMITS, "")
    store.delete_agent("a")
    assert [x.name for x in store.agents()] == ["b"]
    assert store.modules.path(digest).read_bytes() == WASM_A
    assert compiled.exists()
    store.delete_agent("b")
    assert not store.modules.path(digest).exists()
    assert not compiled.exists()


def test_delete_only_collects_own_module(store):
    a = store.modules.put(WASM_A)
    b = store.modules.put(WASM_B)
    other_cache = store.modules.cache_dir / f"{b}-x86_64.cwasm"
    other_cache.write_bytes(b"native")
    store.create_agent("a", "default", a, LIMITS, "")
    store.create_agent("b", "default", b, LIMITS, "")
    store.delete_agent("a")
    assert not store.modules.path(a).exists()
    assert store.modules.path(b).exists()
    assert other_cache.exists()


def test_delete_unknown_agent_is_harmless(store):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("nobody")
    assert [x.name for x in store.agents()] == ["a"]
    assert store.modules.path(digest).exists()


def test_agent_can_be_recreated_after_delete(store):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.delete_agent("a")
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "strict", digest, Limits(), "again")
    assert store.version("a", 1).label == "again"
    assert store.modules.path(digest).exists()


# ------------------------------------------------------------ durability


def test_state_files_are_owner_only(tmp_path):
    s = StateStore(tmp_path / "state")
    try:
        s.create_agent("a", "default", s.modules.put(WASM_A), LIMITS, "")
        files = [p for p in s.state_dir.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"caxton.db", "caxton.db-wal", f"{hashlib.sha256(WASM_A).hexdigest()}.wasm"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        s.close()


def test_a_database_made_readable_by_others_is_tightened(tmp_path):
    StateStore(tmp_path / "state").close()
    database = tmp_path / "state" / "caxton.db"
    database.chmod(0o644)
    StateStore(tmp_path / "state").close()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_module_problem_names_a_missing_or_empty_module_without_its_path(store):
    digest = store.modules.put(WASM_A)
    assert store.modules.problem(digest) == ""
    store.modules.path(digest).write_bytes(b"")
    assert store.modules.problem(digest) == f"module {digest[:12]} is an empty file"
    store.modules.path(digest).unlink()
    assert store.modules.problem(digest) == f"module {digest[:12]} is missing from the state directory"


# ------------------------------------------------------------ damaged records


def _raw(store: StateStore, statement: str, *args) -> None:
    db = sqlite3.connect(store.state_dir / "caxton.db")
    try:
        with db:
            db.execute(statement, args)
    finally:
        db.close()


@pytest.mark.parametrize("statement, args, damage", [
    ("UPDATE versions SET limits = ?", ("{",), "versions.limits of a v1 is not valid JSON"),
    ("UPDATE versions SET limits = ?", ("[1, 2]",), "versions.limits of a v1 is not a JSON object"),
    ("UPDATE versions SET limits = ?", ('{"memory": 5}',), "versions.limits of a v1 has an unknown key 'memory'"),
    ("UPDATE versions SET limits = ?", ('{"fuel": true}',), "versions.limits of a v1: fuel is True, not an integer"),
    ("UPDATE versions SET limits = ?", ('{"fuel": 1.5}',), "versions.limits of a v1: fuel is 1.5, not an integer"),
    ("UPDATE versions SET limits = ?", (7,), "versions.limits of a v1 is not a JSON object"),
], ids=["json", "array", "unknown-key", "bool", "float", "number"])
def test_a_damaged_version_is_named_and_left_out_of_the_history(store, statement, args, damage):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.add_version("a", digest, LIMITS, "second")
    _raw(store, statement + " WHERE version = 1", *args)
    with pytest.raises(StateDamage) as info:
        store.version("a", 1)
    assert str(info.value).startswith(damage), str(info.value)
    assert [v.version for v in store.versions("a")] == [2]


@pytest.mark.parametrize("statement, args, damage", [
    ("UPDATE agents SET restart = ?", ("nope",), "agents.restart of a is not valid JSON"),
    ("UPDATE agents SET restart = ?", ('{"factor": 0.5}',), "agents.restart of a: factor: expected a finite number"),
    ("UPDATE agents SET restart = ?", ('{"speed": 1}',), "agents.restart of a: "),
    ("UPDATE agents SET restart = ?", ('{"window_s": "long"}',), "agents.restart of a: "),
    ("UPDATE agents SET replicas = ?", ("many",), "agents.replicas of a is 'many', not an integer"),
    ("UPDATE agents SET current_version = ?", (0,), "agents.current_version of a is 0, not a version number"),
    ("UPDATE agents SET created_at = ?", ("yesterday",), "the record of a has a policy or creation time of the wrong"),
], ids=["restart-json", "restart-range", "restart-key", "restart-type", "replicas", "version", "created-at"])
def test_a_damaged_agent_record_is_named(store, statement, args, damage):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.create_agent("b", "default", digest, LIMITS, "")
    _raw(store, statement + " WHERE name = 'a'", *args)
    with pytest.raises(StateDamage) as info:
        store.agent("a")
    assert str(info.value).startswith(damage), str(info.value)
    assert store.agent("b").name == "b"
    assert store.agent_names() == ["a", "b"]
    with pytest.raises(KeyError):
        store.agent("nobody")


def test_a_row_without_a_text_name_is_left_out(store):
    store.create_agent("a", "default", store.modules.put(WASM_A), LIMITS, "")
    _raw(store, "INSERT INTO agents (name, desired_state, current_version, policy, created_at) "
                "VALUES (NULL, 'running', 1, 'default', 0)")
    assert store.agent_names() == ["a"]


def test_reopen_sees_same_records(tmp_path):
    state = tmp_path / "state"
    first = StateStore(state)
    a = first.modules.put(WASM_A)
    b = first.modules.put(WASM_B)
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
        assert second.modules.path(a).read_bytes() == WASM_A
        # and it can still write
        second.delete_agent("one")
        assert [x.name for x in second.agents()] == ["two"]
        assert not second.modules.path(a).exists()
    finally:
        second.close()


def test_restart_settings_round_trip(tmp_path):
    store = StateStore(tmp_path / "state")
    digest = store.modules.put(b"\0asm\1\0\0\0")
    settings = RestartSettings(initial_delay_s=0.05, max_failures=2, window_s=10.0)
    store.create_agent("tuned", "default", digest, Limits(), "", settings)
    store.create_agent("plain", "default", digest, Limits(), "")
    store.close()
    records = {r.name: r for r in StateStore(tmp_path / "state").agents()}
    assert records["tuned"].restart == settings
    assert records["plain"].restart == RestartSettings()


# ------------------------------------------------------------ stable versions


def test_new_versions_are_not_stable(store):
    digest = store.modules.put(WASM_A)
    created = store.create_agent("a", "default", digest, LIMITS, "")
    added = store.add_version("a", digest, LIMITS, "")
    assert not created.stable and not added.stable
    assert [v.stable for v in store.versions("a")] == [False, False]
    assert store.rollback_target("a", 2) is None


def test_mark_stable(store):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.add_version("a", digest, LIMITS, "")
    store.mark_stable("a", 2)
    assert store.version("a", 2).stable
    assert not store.version("a", 1).stable
    assert [v.stable for v in store.versions("a")] == [False, True]
    store.mark_stable("a", 2)  # becoming stable again (after a rollback) keeps it stable
    assert store.version("a", 2).stable
    store.mark_stable("a", 9)  # gone meanwhile: ignored, nothing else touched
    store.mark_stable("nobody", 1)
    assert [v.stable for v in store.versions("a")] == [False, True]


def test_rollback_target_skips_never_stable_versions(store):
    """Defect 5: v1 worked, v2's switch failed, v3 worked: rolling back from
    v3 goes to v1, not v2."""
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "good")
    store.mark_stable("a", 1)
    store.add_version("a", digest, LIMITS, "broken")
    store.add_version("a", digest, LIMITS, "fixed")
    store.set_current_version("a", 3)
    store.mark_stable("a", 3)
    target = store.rollback_target("a", 3)
    assert target == store.version("a", 1)
    assert (target.label, target.stable) == ("good", True)
    assert store.rollback_target("a", 1) is None  # nothing stable below the oldest
    assert store.rollback_target("nobody", 3) is None


def test_rollback_target_none_without_an_older_stable_version(store):
    digest = store.modules.put(WASM_A)
    store.create_agent("a", "default", digest, LIMITS, "")
    store.add_version("a", digest, LIMITS, "")
    store.add_version("a", digest, LIMITS, "")
    store.mark_stable("a", 3)  # only the current one, and newer ones do not count
    assert store.rollback_target("a", 3) is None
    assert store.rollback_target("a", 2) is None


def test_prune_versions_with_stable_column(store):
    digests = [store.modules.put(WASM_A), store.modules.put(WASM_B)]
    store.create_agent("a", "default", digests[0], LIMITS, "v1")
    store.mark_stable("a", 1)
    for number in range(2, 6):
        store.add_version("a", digests[number % 2], LIMITS, f"v{number}")
    store.mark_stable("a", 4)
    store.set_current_version("a", 5)
    store.mark_stable("a", 5)
    store.prune_versions("a", keep=2, current=5)
    assert [(v.version, v.stable) for v in store.versions("a")] == [(4, True), (5, True)]
    assert store.rollback_target("a", 5).version == 4
    # v1's module is still used by v5's
    assert store.modules.path(digests[0]).exists() and store.modules.path(digests[1]).exists()


def test_prune_versions_spares_the_rollback_target(store):
    """A run of failed reloads must not push the last version that worked
    out of history."""
    a, b = store.modules.put(WASM_A), store.modules.put(WASM_B)
    store.create_agent("a", "default", a, LIMITS, "good")
    store.mark_stable("a", 1)
    for number in range(2, 6):  # v2..v4 never switched; v5 did
        store.add_version("a", b, LIMITS, f"v{number}")
    store.set_current_version("a", 5)
    store.mark_stable("a", 5)
    store.prune_versions("a", keep=2, current=5)
    assert [v.version for v in store.versions("a")] == [1, 4, 5]
    assert store.rollback_target("a", 5).version == 1
    assert store.modules.path(a).exists()


def test_prune_versions_keeps_current_even_when_old(store):
    a, b = store.modules.put(WASM_A), store.modules.put(WASM_B)
    store.create_agent("a", "default", a, LIMITS, "")
    for _ in range(3):
        store.add_version("a", b, LIMITS, "")
    store.prune_versions("a", keep=1, current=1)  # rolled back to v1; nothing older is stable
    assert [v.version for v in store.versions("a")] == [1, 4]
    assert store.modules.path(a).exists() and store.modules.path(b).exists()


# ------------------------------------------------------------ schema versions

FIXTURE_V0 = Path(__file__).parent / "fixtures" / "state-v0"
ECHO_V1 = "4ece3a4ff9a91655e8c22b899da9fb604d1a90148235982c851f521df415d306"
ECHO_V2 = "daf1c8f4c477fc839bf41dd3c0e3711871e785ff5d285f0e75783fce5fcd8802"
COUNTER_V1 = "da9df4419f83976d3746eef0be7df74e83776ab6dfcd079bade90a2fc002b750"


def user_version(state: Path) -> int:
    db = sqlite3.connect(state / "caxton.db")
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def raw_rows(state: Path) -> dict[str, list[tuple]]:
    """Every row of every table, read past the store (which must be closed)."""
    db = sqlite3.connect(state / "caxton.db")
    try:
        return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("agents", "versions")}
    finally:
        db.close()


@pytest.fixture
def state_v0(tmp_path) -> Path:
    """A copy of the state written before the schema had a version: the
    fixture itself is never opened by the store."""
    state = tmp_path / "state"
    shutil.copytree(FIXTURE_V0, state)
    assert user_version(state) == 0
    return state


def test_fresh_directory_gets_latest_schema(tmp_path):
    StateStore(tmp_path / "state").close()
    assert user_version(tmp_path / "state") == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / "state" / "caxton.db")
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(versions)")]
    finally:
        db.close()
    assert "stable_at" in columns


def test_state_v0_migrates_intact(state_v0):
    s = StateStore(state_v0)
    try:
        echo, counter = sorted(s.agents(), key=lambda a: a.name != "echo")
        defaults = RestartSettings(initial_delay_s=0.01)
        assert echo == AgentRecord(
            name="echo", desired_state="running", current_version=2, policy="default",
            created_at=1796007095.0627618, restart=defaults, replicas=1,
        )
        assert counter == AgentRecord(
            name="counter", desired_state="stopped", current_version=1, policy="default",
            created_at=1796007095.7529013, restart=RestartSettings(initial_delay_s=0.01, max_failures=3), replicas=2,
        )
        small = Limits(memory_bytes=2 << 20)
        assert s.versions("echo") == [
            VersionRecord("echo", 1, "first", ECHO_V1, small, 1796007095.0627618, stable=False),
            VersionRecord("echo", 2, "second", ECHO_V2, small, 1796007095.7092319, stable=True),
        ]
        assert s.versions("counter") == [
            VersionRecord("counter", 1, "", COUNTER_V1, Limits(), 1796007095.7529013, stable=True),
        ]
        assert s.rollback_target("echo", 2) is None  # v1 may never have worked: no guess
        for digest in (ECHO_V1, ECHO_V2, COUNTER_V1):
            path = s.modules.path(digest)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        # and it can still write
        s.mark_stable("echo", 1)
        assert s.rollback_target("echo", 2).label == "first"
    finally:
        s.close()
    assert user_version(state_v0) == SCHEMA_VERSION


def test_reopening_migrated_state_changes_nothing(state_v0):
    StateStore(state_v0).close()
    before = raw_rows(state_v0)
    s = StateStore(state_v0)
    try:
        assert [v.stable for v in s.versions("echo")] == [False, True]
    finally:
        s.close()
    assert raw_rows(state_v0) == before
    assert user_version(state_v0) == SCHEMA_VERSION


def test_newer_schema_is_refused_untouched(tmp_path):
    state = tmp_path / "state"
    StateStore(state).close()
    db = sqlite3.connect(state / "caxton.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = raw_rows(state)
    with pytest.raises(StateVersionError) as refused:
        StateStore(state)
    assert isinstance(refused.value, ValueError)
    assert str(refused.value) == (
        f"state in {state} was written by a newer Caxton "
        f"(schema {SCHEMA_VERSION + 1}, this one knows up to {SCHEMA_VERSION})"
    )
    assert user_version(state) == SCHEMA_VERSION + 1
    assert raw_rows(state) == before


def test_failed_migration_leaves_last_completed_version(tmp_path, monkeypatch):
    state = tmp_path / "state"
    StateStore(state).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE agents ADD COLUMN half_done TEXT")
        raise RuntimeError("migration failed halfway")

    monkeypatch.setattr(store_module, "_MIGRATIONS", store_module._MIGRATIONS + (broken,))
    with pytest.raises(RuntimeError, match="halfway"):
        StateStore(state)
    assert user_version(state) == SCHEMA_VERSION
    db = sqlite3.connect(state / "caxton.db")
    try:
        assert "half_done" not in [row[1] for row in db.execute("PRAGMA table_info(agents)")]
    finally:
        db.close()
