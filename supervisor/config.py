"""Supervisor configuration: defaults, a TOML file, and validation.

Every field is checked up front, one small check per field, and an error
names the field, so a bad config fails at start-up with a precise message
instead of misbehaving later.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caxton.contract import parse_size

from .auth import AuthSettings, read_auth
from .caps import Caps, check_defaults, read_caps
from .cluster_settings import ClusterSettings, read_cluster
from .logs import LEVELS
from .policy import BUILTIN_POLICIES, Policy, read_policy
from .restart import RestartSettings, read_settings
from .send_policy import MessagingSettings, read_messaging
from .settings import ConfigError, Table
from .strategy import RolloutDefaults, read_rollout
from .tls import TlsSettings, read_tls
from .uids import HIGHEST_UID, LOWEST_UID

# ConfigError and parse_size are re-exported: callers of load_config catch the
# one and size limits the way the config does with the other.
__all__ = ["Config", "ConfigError", "Limits", "SandboxSettings", "config_from_table", "load_config", "parse_size"]


@dataclass(frozen=True)
class Limits:
    """Resource limits for one agent instance."""

    memory_bytes: int = 64 << 20
    fuel: int = 1_000_000_000
    timeout_ms: int = 5_000
    max_message_bytes: int = 1 << 20


@dataclass(frozen=True)
class SandboxSettings:
    """OS-level limits around each worker process."""

    # Run workers as this user when the supervisor runs as root ("" = stay)
    # and `uid_range` is off.
    user: str = "nobody"
    # When the supervisor runs as root: each worker runs as a uid (and gid)
    # of its own from this inclusive range (uids.py). None = off.
    uid_range: tuple[int, int] | None = (600000, 665535)
    # Per-worker cgroups where the host allows them ("auto") or never ("off").
    cgroups: str = "auto"
    # The worker process's own memory on top of the agent's linear memory
    # limit: interpreter, gRPC, wasmtime, compiled code. It sizes both the
    # cgroup memory limit and RLIMIT_DATA.
    memory_overhead_bytes: int = 192 << 20
    cpu_cores: float = 1.0     # cgroup CPU quota per worker (0 = none)
    pids_max: int = 64         # cgroup pids limit per worker (threads count)
    open_files: int = 256      # RLIMIT_NOFILE
    cpu_seconds: int = 0       # RLIMIT_CPU over the worker's life (0 = none)
    # Each worker's seccomp filter (worker/seccomp.py); off only to debug
    # or to measure its cost.
    syscall_filter: bool = True
    # Offer what forked workers inherit from the fork server to the kernel's
    # same-page merging (worker/page_merging.py); merged only where the
    # host runs ksmd (docs/operations.md, "Same-page merging").
    merge_pages: bool = True


@dataclass(frozen=True)
class Config:
    # HOST:PORT (plaintext only on loopback, else [tls] is required) or unix:PATH.
    listen: str = "127.0.0.1:50051"
    # A plaintext listener serving only grpc.health.v1, for probes ("" = none).
    health_listen: str = ""
    # Prometheus metrics over HTTP at HOST:PORT ("" = off).
    metrics_listen: str = ""
    # An agent's own log lines kept for `caxton logs`, per agent.
    log_lines: int = 1000
    # The supervisor's log level (logs.LEVELS), set again on SIGHUP; at
    # start, `--log-level` wins over it. "" = not set: INFO, or the flag's.
    log_level: str = ""
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    # Defaults for what rollout requests leave unset (strategy.py).
    rollout: RolloutDefaults = field(default_factory=RolloutDefaults)
    # Agent-to-agent messaging: who may send to whom, hop limit, send budget.
    messaging: MessagingSettings = field(default_factory=MessagingSettings)
    state_dir: Path = Path(".caxton")
    # Where worker sockets live; empty = a fresh private directory under /tmp
    # (Unix socket paths must stay under 108 bytes).
    runtime_dir: str = ""
    limits: Limits = field(default_factory=Limits)
    # The most a client may ask for (per agent) and host-wide quotas.
    caps: Caps = field(default_factory=Caps)
    # Modules validated and compiled at once (deploy, reload, ValidateModule):
    # each holds its module and the validator's working memory.
    validation_concurrency: int = 2
    default_policy: str = "default"
    policies: dict[str, Policy] = field(default_factory=lambda: dict(BUILTIN_POLICIES))
    # How long StopAgent lets in-flight messages finish by default.
    stop_timeout_s: float = 10.0
    # How long a worker may take from spawn to ready, and to load its module.
    worker_start_timeout_s: float = 20.0
    # Messages waiting for one agent beyond the ones being handled.
    queue_limit: int = 10_000
    # The supervisor's memory target: what callers make it hold (queued
    # messages, modules in flight, unread results) is refused past half of
    # it, or past it less 192 MiB (memory_budget.py); `queue_bytes` bounds
    # one agent's mailbox within.
    memory_budget: int = 512 << 20
    queue_bytes: int = 64 << 20
    # Upper bounds for one supervisor-to-worker batch.
    batch_max_messages: int = 256
    batch_max_bytes: int = 4 << 20
    # How long SIGTERM lets all agents drain before workers are killed.
    shutdown_timeout_s: float = 15.0
    # "fork": workers forked from a pre-warmed fork server (fast, pages
    # shared); "exec": a fresh interpreter per worker (slow, fresh ASLR).
    worker_start: str = "fork"
    # Started-but-empty workers kept ready, so deploys, restarts and reloads
    # do not wait for a process to start (0 = none).
    worker_pool: int = 2
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    # Default restart policy (backoff and circuit breaker) for agents.
    restart: RestartSettings = field(default_factory=RestartSettings)
    # Liveness checks of running workers: a worker that misses
    # `health_failures` checks in a row, each with `health_timeout_s` to
    # answer, is hung and gets killed (then restarted by policy).
    health_interval_s: float = 5.0
    health_timeout_s: float = 2.0
    health_failures: int = 2
    # A worker with no call for this long is frozen until the next one
    # (parking.py): idle agents then cost no CPU (0 = never).
    park_after_s: float = 30.0
    # Versions kept per agent (with their modules) for rollback.
    keep_versions: int = 5
    # Supervisors on several hosts forming one Caxton over NATS
    # (cluster_settings.py); None: standalone, no NATS.
    cluster: ClusterSettings | None = None


def _read_limits(table: Table) -> Limits:
    base = Limits()
    limits = Limits(
        memory_bytes=table.size("memory", base.memory_bytes, minimum=1),
        fuel=table.integer("fuel", base.fuel, minimum=0),  # 0 = unmetered
        timeout_ms=table.integer("timeout_ms", base.timeout_ms, minimum=0),  # 0 = no timeout
        max_message_bytes=table.size("max_message_bytes", base.max_message_bytes, minimum=1),
    )
    table.finish()
    return limits


def _read_sandbox(table: Table) -> SandboxSettings:
    base = SandboxSettings()
    sandbox = SandboxSettings(
        user=table.string("user", base.user),
        uid_range=_read_uid_range(table, base.uid_range),
        cgroups=table.choice("cgroups", base.cgroups, ("auto", "off")),
        memory_overhead_bytes=table.size("memory_overhead", base.memory_overhead_bytes),
        cpu_cores=table.number("cpu_cores", base.cpu_cores, minimum=0),
        pids_max=table.integer("pids_max", base.pids_max, minimum=0),
        open_files=table.integer("open_files", base.open_files, minimum=0),
        cpu_seconds=table.integer("cpu_seconds", base.cpu_seconds, minimum=0),
        syscall_filter=table.flag("syscall_filter", base.syscall_filter),
        merge_pages=table.flag("merge_pages", base.merge_pages),
    )
    table.finish()
    return sandbox


def _read_uid_range(table: Table, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """`uid_range = "FIRST-LAST"` (inclusive), or "" for off."""
    text = table.string("uid_range", None)
    if text is None:
        return default
    if not text:
        return None
    first, dash, last = text.partition("-")
    if dash and first.strip().isdigit() and last.strip().isdigit():
        uids = int(first), int(last)
        if LOWEST_UID <= uids[0] <= uids[1] <= HIGHEST_UID:
            return uids
    raise table.error("uid_range", f'expected "FIRST-LAST" with {LOWEST_UID} <= FIRST <= LAST <= {HIGHEST_UID}, '
                                   f'or "" for off, got {text!r}')


def _read_policies(table: Table) -> dict[str, Policy]:
    """The built-in policies, with [policies.<name>] tables added or overriding."""
    policies = dict(BUILTIN_POLICIES)
    for name in table:
        policies[name] = read_policy(name, table.table(name))
    return policies


def config_from_table(table: dict[str, Any]) -> Config:
    """Build a Config from a parsed TOML document; ConfigError names the field."""
    t = Table(table)
    base = Config()
    policies = _read_policies(t.table("policies"))
    default_policy = t.string("default_policy", base.default_policy)
    if default_policy not in policies:
        raise t.error("default_policy", f"no policy named {default_policy!r} (known: {', '.join(sorted(policies))})")
    config = Config(
        listen=t.string("listen", base.listen),
        health_listen=t.string("health_listen", base.health_listen),
        metrics_listen=t.string("metrics_listen", base.metrics_listen),
        log_lines=t.integer("log_lines", base.log_lines, minimum=1),
        log_level=t.choice("log_level", base.log_level, LEVELS),
        auth=read_auth(t.table("auth")),
        tls=read_tls(t.table("tls")),
        rollout=read_rollout(t.table("rollout")),
        messaging=read_messaging(t.table("messaging")),
        state_dir=Path(t.string("state_dir", str(base.state_dir))),
        runtime_dir=t.string("runtime_dir", base.runtime_dir),
        limits=_read_limits(t.table("limits")),
        caps=read_caps(t.table("caps")),
        validation_concurrency=t.integer("validation_concurrency", base.validation_concurrency, minimum=1),
        default_policy=default_policy,
        policies=policies,
        stop_timeout_s=t.number("stop_timeout_s", base.stop_timeout_s, above=0),
        worker_start_timeout_s=t.number("worker_start_timeout_s", base.worker_start_timeout_s, above=0),
        queue_limit=t.integer("queue_limit", base.queue_limit, minimum=1),
        memory_budget=t.size("memory_budget", base.memory_budget, minimum=256 << 20),
        queue_bytes=t.size("queue_bytes", base.queue_bytes, minimum=1 << 20),
        batch_max_messages=t.integer("batch_max_messages", base.batch_max_messages, minimum=1),
        batch_max_bytes=t.integer("batch_max_bytes", base.batch_max_bytes, minimum=1),
        shutdown_timeout_s=t.number("shutdown_timeout_s", base.shutdown_timeout_s, above=0),
        worker_start=t.choice("worker_start", base.worker_start, ("fork", "exec")),
        worker_pool=t.integer("worker_pool", base.worker_pool, minimum=0),
        sandbox=_read_sandbox(t.table("sandbox")),
        restart=read_settings(t.table("restart")),
        health_interval_s=t.number("health_interval_s", base.health_interval_s, above=0),
        health_timeout_s=t.number("health_timeout_s", base.health_timeout_s, above=0),
        health_failures=t.integer("health_failures", base.health_failures, minimum=1),
        park_after_s=t.number("park_after_s", base.park_after_s, minimum=0),
        keep_versions=t.integer("keep_versions", base.keep_versions, minimum=1),
        cluster=read_cluster(t.table("cluster")) if "cluster" in t else None,
    )
    t.finish()
    check_defaults(config.caps, config.limits)
    return config


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: {exc}") from None
    return config_from_table(table)
