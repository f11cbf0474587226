"""Validation policies: the limits and permissions a module is checked against.

A policy is plain data so that it can be named in a deploy request, printed,
compared and loaded from the supervisor's TOML configuration. The checks that
apply it live in `supervisor.validation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KIB = 1024
MIB = 1024 * KIB

# Host functions of the Caxton ABI, as "module.name". A policy may allow only
# a subset of them; nothing else can ever be imported.
CAXTON_IMPORTS = frozenset({"caxton.log", "caxton.now_ms", "caxton.send", "caxton.message_info"})

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
        super().__init__(f"policy '{policy}': {field}: {problem}")
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
    allowed_imports: frozenset[str]  # subset of CAXTON_IMPORTS
    deny_unsafe_features: bool
    denied_features: frozenset[str]  # what the validator checks; see policy_from_config
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
    """Build a policy from a TOML table whose keys are Policy field names.

    Fields left out take the value of the built-in "default" policy, except
    `denied_features`, which follows `deny_unsafe_features` unless listed
    explicitly (the explicit list then wins). Each field has one small check,
    so a bad configuration is reported by the field that is wrong.
    """
    if not isinstance(name, str) or not name:
        raise PolicyError(str(name), "name", "must be a non-empty string")
    if not isinstance(table, dict):
        raise PolicyError(name, "(table)", f"must be a table of fields, got {type(table).__name__}")
    if "name" in table:
        raise PolicyError(name, "name", "a policy is named by its table key, not by a 'name' field")
    values: dict[str, Any] = {}
    for key, value in table.items():
        check = _FIELD_CHECKS.get(key)
        if check is None:
            expected = ", ".join(sorted(_FIELD_CHECKS))
            raise PolicyError(name, key, f"unknown field; expected one of {expected}")
        problem, converted = check(value)
        if problem:
            raise PolicyError(name, key, problem)
        values[key] = converted
    base = BUILTIN_POLICIES["default"]
    deny_unsafe = values.get("deny_unsafe_features", base.deny_unsafe_features)
    derived = UNSAFE_FEATURES if deny_unsafe else frozenset()
    return Policy(
        name=name,
        max_module_bytes=values.get("max_module_bytes", base.max_module_bytes),
        max_memory_pages=values.get("max_memory_pages", base.max_memory_pages),
        max_table_elements=values.get("max_table_elements", base.max_table_elements),
        max_imports=values.get("max_imports", base.max_imports),
        allowed_imports=values.get("allowed_imports", base.allowed_imports),
        deny_unsafe_features=deny_unsafe,
        denied_features=values.get("denied_features", derived),
        max_functions=values.get("max_functions", base.max_functions),
        forbidden_export_patterns=values.get("forbidden_export_patterns", base.forbidden_export_patterns),
        forbidden_import_patterns=values.get("forbidden_import_patterns", base.forbidden_import_patterns),
    )


# A check returns (problem, converted value); an empty problem means accepted.
_Check = Callable[[Any], tuple[str, Any]]


def _count(minimum: int) -> _Check:
    def check(value: Any) -> tuple[str, Any]:
        # bool is an int subclass; `true` is never a meaningful count.
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {type(value).__name__}", None
        if value < minimum:
            return f"must be at least {minimum}, got {value}", None
        return "", value

    return check


def _flag(value: Any) -> tuple[str, Any]:
    if not isinstance(value, bool):
        return f"must be true or false, got {type(value).__name__}", None
    return "", value


def _strings(value: Any) -> tuple[str, list[str]]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "must be a list of strings", []
    return "", value


def _subset_of(known: frozenset[str], what: str) -> _Check:
    def check(value: Any) -> tuple[str, Any]:
        problem, items = _strings(value)
        if problem:
            return problem, None
        unknown = sorted(set(items) - known)
        if unknown:
            return f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}", None
        return "", frozenset(items)

    return check


def _patterns(value: Any) -> tuple[str, Any]:
    problem, items = _strings(value)
    if problem:
        return problem, None
    if any(not item for item in items):
        return "patterns must not be empty", None
    return "", tuple(items)


_FIELD_CHECKS: dict[str, _Check] = {
    "max_module_bytes": _count(1),
    "max_memory_pages": _count(0),
    "max_table_elements": _count(0),
    "max_imports": _count(0),
    "allowed_imports": _subset_of(CAXTON_IMPORTS, "import"),
    "deny_unsafe_features": _flag,
    "denied_features": _subset_of(KNOWN_FEATURES, "feature"),
    "max_functions": _count(0),
    "forbidden_export_patterns": _patterns,
    "forbidden_import_patterns": _patterns,
}
