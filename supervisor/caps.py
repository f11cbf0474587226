"""Operator caps: the most any client may ask of the supervisor.

Every value a client supplies for an agent (its limits, replicas and label)
is checked against the operator's `[caps]` before anything is stored or
started, and every deploy or reload that would grow what the host has
promised to agents is checked against the host-wide quotas (agents, total
workers, committed memory). A value above its cap is INVALID_ARGUMENT; a
quota that would be passed is RESOURCE_EXHAUSTED. Either error names the
request field, the value and the cap (and the config key that sets it).

Apart from the caps, which the operator chooses, some bounds hold whatever
the configuration says: what the worker protocol, the kernel's limits and
the supervisor's own arithmetic can carry (`unrunnable`). The caps may not be
set above them, and a stored record outside them cannot be started at all.

Pure: no I/O beyond reading the host's memory size for a default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from caxton.contract import MAX_GRPC_MESSAGE_BYTES

from .errors import InvalidArgument, ResourceExhausted
from .settings import ConfigError, Table

if TYPE_CHECKING:
    from .config import Limits
    from .restart import RestartSettings

MIB = 1 << 20
GIB = 1 << 30

# Limits are ceilings, not use (an agent limited to 64 MiB typically touches
# a few MiB), so by default the memory promised to agents may add up to
# several times the host's RAM.
COMMITTED_MEMORY_PER_RAM = 4

# Room for a message's envelope (sender, receiver, ids) and the gRPC framing
# around its content: a message of max_message_bytes must still fit in one
# gRPC message.
ENVELOPE_BYTES = 1 * MIB
MOST_MESSAGE_BYTES = MAX_GRPC_MESSAGE_BYTES - ENVELOPE_BYTES

# What the supervisor can carry at all, whatever the caps say.
MOST_MEMORY_BYTES = 1 << 48  # far above any host; the worker's overhead can be added without overflow
MOST_FUEL = (1 << 63) - 1  # wasmtime's fuel counter is a signed 64-bit integer
MOST_UINT32 = (1 << 32) - 1  # timeout_ms and max_message_bytes travel to the worker as uint32
MOST_REPLICAS = 1024  # one process each: more is a corrupted record, not a wish
# Labels travel in every status and in ListAgents for each kept version: this
# keeps a full listing far below the gRPC message limit. Longer labels stored
# before the caps existed are shown cut to this length.
MOST_LABEL_LENGTH = 4096


def host_memory_bytes() -> int:
    """Physical memory of this host."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Caps:
    """The operator's caps ([caps] in the config). Per agent instance or
    request: memory_bytes .. label_length; host-wide quotas: agents,
    workers (replicas summed over agents) and committed_memory_bytes
    (memory_bytes times replicas, summed over agents)."""

    memory_bytes: int = 4 * GIB  # all a 32-bit wasm memory can address
    # Per message. The wall-clock cap below ends a message long before this
    # (days of CPU) runs out; fuel is a backstop, not the bound.
    fuel: int = 10**15
    timeout_ms: int = 60_000
    max_message_bytes: int = 16 * MIB
    replicas: int = 64
    label_length: int = 256  # characters, printable ones only
    agents: int = 1000
    workers: int = 1000  # ~8 MiB of RAM each in fork mode (bench_scale), plus the agent's own
    committed_memory_bytes: int = field(default_factory=lambda: COMMITTED_MEMORY_PER_RAM * host_memory_bytes())


class LimitValues(Protocol):
    """Limits or LimitOverrides: each field an int, or None for "not given"."""

    @property
    def memory_bytes(self) -> int | None: ...
    @property
    def fuel(self) -> int | None: ...
    @property
    def timeout_ms(self) -> int | None: ...
    @property
    def max_message_bytes(self) -> int | None: ...


# (field of Limits and of Caps, its key in [caps] and [limits])
_LIMIT_FIELDS = (
    ("memory_bytes", "memory"),
    ("fuel", "fuel"),
    ("timeout_ms", "timeout_ms"),
    ("max_message_bytes", "max_message_bytes"),
)


def _figure(value: int, *, size: bool) -> str:
    """A value as written in errors: sizes also in binary units when whole."""
    if size and value >= 1 << 10:
        for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if value % (1 << shift) == 0:
                return f"{value} ({value >> shift} {unit})"
    return str(value)


def _over(request_field: str, value: int, cap: int, key: str, *, size: bool = False) -> str:
    return (f"{request_field}: {_figure(value, size=size)} is above the cap of {_figure(cap, size=size)} "
            f"(caps.{key} in the supervisor's config)")


# ------------------------------------------------------------ per request


def check_limits(caps: Caps, limits: LimitValues) -> None:
    """Every limit a request sets (None = not set) is at least 1 and within
    its cap; InvalidArgument names the first that is not."""
    for name, key in _LIMIT_FIELDS:
        value = getattr(limits, name)
        if value is None:
            continue
        if value < 1:
            # 0 would mean "unmetered" or "no timeout": not for a client to choose.
            raise InvalidArgument(f"limits.{name}: expected at least 1, got {value}")
        cap = getattr(caps, name)
        if value > cap:
            raise InvalidArgument(_over(f"limits.{name}", value, cap, key, size=name.endswith("bytes")))


def check_replicas(caps: Caps, replicas: int) -> None:
    if replicas < 1:
        raise InvalidArgument(f"replicas: expected at least 1, got {replicas}")
    if replicas > caps.replicas:
        raise InvalidArgument(_over("replicas", replicas, caps.replicas, "replicas"))


def check_label(caps: Caps, label: str) -> None:
    """At most caps.label_length characters, all printable (a label is shown
    on terminals and in logs: no control characters, no line breaks)."""
    if len(label) > caps.label_length:
        raise InvalidArgument(
            f"label: {len(label)} characters is above the cap of {caps.label_length} "
            "(caps.label_length in the supervisor's config)")
    for index, char in enumerate(label):
        if not char.isprintable():
            raise InvalidArgument(f"label: only printable characters are allowed; found {char!r} at {index}")


# ------------------------------------------------------------ host-wide quotas


@dataclass(frozen=True)
class Usage:
    """What agents hold of the host-wide quotas."""

    agents: int = 0
    workers: int = 0  # replicas, summed
    memory_bytes: int = 0  # memory limit times replicas, summed

    @staticmethod
    def of(memory_bytes: int, replicas: int) -> Usage:
        """What one agent holds."""
        return Usage(1, replicas, memory_bytes * replicas)

    @staticmethod
    def total(holdings: Iterable[tuple[int, int]]) -> Usage:
        """What agents hold together, from each one's (memory_bytes,
        replicas): the sum of `Usage.of` over them, in plain integers. It is
        taken over every agent under the registry's lock (admission.py,
        after an agent's version changed), where a dataclass per agent
        cost about eight times as much."""
        agents = workers = memory_bytes = 0
        for memory, replicas in holdings:
            agents += 1
            workers += replicas
            memory_bytes += memory * replicas
        return Usage(agents, workers, memory_bytes)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.agents + other.agents, self.workers + other.workers,
                     self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.agents - other.agents, self.workers - other.workers,
                     self.memory_bytes - other.memory_bytes)


def check_quota(caps: Caps, held: Usage, change: Usage) -> None:
    """ResourceExhausted if `change` would take `held` over a quota. Only a
    figure that grows is checked: a reload that keeps or lowers a figure
    passes even where caps were lowered below what is held already."""
    after = held + change
    if change.agents > 0 and after.agents > caps.agents:
        raise ResourceExhausted(
            f"agents: the supervisor holds {held.agents} agents and its cap is {caps.agents} "
            "(caps.agents in the supervisor's config); remove an agent first")
    if change.workers > 0 and after.workers > caps.workers:
        raise ResourceExhausted(
            f"replicas: {change.workers} more workers would make {after.workers}, above the cap of "
            f"{caps.workers} on all agents' replicas together (caps.workers in the supervisor's config)")
    if change.memory_bytes > 0 and after.memory_bytes > caps.committed_memory_bytes:
        raise ResourceExhausted(
            f"limits.memory_bytes x replicas: {_figure(change.memory_bytes, size=True)} more would commit "
            f"{_figure(after.memory_bytes, size=True)} to agents, above the cap of "
            f"{_figure(caps.committed_memory_bytes, size=True)} (caps.committed_memory in the supervisor's config)")


# ------------------------------------------------------------ stored records


def unrunnable(limits: Limits, replicas: object, restart: RestartSettings) -> str:
    """Why a stored agent with these limits, replicas and restart policy
    cannot be served at all ("" if it can): a value the workers cannot
    carry, or one its status could not report. Today's caps are not applied
    here: the operator accepted the record under the caps of its day
    (restore.py)."""
    for name, most in (("memory_bytes", MOST_MEMORY_BYTES), ("fuel", MOST_FUEL),
                       ("timeout_ms", MOST_UINT32), ("max_message_bytes", MOST_UINT32)):
        value = getattr(limits, name)
        # 0 fuel is unmetered and 0 timeout_ms none: operators may configure them.
        least = 0 if name in ("fuel", "timeout_ms") else 1
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            return f"limits.{name} is {value!r}, outside what can run ({least} to {most})"
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MOST_REPLICAS:
        return f"replicas is {replicas!r}, outside what can run (1 to {MOST_REPLICAS})"
    # The API reports these in uint32 milliseconds, or seconds, or a count.
    for name, scale in (("initial_delay_s", 1000), ("max_delay_s", 1000), ("breaker_cooldown_s", 1000),
                        ("breaker_cooldown_max_s", 1000), ("reset_after_s", 1), ("window_s", 1),
                        ("max_failures", 1)):
        if round(getattr(restart, name) * scale) > MOST_UINT32:
            return f"restart.{name} is {getattr(restart, name)!r}, more than a status can report"
    return ""


def over_caps(caps: Caps, limits: Limits, replicas: int) -> list[str]:
    """Every way a stored agent is above today's caps (for a warning)."""
    problems = []
    for name, key in _LIMIT_FIELDS:
        value, cap = getattr(limits, name), getattr(caps, name)
        if value > cap:
            problems.append(f"limits.{name} = {value} (caps.{key} = {cap})")
    if replicas > caps.replicas:
        problems.append(f"replicas = {replicas} (caps.replicas = {caps.replicas})")
    return problems


# ------------------------------------------------------------ configuration


def read_caps(table: Table) -> Caps:
    """The caps from `table` (the config's [caps]); each within what the
    supervisor can carry, and max_message_bytes below the gRPC limit."""
    base = Caps()
    caps = Caps(
        memory_bytes=table.size("memory", base.memory_bytes, minimum=1),
        fuel=table.integer("fuel", base.fuel, minimum=1),
        timeout_ms=table.integer("timeout_ms", base.timeout_ms, minimum=1),
        max_message_bytes=table.size("max_message_bytes", base.max_message_bytes, minimum=1),
        replicas=table.integer("replicas", base.replicas, minimum=1),
        label_length=table.integer("label_length", base.label_length, minimum=0),
        agents=table.integer("agents", base.agents, minimum=1),
        workers=table.integer("workers", base.workers, minimum=1),
        committed_memory_bytes=table.size("committed_memory", base.committed_memory_bytes, minimum=1),
    )
    table.finish()
    for key, value, most, why in (
        ("memory", caps.memory_bytes, MOST_MEMORY_BYTES, "what a memory limit can carry"),
        ("fuel", caps.fuel, MOST_FUEL, "wasmtime's fuel counter"),
        ("timeout_ms", caps.timeout_ms, MOST_UINT32, "what the worker protocol carries"),
        ("max_message_bytes", caps.max_message_bytes, MOST_MESSAGE_BYTES,
         f"the gRPC message limit of {MAX_GRPC_MESSAGE_BYTES >> 20} MiB less {ENVELOPE_BYTES >> 20} MiB "
         "for the envelope"),
        ("replicas", caps.replicas, MOST_REPLICAS, "the most workers one agent may have"),
        ("label_length", caps.label_length, MOST_LABEL_LENGTH, "what a listing of all agents can carry"),
    ):
        if value > most:
            raise table.error(key, f"expected at most {most} ({why}), got {value}")
    return caps


def check_defaults(caps: Caps, limits: Limits) -> None:
    """The config's default [limits] within its [caps]: an agent deployed
    without limits of its own must not be over them. 0 fuel (unmetered) and
    0 timeout_ms (none) stay the operator's choice."""
    for name, key in _LIMIT_FIELDS:
        value, cap = getattr(limits, name), getattr(caps, name)
        if value > cap:
            raise ConfigError(f"limits.{key}", f"{value} is above caps.{key} ({cap})")
