"""Supervisor configuration: defaults, a TOML file, and validation.

Every field is checked up front, one small check per field, and an error
names the field, so a bad config fails at start-up with a precise message
instead of misbehaving later.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from caxton.contract import parse_size
from caxton.v1 import caxton_pb2

from .policy import BUILTIN_POLICIES, Policy, PolicyError, policy_from_config
from .restart import RestartSettings, settings_from_table


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    """Resource limits for one agent instance."""

    memory_bytes: int = 64 << 20
    fuel: int = 1_000_000_000
    timeout_ms: int = 5_000
    max_message_bytes: int = 1 << 20

    def to_proto(self) -> caxton_pb2.ResourceLimits:
        return caxton_pb2.ResourceLimits(
            memory_bytes=self.memory_bytes,
            fuel=self.fuel,
            timeout_ms=self.timeout_ms,
            max_message_bytes=self.max_message_bytes,
        )

    def overlay(self, request: caxton_pb2.ResourceLimits) -> "Limits":
        """These limits with every non-zero field of `request` taking over."""
        return replace(
            self,
            memory_bytes=request.memory_bytes or self.memory_bytes,
            fuel=request.fuel or self.fuel,
            timeout_ms=request.timeout_ms or self.timeout_ms,
            max_message_bytes=request.max_message_bytes or self.max_message_bytes,
        )


@dataclass(frozen=True)
class SandboxSettings:
    """OS-level limits around each worker process."""

    # Run workers as this user when the supervisor runs as root ("" = stay).
    user: str = "nobody"
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


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    state_dir: Path = Path(".caxton")
    # Where worker sockets live; empty = a fresh private directory under /tmp
    # (Unix socket paths must stay under 108 bytes).
    runtime_dir: str = ""
    limits: Limits = field(default_factory=Limits)
    default_policy: str = "default"
    policies: dict[str, Policy] = field(default_factory=lambda: dict(BUILTIN_POLICIES))
    # How long StopAgent lets in-flight messages finish by default.
    stop_timeout_s: float = 10.0
    # How long a worker may take from spawn to ready, and to load its module.
    worker_start_timeout_s: float = 20.0
    # Messages waiting for one agent beyond the ones being handled.
    queue_limit: int = 10_000
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
    # Versions kept per agent (with their modules) for rollback.
    keep_versions: int = 5


def _positive_int(table: dict, key: str, default: int, *, allow_zero: bool = False) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: expected a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


def _positive_float(table: dict, key: str, default: float) -> float:
    value = table.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ConfigError(f"{key}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _string(table: dict, key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


_LIMIT_KEYS = {"memory", "fuel", "timeout_ms", "max_message_bytes"}


def _limits(table: dict) -> Limits:
    unknown = sorted(set(table) - _LIMIT_KEYS)
    if unknown:
        raise ConfigError(f"limits: unknown setting(s): {', '.join(unknown)}")
    base = Limits()
    try:
        memory = parse_size(table.get("memory", base.memory_bytes))
    except ValueError as exc:
        raise ConfigError(f"limits.memory: {exc}") from None
    try:
        max_message = parse_size(table.get("max_message_bytes", base.max_message_bytes))
    except ValueError as exc:
        raise ConfigError(f"limits.max_message_bytes: {exc}") from None
    if memory == 0:
        raise ConfigError("limits.memory: must be more than 0")
    if max_message == 0:
        raise ConfigError("limits.max_message_bytes: must be more than 0")
    try:
        fuel = _positive_int(table, "fuel", base.fuel, allow_zero=True)
        timeout_ms = _positive_int(table, "timeout_ms", base.timeout_ms, allow_zero=True)
    except ConfigError as exc:
        raise ConfigError(f"limits.{exc}") from None
    return Limits(memory_bytes=memory, fuel=fuel, timeout_ms=timeout_ms, max_message_bytes=max_message)


_SANDBOX_KEYS = {"user", "cgroups", "memory_overhead", "cpu_cores", "pids_max", "open_files", "cpu_seconds"}


def _sandbox(table: dict) -> SandboxSettings:
    unknown = sorted(set(table) - _SANDBOX_KEYS)
    if unknown:
        raise ConfigError(f"sandbox: unknown setting(s): {', '.join(unknown)}")
    base = SandboxSettings()
    try:
        overhead = parse_size(table.get("memory_overhead", base.memory_overhead_bytes))
    except ValueError as exc:
        raise ConfigError(f"sandbox.memory_overhead: {exc}") from None
    cgroups = table.get("cgroups", base.cgroups)
    if cgroups not in ("auto", "off"):
        raise ConfigError(f"sandbox.cgroups: expected \"auto\" or \"off\", got {cgroups!r}")
    cpu_cores = table.get("cpu_cores", base.cpu_cores)
    if not isinstance(cpu_cores, (int, float)) or isinstance(cpu_cores, bool) or not 0 <= cpu_cores < math.inf:
        raise ConfigError(f"sandbox.cpu_cores: expected a non-negative number, got {cpu_cores!r}")
    try:
        return SandboxSettings(
            user=_string(table, "user", base.user),
            cgroups=cgroups,
            memory_overhead_bytes=overhead,
            cpu_cores=float(cpu_cores),
            pids_max=_positive_int(table, "pids_max", base.pids_max, allow_zero=True),
            open_files=_positive_int(table, "open_files", base.open_files, allow_zero=True),
            cpu_seconds=_positive_int(table, "cpu_seconds", base.cpu_seconds, allow_zero=True),
        )
    except ConfigError as exc:
        raise ConfigError(f"sandbox.{exc}") from None


_KNOWN_KEYS = {
    "listen", "state_dir", "runtime_dir", "default_policy", "stop_timeout_s", "worker_start_timeout_s",
    "queue_limit", "batch_max_messages", "batch_max_bytes", "shutdown_timeout_s", "limits", "policies",
    "worker_start", "sandbox", "restart", "health_interval_s", "health_timeout_s", "health_failures",
    "keep_versions", "worker_pool",
}
_WORKER_START_MODES = ("fork", "exec")


def config_from_table(table: dict) -> Config:
    """Build a Config from a parsed TOML document."""
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    limits_table = table.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError("limits: expected a table")
    policies = dict(BUILTIN_POLICIES)
    policy_tables = table.get("policies", {})
    if not isinstance(policy_tables, dict):
        raise ConfigError("policies: expected a table of policy tables")
    for name, policy_table in policy_tables.items():
        if not isinstance(policy_table, dict):
            raise ConfigError(f"policies.{name}: expected a table")
        try:
            policies[name] = policy_from_config(name, policy_table)
        except PolicyError as exc:
            raise ConfigError(f"policies.{name}: {exc}") from None
    default_policy = _string(table, "default_policy", "default")
    if default_policy not in policies:
        raise ConfigError(f"default_policy: no policy named {default_policy!r} (known: {', '.join(sorted(policies))})")
    base = Config()
    worker_start = _string(table, "worker_start", base.worker_start)
    if worker_start not in _WORKER_START_MODES:
        raise ConfigError(f"worker_start: expected one of {', '.join(_WORKER_START_MODES)}, got {worker_start!r}")
    sandbox_table = table.get("sandbox", {})
    if not isinstance(sandbox_table, dict):
        raise ConfigError("sandbox: expected a table")
    restart_table = table.get("restart", {})
    if not isinstance(restart_table, dict):
        raise ConfigError("restart: expected a table")
    try:
        restart = settings_from_table(restart_table)
    except ValueError as exc:
        raise ConfigError(f"restart.{exc}") from None
    return Config(
        restart=restart,
        health_interval_s=_positive_float(table, "health_interval_s", base.health_interval_s),
        health_timeout_s=_positive_float(table, "health_timeout_s", base.health_timeout_s),
        health_failures=_positive_int(table, "health_failures", base.health_failures),
        keep_versions=_positive_int(table, "keep_versions", base.keep_versions),
        worker_pool=_positive_int(table, "worker_pool", base.worker_pool, allow_zero=True),
        worker_start=worker_start,
        sandbox=_sandbox(sandbox_table),
        listen=_string(table, "listen", base.listen),
        state_dir=Path(_string(table, "state_dir", str(base.state_dir))),
        runtime_dir=_string(table, "runtime_dir", base.runtime_dir),
        limits=_limits(limits_table),
        default_policy=default_policy,
        policies=policies,
        stop_timeout_s=_positive_float(table, "stop_timeout_s", base.stop_timeout_s),
        worker_start_timeout_s=_positive_float(table, "worker_start_timeout_s", base.worker_start_timeout_s),
        queue_limit=_positive_int(table, "queue_limit", base.queue_limit),
        batch_max_messages=_positive_int(table, "batch_max_messages", base.batch_max_messages),
        batch_max_bytes=_positive_int(table, "batch_max_bytes", base.batch_max_bytes),
        shutdown_timeout_s=_positive_float(table, "shutdown_timeout_s", base.shutdown_timeout_s),
    )


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_table(table)
