"""Durable state: agents, their versions and desired states, and modules.

SQLite holds the records; module bytes are stored beside it, content-addressed
by SHA-256, so identical modules are stored once and a record can never point
at bytes that changed under it. Writes are rare (deploy, stop, start, remove)
and go through one connection under a lock. Everything here is created
owner-only: the records describe what runs, and compiled modules in the
cache are native code.

Records are read strictly: a value of the wrong type or shape raises
StateDamage naming the column and the agent (never a host path), so that a
damaged row costs its own agent and nothing else (see restore.py).

The schema carries its version in `PRAGMA user_version` and moves forward by
numbered migrations, so a state directory written by an older Caxton is
upgraded in place and one written by a newer Caxton is refused, not misread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Limits
from .modules import FILE_MODE, ModuleFiles
from .restart import RestartSettings
from .rollout_status import RolloutRecord, RolloutState

log = logging.getLogger("caxton.store")

class StateVersionError(ValueError):
    """The state directory was written by a newer Caxton than this one."""


class StateDamage(ValueError):
    """A stored record cannot be read as what it should be; the message names
    the agent, the column and what is wrong with it, and no host path."""


def _migration_1(db: sqlite3.Connection) -> None:
    """The schema as it was before it had a version. IF NOT EXISTS because a
    database written then has user_version 0 and these very tables already:
    for it this migration only records that it is at schema 1."""
    db.execute("""
        CREATE TABLE IF NOT EXISTS agents (
            name            TEXT PRIMARY KEY,
            desired_state   TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')),
            current_version INTEGER NOT NULL,
            policy          TEXT NOT NULL,
            created_at      REAL NOT NULL,
            restart         TEXT NOT NULL DEFAULT '{}',
            replicas        INTEGER NOT NULL DEFAULT 1
        )""")
    db.execute("""
        CREATE TABLE IF NOT EXISTS versions (
            agent         TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
            version       INTEGER NOT NULL,
            label         TEXT NOT NULL,
            module_sha256 TEXT NOT NULL,
            limits        TEXT NOT NULL,
            deployed_at   REAL NOT NULL,
            PRIMARY KEY (agent, version)
        )""")


def _migration_2(db: sqlite3.Connection) -> None:
    """versions.stable_at: when the version last became the stable one (all
    traffic on it after a completed switch), NULL if it never was, so that a
    rollback skips versions that never worked.

    Only each agent's current version is marked: it is serving, so its switch
    completed. Older versions are left unknown (NULL) because schema 1 kept a
    failed reload's record exactly like a good one's, and guessing "stable"
    would bring back the very defect this column fixes. The current version's
    stable_at is its deployed_at, the earliest moment it can have become
    stable; the real one was not recorded."""
    db.execute("ALTER TABLE versions ADD COLUMN stable_at REAL")
    db.execute(
        "UPDATE versions SET stable_at = deployed_at WHERE version = "
        "(SELECT current_version FROM agents WHERE agents.name = versions.agent)"
    )


def _migration_3(db: sqlite3.Connection) -> None:
    """Counters that survive a supervisor restart, so that status and
    dashboards do not drop to zero: per agent (messages, errors, restarts)
    and per agent version and outcome (caxton_messages_total)."""
    db.execute("""CREATE TABLE agent_counters (
        agent    TEXT PRIMARY KEY REFERENCES agents(name) ON DELETE CASCADE,
        messages INTEGER NOT NULL, errors INTEGER NOT NULL, restarts INTEGER NOT NULL)""")
    db.execute("""CREATE TABLE message_counts (
        agent   TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        version INTEGER NOT NULL, outcome TEXT NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (agent, version, outcome))""")


def _migration_4(db: sqlite3.Connection) -> None:
    """Each agent's latest rollout (rollout_status.py), so that one cut
    short by a supervisor restart is reported as aborted, with the reason."""
    db.execute("""CREATE TABLE rollouts (
        agent TEXT PRIMARY KEY REFERENCES agents(name) ON DELETE CASCADE,
        record TEXT NOT NULL)""")


# Migration N is _MIGRATIONS[N - 1]; append only, never edit a released one.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1, _migration_2, _migration_3, _migration_4)

SCHEMA_VERSION = len(_MIGRATIONS)

_VERSION_COLUMNS = "agent, version, label, module_sha256, limits, deployed_at, stable_at IS NOT NULL"


@dataclass(frozen=True)
class VersionRecord:
    agent: str
    version: int
    label: str
    module_sha256: str
    limits: Limits
    deployed_at: float
    stable: bool = False  # ever the stable version: a rollback may return to it


@dataclass(frozen=True)
class AgentRecord:
    name: str
    desired_state: str  # "running" or "stopped"
    current_version: int
    policy: str
    created_at: float
    restart: RestartSettings
    replicas: int = 1


def _json_object(text: object, where: str) -> dict:
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError as exc:
        raise StateDamage(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise StateDamage(f"{where} is not a JSON object")
    return value


def _limits(text: object, where: str) -> Limits:
    """Limits from their JSON; keys left out take today's defaults (records
    written before a limit existed), unknown keys or non-integers are damage."""
    values = _json_object(text, where)
    known = {f.name for f in dataclasses.fields(Limits)}
    for key, value in values.items():
        if key not in known:
            raise StateDamage(f"{where} has an unknown key {key!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateDamage(f"{where}: {key} is {value!r}, not an integer")
    return Limits(**values)


def _restart(text: object, where: str) -> RestartSettings:
    """Restart settings from their JSON, over the defaults (schema 1 wrote
    '{}' for "the defaults"); checked as a deploy's would be."""
    values = _json_object(text, where)
    try:
        settings = dataclasses.replace(RestartSettings(), **values)
        settings.check()
    except (TypeError, ValueError) as exc:
        raise StateDamage(f"{where}: {exc}") from None
    return settings


def _is_version_number(number: object) -> bool:
    """Version numbers count from 1 and travel as uint32."""
    return not isinstance(number, bool) and isinstance(number, int) and 1 <= number < 1 << 32


def _version_record(row: tuple) -> VersionRecord:
    agent, number, label, digest, limits, deployed_at, stable = row
    if not _is_version_number(number):
        raise StateDamage(f"versions.version of {agent} is {number!r}, not a version number")
    where = f"versions.limits of {agent} v{number}"
    if not isinstance(label, str) or not isinstance(digest, str) or not isinstance(deployed_at, (int, float)):
        raise StateDamage(f"the version record of {agent} v{number} has a label, module or time of the wrong type")
    return VersionRecord(agent, number, label, digest, _limits(limits, where), deployed_at, bool(stable))


def _agent_record(row: tuple) -> AgentRecord:
    name, desired_state, current_version, policy, created_at, restart, replicas = row
    if desired_state not in ("running", "stopped"):
        raise StateDamage(f"agents.desired_state of {name} is {desired_state!r}, not 'running' or 'stopped'")
    if not _is_version_number(current_version):
        raise StateDamage(f"agents.current_version of {name} is {current_version!r}, not a version number")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise StateDamage(f"agents.replicas of {name} is {replicas!r}, not an integer")
    if not isinstance(policy, str) or not isinstance(created_at, (int, float)):
        raise StateDamage(f"the record of {name} has a policy or creation time of the wrong type")
    return AgentRecord(name, desired_state, current_version, policy, created_at,
                       restart=_restart(restart, f"agents.restart of {name}"), replicas=replicas)


class StateStore:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A directory made earlier (by hand, by an older version) is
        # tightened too.
        os.chmod(self.state_dir, 0o700)
        self.modules = ModuleFiles(self.state_dir)
        self._lock = threading.Lock()
        database = self.state_dir / "caxton.db"
        # Made owner-only before SQLite opens it: SQLite gives its -wal and
        # -shm files the database file's mode.
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        for path in (database, database.with_name("caxton.db-wal"), database.with_name("caxton.db-shm")):
            if path.exists():
                os.chmod(path, FILE_MODE)
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        try:
            # Checked before anything writes, so a newer Caxton's
            # database is left exactly as it was.
            (found,) = self._db.execute("PRAGMA user_version").fetchone()
            if found > SCHEMA_VERSION:
                raise StateVersionError(
                    f"state in {self.state_dir} was written by a newer Caxton "
                    f"(schema {found}, this one knows up to {SCHEMA_VERSION})"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Apply every migration above the database's version, each in its
        own transaction together with the version bump, so a failure leaves
        the database at the last version that completed."""
        for number, migration in enumerate(_MIGRATIONS, start=1):
            with self._db:
                # IMMEDIATE takes the write lock before reading the version:
                # another process opening the same state cannot apply the
                # same migration in between.
                self._db.execute("BEGIN IMMEDIATE")
                (found,) = self._db.execute("PRAGMA user_version").fetchone()
                if found < number:
                    migration(self._db)
                    self._db.execute(f"PRAGMA user_version = {number}")

    def responsive(self, timeout: float) -> bool:
        """The database answers a trivial query within `timeout` (its lock
        is not held by a stuck writer)."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ modules

    def discard_module(self, digest: str) -> None:
        """Delete the module of `digest` unless a version refers to it (a
        deploy that stored it and then failed)."""
        with self._lock:
            self._collect_module(digest)

    def _collect_module(self, digest: str) -> None:
        """Delete a module no version refers to any more (and its compiled
        forms with their recorded digests). Caller holds the lock."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM versions WHERE module_sha256 = ?", (digest,)).fetchone()
        if count:
            return
        self.modules.delete(digest)

    # ------------------------------------------------------------ records

    def create_agent(self, name: str, policy: str, module_sha256: str, limits: Limits, label: str,
                     restart: RestartSettings | None = None, replicas: int = 1) -> VersionRecord:
        """Record a new agent at v1 (default restart settings if none are
        given). v1 is not yet stable: the supervisor marks it once the agent
        has really started."""
        if restart is None:
            restart = RestartSettings()
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO agents (name, desired_state, current_version, policy, created_at, restart, replicas) "
                "VALUES (?, 'running', 1, ?, ?, ?, ?)",
                (name, policy, now, json.dumps(dataclasses.asdict(restart)), replicas),
            )
            self._db.execute(
                "INSERT INTO versions (agent, version, label, module_sha256, limits, deployed_at) "
                "VALUES (?, 1, ?, ?, ?, ?)",
                (name, label, module_sha256, json.dumps(dataclasses.asdict(limits)), now),
            )
        return VersionRecord(name, 1, label, module_sha256, limits, now)

    def set_desired_state(self, name: str, desired: str) -> None:
        with self._lock:
            self._db.execute("UPDATE agents SET desired_state = ? WHERE name = ?", (desired, name))

    def delete_agent(self, name: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            rows = self._db.execute("SELECT module_sha256 FROM versions WHERE agent = ?", (name,))
            digests = [row[0] for row in rows]
            self._db.execute("DELETE FROM agents WHERE name = ?", (name,))
            for digest in set(digests):
                self._collect_module(digest)

    def save_counters(self, agents: list[tuple[str, int, int, int]],
                      messages: list[tuple[str, int, str, int]]) -> None:
        """Replace the saved counters: (agent, messages, errors, restarts)
        and (agent, version, outcome, count) rows. Rows of agents that are
        gone meanwhile are skipped."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            known = {row[0] for row in self._db.execute("SELECT name FROM agents")}
            self._db.execute("DELETE FROM agent_counters")
            self._db.execute("DELETE FROM message_counts")
            self._db.executemany("INSERT INTO agent_counters VALUES (?, ?, ?, ?)",
                                 [row for row in agents if row[0] in known])
            self._db.executemany("INSERT INTO message_counts VALUES (?, ?, ?, ?)",
                                 [row for row in messages if row[0] in known])

    def saved_counters(self) -> tuple[dict[str, tuple[int, int, int]], list[tuple[str, int, str, int]]]:
        """What save_counters() saved: {agent: (messages, errors, restarts)}
        and the per-outcome rows."""
        with self._lock:
            agents = {a: (m, e, r) for a, m, e, r in self._db.execute("SELECT * FROM agent_counters")}
            messages = list(self._db.execute("SELECT agent, version, outcome, count FROM message_counts"))
        return agents, messages

    def agent_names(self) -> list[str]:
        """Every stored agent's name, sorted. A row whose name is not text
        (only a hand-edited database has one) cannot be addressed: it is
        logged and left out."""
        with self._lock:
            rows = self._db.execute("SELECT name FROM agents ORDER BY name").fetchall()
        names = []
        for (name,) in rows:
            if isinstance(name, str):
                names.append(name)
            else:
                log.error("the agents table has a row whose name is %r, not text: left out", name)
        return names

    def agent(self, name: str) -> AgentRecord:
        """The record of `name`: KeyError if there is none, StateDamage if it
        cannot be read."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, desired_state, current_version, policy, created_at, restart, replicas "
                "FROM agents WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise KeyError(name)
        return _agent_record(row)

    def agents(self) -> list[AgentRecord]:
        """Every record; StateDamage on the first that cannot be read (restore
        reads them one by one instead)."""
        return [self.agent(name) for name in self.agent_names()]

    def add_version(self, name: str, module_sha256: str, limits: Limits, label: str) -> VersionRecord:
        """Record a new version (the next number); not yet current."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            (latest,) = self._db.execute("SELECT MAX(version) FROM versions WHERE agent = ?", (name,)).fetchone()
            number = (latest or 0) + 1
            self._db.execute(
                "INSERT INTO versions (agent, version, label, module_sha256, limits, deployed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, number, label, module_sha256, json.dumps(dataclasses.asdict(limits)), now),
            )
        return VersionRecord(name, number, label, module_sha256, limits, now)

    def set_current_version(self, name: str, version: int) -> None:
        """The switch point of a reload or rollback: after a crash, the
        supervisor serves whatever version this last recorded."""
        with self._lock:
            self._db.execute("UPDATE agents SET current_version = ? WHERE name = ?", (version, name))

    def mark_stable(self, name: str, version: int) -> None:
        """Record that `version` has just become the stable version (all
        traffic on it after a completed switch). Like the other setters, an
        agent or version that is gone meanwhile is ignored: a remove may race
        with the start that ends in this call."""
        with self._lock:
            self._db.execute(
                "UPDATE versions SET stable_at = ? WHERE agent = ? AND version = ?", (time.time(), name, version)
            )

    def rollback_target(self, name: str, current: int) -> VersionRecord | None:
        """The default version to roll back to from `current`: the newest
        older version that was ever stable (None if there is none), so a
        version whose switch failed is never picked."""
        with self._lock:
            return self._rollback_target(name, current)

    def _rollback_target(self, name: str, current: int) -> VersionRecord | None:
        """rollback_target; caller holds the lock."""
        row = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions "
            "WHERE agent = ? AND version < ? AND stable_at IS NOT NULL ORDER BY version DESC LIMIT 1",
            (name, current),
        ).fetchone()
        return None if row is None else _version_record(row)

    def versions(self, name: str) -> list[VersionRecord]:
        """The agent's history. A version that cannot be read is left out
        (and logged), so that one damaged row never fails a status call."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE agent = ? ORDER BY version", (name,)
            ).fetchall()
        records = []
        for row in rows:
            try:
                records.append(_version_record(row))
            except StateDamage as exc:
                log.warning("left out of the history of %s: %s", name, exc)
        return records

    def prune_versions(self, name: str, keep: int, current: int) -> None:
        """Forget all but the newest `keep` versions and their modules, so
        history stays bounded. Never the current version, nor its rollback
        target: a run of failed reloads must not push the last version that
        worked out of history."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            target = self._rollback_target(name, current)
            spared = {current} if target is None else {current, target.version}
            rows = self._db.execute(
                "SELECT version, module_sha256 FROM versions WHERE agent = ? ORDER BY version DESC", (name,)
            ).fetchall()
            doomed = [(v, d) for v, d in rows[keep:] if v not in spared]
            for version, _ in doomed:
                self._db.execute("DELETE FROM versions WHERE agent = ? AND version = ?", (name, version))
            for digest in {d for _, d in doomed}:
                self._collect_module(digest)

    def save_rollout(self, record: RolloutRecord) -> None:
        """Keep `record` as the agent's latest rollout (ignored if the agent
        is gone meanwhile)."""
        fields = dataclasses.asdict(record) | {"state": record.state.value, "steps": list(record.steps)}
        with self._lock:
            if self._db.execute("SELECT 1 FROM agents WHERE name = ?", (record.agent,)).fetchone():
                self._db.execute("INSERT OR REPLACE INTO rollouts (agent, record) VALUES (?, ?)",
                                 (record.agent, json.dumps(fields)))

    def rollouts(self) -> dict[str, RolloutRecord]:
        """Every agent's latest rollout; an unreadable one is left out (and logged)."""
        with self._lock:
            rows = self._db.execute("SELECT agent, record FROM rollouts").fetchall()
        found = {}
        for agent, text in rows:
            try:
                fields = _json_object(text, f"rollout of {agent}")
                fields.update(state=RolloutState(fields["state"]), steps=tuple(fields["steps"]))
                found[agent] = RolloutRecord(**fields)
            except (StateDamage, KeyError, TypeError, ValueError) as exc:
                log.warning("left out the rollout record of %s: %s", agent, exc)
        return found

    def version(self, name: str, version: int) -> VersionRecord:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE agent = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            raise KeyError(f"{name} v{version}")
        return _version_record(row)
