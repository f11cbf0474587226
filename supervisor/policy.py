"""Validation policies: the limits and permissions a module is checked against.

A policy is plain data so that it can be named in a deploy request, printed,
compared and loaded from the supervisor's TOML configuration. The checks that
apply it live in `supervisor.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings import ConfigError, Table

KIB = 1024
MIB = 1024 * KIB

# Host functions of the Caxton ABI, as "module.name". A policy may allow only
# a subset of them; nothing else can ever be imported.
CAXTON_IMPORTS = frozenset({"caxton.log", "caxton.now_ms", "caxton.send", "caxton.send_ex", "caxton.message_info"})
# Test-only host functions (worker/escape_probe.py): no built-in policy
# allows them, a policy of the config may (for the containment tests), and
# a worker links them only when its environment asks for them.
TEST_IMPORTS = frozenset({"caxton_test.escape"})

# Proposals a policy can deny, by the names used in `security.feature.<name>`.
KNOWN_FEATURES = frozenset(
    {
        "simd",
        "relaxed-simd",
        "threads",
        "multi-memory",
        "memory64",
        "gc",
        "exceptions",
        "stack-switching",
        "custom-page-sizes",
        "component-model",
        "reference-types",
        "function-references",
        "tail-call",
        "bulk-memory",
        "multi-value",
        "wide-arithmetic",
    }
)

# Denied by `deny_unsafe_features`. Why each is unsafe for an agent:
#   simd, relaxed-simd  a large, JIT-heavy surface; relaxed SIMD results differ
#                       between CPUs, breaking reproducible agents
#   threads             shared memory outlives a message and is visible to
#                       other threads, defeating per-message isolation
#   multi-memory, memory64, custom-page-sizes
#                       memory accounting assumes one 32-bit memory of 64 KiB pages
#   gc                  objects live on a host-managed heap outside the memory limit
#   exceptions, stack-switching
#                       control flow that unwinds or suspends across host calls
#   component-model     agents are core modules; the worker cannot run components
# Reference types, bulk memory and multi-value are left allowed: current Rust
# and C toolchains emit them by default.
UNSAFE_FEATURES = frozenset(
    {
        "simd",
        "relaxed-simd",
        "threads",
        "multi-memory",
        "memory64",
        "gc",
        "exceptions",
        "stack-switching",
        "custom-page-sizes",
        "component-model",
    }
)


class PolicyError(ValueError):
    """A policy definition is malformed; `field` names the offending field."""

    def __init__(self, policy: str, field: str, problem: str) -> None:
        where = f"{field}: " if field else ""
        super().__init__(f"policy '{policy}': {where}{problem}")
        self.policy = policy
        self.field = field


@dataclass(frozen=True)
class Policy:
    """Limits and permissions for one class of agents.

    Frozen because one policy object is shared by every validation that
    names it, possibly from several threads at once.
    """

    name: str
    max_module_bytes: int
    max_memory_pages: int  # 64 KiB pages; caps a memory's minimum and (as a warning) its maximum
    max_table_elements: int
    max_imports: int
    allowed_imports: frozenset[str]  # subset of CAXTON_IMPORTS | TEST_IMPORTS
    deny_unsafe_features: bool
    denied_features: frozenset[str]  # what the validator checks; see read_policy
    max_functions: int | None = None  # functions the module defines; None = unlimited
    forbidden_export_patterns: tuple[str, ...] = ()  # fnmatch patterns on export names
    forbidden_import_patterns: tuple[str, ...] = ()  # fnmatch patterns on "module.name"


BUILTIN_POLICIES: dict[str, Policy] = {
    "strict": Policy(
        name="strict",
        max_module_bytes=1 * MIB,
        max_memory_pages=16,  # 1 MiB
        max_table_elements=1_024,
        max_imports=10,
        allowed_imports=frozenset({"caxton.log"}),
        deny_unsafe_features=True,
        denied_features=UNSAFE_FEATURES,
    ),
    "default": Policy(
        name="default",
        max_module_bytes=16 * MIB,
        max_memory_pages=1_024,  # 64 MiB
        max_table_elements=10_000,
        max_imports=16,
        allowed_imports=CAXTON_IMPORTS,
        deny_unsafe_features=True,
        denied_features=UNSAFE_FEATURES,
    ),
    "permissive": Policy(
        name="permissive",
        max_module_bytes=64 * MIB,
        max_memory_pages=16_384,  # 1 GiB
        max_table_elements=100_000,
        max_imports=64,
        allowed_imports=CAXTON_IMPORTS,
        deny_unsafe_features=False,
        denied_features=frozenset(),
    ),
}


def policy_from_config(name: str, table: dict[str, Any]) -> Policy:
    """Build the policy `name` from a TOML table whose keys are Policy field
    names (see read_policy); a bad field raises PolicyError naming it."""
    try:
        return read_policy(name, Table(table))
    except ConfigError as exc:
        raise PolicyError(name, exc.field, exc.problem) from None


def read_policy(name: str, table: Table) -> Policy:
    """The policy `name` from `table`, e.g. the config's [policies.<name>].

    Fields left out take the value of the built-in "default" policy, except
    `denied_features`, which follows `deny_unsafe_features` unless listed
    explicitly (the explicit list then wins).
    """
    if not name:
        raise ConfigError(table.path, "a policy needs a non-empty name")
    if "name" in table:
        raise table.error("name", "a policy is named by its table key, not by a 'name' field")
    base = BUILTIN_POLICIES["default"]
    deny_unsafe = table.flag("deny_unsafe_features", base.deny_unsafe_features)
    derived = UNSAFE_FEATURES if deny_unsafe else frozenset()
    policy = Policy(
        name=name,
        max_module_bytes=table.integer("max_module_bytes", base.max_module_bytes, minimum=1),
        max_memory_pages=table.integer("max_memory_pages", base.max_memory_pages, minimum=0),
        max_table_elements=table.integer("max_table_elements", base.max_table_elements, minimum=0),
        max_imports=table.integer("max_imports", base.max_imports, minimum=0),
        allowed_imports=frozenset(table.strings("allowed_imports", base.allowed_imports,
                                                options=CAXTON_IMPORTS | TEST_IMPORTS)),
        deny_unsafe_features=deny_unsafe,
        denied_features=frozenset(table.strings("denied_features", derived, options=KNOWN_FEATURES)),
        max_functions=table.integer("max_functions", base.max_functions, minimum=0),
        forbidden_export_patterns=_patterns(table, "forbidden_export_patterns", base.forbidden_export_patterns),
        forbidden_import_patterns=_patterns(table, "forbidden_import_patterns", base.forbidden_import_patterns),
    )
    table.finish()
    return policy


def _patterns(table: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    patterns = tuple(table.strings(key, default))
    # fnmatch("", name) matches only an empty name: an empty pattern is a slip.
    if "" in patterns:
        raise table.error(key, "patterns must not be empty")
    return patterns
