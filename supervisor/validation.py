"""The module validation pipeline: decide whether a module may run as an agent.

Validation is pure (no I/O, no processes) and never raises for a bad module:
every problem becomes a `Finding`, and the `Report` carries all findings of
every stage that could run, so an author sees everything wrong at once.
Stages, in order, with their rule ids:

structure (if any fails, the later stages are skipped: they need a valid module)
  structure.empty          the module has no bytes
  structure.too-large      more bytes than policy.max_module_bytes
  structure.not-wasm       neither a binary (no \\0asm magic) nor WebAssembly text
  structure.wat            WebAssembly text that does not parse
  structure.version        a binary version other than 1, or an unknown layer
  structure.component      a component, when the policy does not deny the
                           component model (the worker runs core modules only)
  structure.invalid        wasmtime rejects the module even with every
                           proposal enabled, or its sections are malformed
security
  security.feature.<name>  the module uses a proposal the policy denies, e.g.
                           security.feature.simd, .threads, .multi-memory,
                           .memory64, .relaxed-simd, .gc, .exceptions;
                           security.feature.component-model for a component
resources
  resources.memory-pages   a memory's minimum exceeds policy.max_memory_pages
                           (ERROR), or its declared maximum does (WARNING)
  resources.memory-limit   a memory's initial size exceeds the agent's memory limit
  resources.table-size     as memory-pages, for table elements
  resources.imports        more imports than policy.max_imports
  resources.functions      more defined functions than policy.max_functions
abi
  abi.missing-export       memory, caxton_alloc or caxton_handle is not exported
  abi.export-signature     an ABI export has the wrong kind or type
  abi.unknown-import       an import that is not one of the caxton.* functions
  abi.import-signature     a caxton.* import with the wrong type
  abi.import-denied        a caxton.* import the policy does not allow
custom
  custom.forbidden-export  an export name matches policy.forbidden_export_patterns
  custom.forbidden-import  "module.name" matches policy.forbidden_import_patterns
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
import threading
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

from caxton.supervisor.policy import KNOWN_FEATURES, Policy, PolicyError
from caxton.supervisor.wasm_reader import (
    MAGIC,
    WASM_PAGE_SIZE,
    ExternKind,
    FuncType,
    Limits,
    ModuleInfo,
    WasmReadError,
    read_module,
)


class Severity(enum.IntEnum):
    """Numbered as caxton.v1.Severity (supervisor/api.py converts them)."""

    INFO = 1
    WARNING = 2
    ERROR = 3


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    message: str


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    # Hash of `wasm` when the module could be read (so WAT and the binary it
    # becomes share an identity), else of the bytes as received.
    module_sha256: str
    policy: str
    wasm: bytes | None  # the binary to run, after WAT conversion; None if unreadable

    @property
    def valid(self) -> bool:
        return not self.errors()

    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    def summary(self) -> str:
        """The error findings on one line, "rule: message; ..."; empty if none."""
        return "; ".join(f"{f.rule}: {f.message}" for f in self.errors())


class ModuleFormatError(ValueError):
    """The bytes are neither a WebAssembly binary nor valid WebAssembly text.

    `rule` is the structure rule the problem corresponds to, so `validate`
    can turn the error into a finding without re-deriving its cause.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def to_wasm(module: bytes) -> bytes:
    """Return the module as a binary, converting WebAssembly text if needed."""
    if module.startswith(MAGIC):
        return module
    if not module:
        raise ModuleFormatError("structure.empty", "module is empty")
    text = _as_text(module)
    if text is None:
        raise ModuleFormatError(
            "structure.not-wasm",
            "module is neither a WebAssembly binary (no \\0asm magic number) "
            "nor WebAssembly text",
        )
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as e:
        raise ModuleFormatError(
            "structure.wat", f"WebAssembly text does not parse: {_wat_message(str(e))}"
        ) from None


def validate(module: bytes, policy: Policy, memory_limit_bytes: int | None = None) -> Report:
    """Check a module (binary or text) against a policy.

    `memory_limit_bytes` is the agent's linear-memory limit; None skips that
    check (the caller resolves "0 = supervisor default" before calling).
    Raises PolicyError only for a policy naming unknown features: that is a
    programming error, not a problem with the module.
    """
    unknown = policy.denied_features - KNOWN_FEATURES
    if unknown:
        raise PolicyError(policy.name, "denied_features", f"unknown feature {', '.join(sorted(unknown))}")
    findings, wasm, info = _check_structure(module, policy)
    if wasm is not None and info is not None:
        findings += _check_features(wasm, policy)
        findings += _check_resources(info, policy, memory_limit_bytes)
        findings += _check_abi(info, policy)
        findings += _check_custom(info, policy)
    digest = hashlib.sha256(wasm if wasm is not None else module).hexdigest()
    return Report(tuple(findings), digest, policy.name, wasm)


# ------------------------------------------------------------------ structure


def _error(rule: str, message: str) -> Finding:
    return Finding(rule, Severity.ERROR, message)


def _check_structure(
    module: bytes, policy: Policy
) -> tuple[list[Finding], bytes | None, ModuleInfo | None]:
    if not module:
        return [_error("structure.empty", "module is empty")], None, None
    if len(module) > policy.max_module_bytes:
        message = (
            f"module is {_size(len(module))}; policy '{policy.name}' allows at most "
            f"{_size(policy.max_module_bytes)}"
        )
        return [_error("structure.too-large", message)], None, None
    try:
        wasm = to_wasm(module)
    except ModuleFormatError as e:
        return [_error(e.rule, str(e))], None, None
    if len(wasm) < 8:
        return [_error("structure.invalid", f"header truncated: {len(wasm)} bytes, need 8")], wasm, None
    version = int.from_bytes(wasm[4:6], "little")
    layer = int.from_bytes(wasm[6:8], "little")
    if layer == 1:
        if "component-model" in policy.denied_features:
            message = f"module is a component, and policy '{policy.name}' denies the component model"
            return [_error("security.feature.component-model", message)], wasm, None
        message = "module is a component; Caxton agents must be core WebAssembly modules"
        return [_error("structure.component", message)], wasm, None
    if layer != 0 or version != 1:
        message = f"unsupported binary version {version} (layer {layer}); expected version 1 core module"
        return [_error("structure.version", message)], wasm, None
    rejection = _feature_rejection(frozenset(), wasm, hashlib.sha256(wasm).digest())
    if rejection is not None:
        return [_error("structure.invalid", f"invalid module: {rejection}")], wasm, None
    try:
        info = read_module(wasm)
    except WasmReadError as e:
        return [_error("structure.invalid", f"malformed module: {e}")], wasm, None
    return [], wasm, info


def _as_text(module: bytes) -> str | None:
    """The module as WAT source if it looks like text, else None.

    It looks like text when it is UTF-8 and its first token, after whitespace
    and ;; comments, opens an s-expression. This separates "text with a
    syntax error" (structure.wat) from "not WebAssembly at all".
    """
    try:
        text = module.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rest = text.lstrip()
    while rest.startswith(";;"):
        rest = rest.partition("\n")[2].lstrip()
    return text if rest.startswith("(") else None


def _wat_message(message: str) -> str:
    # wasmtime's parse errors span several lines with a source excerpt; keep
    # the first line and the position so the finding stays one line.
    first = message.splitlines()[0] if message else "unknown error"
    where = re.search(r"-->\s*\S*?:(\d+):(\d+)", message)
    return f"{first} (line {where[1]}, column {where[2]})" if where else first


# ------------------------------------------------------------------- security


@dataclass(frozen=True)
class _Feature:
    label: str  # what the module uses, for messages
    switches: frozenset[str]  # Config properties turned off to detect its use


_FEATURES: dict[str, _Feature] = {
    # Relaxed SIMD must go off with SIMD: wasmtime 50 aborts the whole process
    # (a Rust panic) when building an engine with SIMD off and relaxed SIMD on.
    "simd": _Feature("SIMD (v128)", frozenset({"wasm_simd", "wasm_relaxed_simd"})),
    "relaxed-simd": _Feature("relaxed SIMD", frozenset({"wasm_relaxed_simd"})),
    "threads": _Feature("threads (shared memory or atomics)", frozenset({"wasm_threads"})),
    "multi-memory": _Feature("multiple memories", frozenset({"wasm_multi_memory"})),
    "memory64": _Feature("64-bit memory", frozenset({"wasm_memory64"})),
    "gc": _Feature("garbage-collected types", frozenset({"wasm_gc"})),
    "exceptions": _Feature("exception handling", frozenset({"wasm_exceptions"})),
    "stack-switching": _Feature("stack switching", frozenset({"wasm_stack_switching"})),
    "custom-page-sizes": _Feature("custom memory page sizes", frozenset({"wasm_custom_page_sizes"})),
    "reference-types": _Feature("reference types", frozenset({"wasm_reference_types"})),
    "function-references": _Feature("typed function references", frozenset({"wasm_function_references"})),
    "tail-call": _Feature("tail calls", frozenset({"wasm_tail_call"})),
    "bulk-memory": _Feature("bulk memory operations", frozenset({"wasm_bulk_memory"})),
    "multi-value": _Feature("multiple results", frozenset({"wasm_multi_value"})),
    "wide-arithmetic": _Feature("wide arithmetic", frozenset({"wasm_wide_arithmetic"})),
}

# Every proposal switch; the structure check enables them all.
_ALL_SWITCHES = frozenset().union(*(f.switches for f in _FEATURES.values()))

# Engines keyed by the switches turned off. Building one takes about a
# millisecond and depends only on the key, so each is built once per process.
# Concurrent first use may build an engine twice; the dict stays consistent.
_engines: dict[frozenset[str], wasmtime.Engine] = {}


def _engine(disabled: frozenset[str]) -> wasmtime.Engine:
    engine = _engines.get(disabled)
    if engine is None:
        config = wasmtime.Config()
        for switch in _ALL_SWITCHES:
            setattr(config, switch, switch not in disabled)
        # Components are recognised from the header; these engines see core modules.
        config.wasm_component_model = False
        # component-model-async is on by default and requires reference types,
        # so with it on, turning reference types off panics inside Engine().
        # The Python Config has no property for it; the C API binding does.
        wasmtime_ffi.wasmtime_config_wasm_component_model_async_set(config.ptr(), False)
        engine = _engines[disabled] = wasmtime.Engine(config)
    return engine


def _rejection(engine: wasmtime.Engine, wasm: bytes) -> str | None:
    """Why the engine rejects the module, or None if it accepts it.

    The one place wasmtime's validation errors are caught and turned into text.
    """
    try:
        wasmtime.Module.validate(engine, wasm)
    except wasmtime.WasmtimeError as e:
        return str(e)
    return None


# Whether wasmtime accepts a module, with all features or with some off,
# depends only on its bytes, and asking took ~2 ms of every deploy of a
# module deployed before (many agents of one module, restores, reloads
# back). Answers are kept by the module's digest, for the most recent ones.
_KNOWN_REJECTIONS: dict[tuple[frozenset[str], bytes], str | None] = {}
_KNOWN_REJECTIONS_MAX = 512
_known_rejections_lock = threading.Lock()  # deploys validate on several threads


def _feature_rejection(switches: frozenset[str], wasm: bytes, digest: bytes) -> str | None:
    key = (switches, digest)
    with _known_rejections_lock:
        if key in _KNOWN_REJECTIONS:
            return _KNOWN_REJECTIONS[key]
    rejection = _rejection(_engine(switches), wasm)
    with _known_rejections_lock:
        if len(_KNOWN_REJECTIONS) >= _KNOWN_REJECTIONS_MAX:
            del _KNOWN_REJECTIONS[next(iter(_KNOWN_REJECTIONS))]  # the oldest
        _KNOWN_REJECTIONS[key] = rejection
    return rejection


def _check_features(wasm: bytes, policy: Policy) -> list[Finding]:
    # The module validated with every proposal on; if it fails with one
    # feature off, it uses that feature.
    denied = sorted(policy.denied_features & _FEATURES.keys())
    if not denied:
        return []
    digest = hashlib.sha256(wasm).digest()
    # First with every denied feature off at once: turning a proposal off
    # only ever rejects more, so a module that passes this uses none of them
    # (nearly every module: one check instead of one per feature, 0.25 ms of
    # a new module's deploy). Only one that fails is checked feature by
    # feature, to name each it uses.
    if _feature_rejection(frozenset().union(*(_FEATURES[name].switches for name in denied)), wasm, digest) is None:
        return []
    findings = []
    for name in denied:
        feature = _FEATURES[name]
        rejection = _feature_rejection(feature.switches, wasm, digest)
        if rejection is not None:
            message = f"module uses {feature.label}, which policy '{policy.name}' denies ({rejection})"
            findings.append(_error(f"security.feature.{name}", message))
    return findings


# ------------------------------------------------------------------ resources


def _check_resources(info: ModuleInfo, policy: Policy, memory_limit_bytes: int | None) -> list[Finding]:
    findings = []
    page_cap = policy.max_memory_pages * WASM_PAGE_SIZE
    for index, memory in enumerate(info.all_memories()):
        cap = f"policy '{policy.name}' allows at most {policy.max_memory_pages} pages ({_size(page_cap)})"
        if memory.min * memory.page_size > page_cap:
            message = f"memory {index} declares a minimum of {_pages(memory, memory.min)}; {cap}"
            findings.append(_error("resources.memory-pages", message))
        if memory.max is not None and memory.max * memory.page_size > page_cap:
            # Only a warning: a maximum is a ceiling the runtime limits enforce
            # anyway, and toolchains often declare the 4 GiB one by default.
            message = f"memory {index} declares a maximum of {_pages(memory, memory.max)}; {cap}"
            findings.append(Finding("resources.memory-pages", Severity.WARNING, message))
        # Checked per memory, as the runtime's limit applies to each memory.
        if memory_limit_bytes is not None and memory.min * memory.page_size > memory_limit_bytes:
            message = (
                f"memory {index} needs {_pages(memory, memory.min)} at instantiation; "
                f"the agent's memory limit is {_size(memory_limit_bytes)}"
            )
            findings.append(_error("resources.memory-limit", message))
    for index, table in enumerate(info.all_tables()):
        cap = f"policy '{policy.name}' allows at most {policy.max_table_elements}"
        if table.limits.min > policy.max_table_elements:
            message = f"table {index} declares a minimum of {table.limits.min} elements; {cap}"
            findings.append(_error("resources.table-size", message))
        if table.limits.max is not None and table.limits.max > policy.max_table_elements:
            message = f"table {index} declares a maximum of {table.limits.max} elements; {cap}"
            findings.append(Finding("resources.table-size", Severity.WARNING, message))
    if len(info.imports) > policy.max_imports:
        message = (
            f"module has {len(info.imports)} imports; "
            f"policy '{policy.name}' allows at most {policy.max_imports}"
        )
        findings.append(_error("resources.imports", message))
    if policy.max_functions is not None and len(info.functions) > policy.max_functions:
        message = (
            f"module defines {len(info.functions)} functions; "
            f"policy '{policy.name}' allows at most {policy.max_functions}"
        )
        findings.append(_error("resources.functions", message))
    return findings


def _pages(memory: Limits, count: int) -> str:
    return f"{count} pages ({_size(count * memory.page_size)})"


def _size(count: int) -> str:
    for unit, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if count >= unit:
            return f"{count / unit:.4g} {suffix}"
    return f"{count} bytes"


# ------------------------------------------------------------------------ abi

_REQUIRED_EXPORTS = ("memory", "caxton_alloc", "caxton_handle")

_ABI_EXPORTS = {
    "caxton_alloc": FuncType(("i32",), ("i32",)),
    "caxton_handle": FuncType(("i32", "i32"), ("i64",)),
    "caxton_init": FuncType((), ("i32",)),
    "caxton_shutdown": FuncType((), ()),
}

# Keys match supervisor.policy.CAXTON_IMPORTS.
_ABI_IMPORTS = {
    "caxton.log": FuncType(("i32", "i32", "i32"), ()),
    "caxton.now_ms": FuncType((), ("i64",)),
    "caxton.send": FuncType(("i32", "i32", "i32", "i32"), ("i32",)),
    "caxton.send_ex": FuncType(("i32", "i32", "i32", "i32"), ("i32",)),
    "caxton.message_info": FuncType(("i32", "i32"), ("i32",)),
}
# Keys match supervisor.policy.TEST_IMPORTS: known, with their types, but
# denied unless a policy allows them by name.
_TEST_IMPORTS = {
    "caxton_test.escape": FuncType(("i32", "i32"), ("i32",)),
}


def _check_abi(info: ModuleInfo, policy: Policy) -> list[Finding]:
    findings = []
    exports = {export.name: export for export in info.exports}
    for name in _REQUIRED_EXPORTS:
        if name not in exports:
            findings.append(_error("abi.missing-export", f"required export '{name}' is missing"))
    memory = exports.get("memory")
    if memory is not None and memory.kind is not ExternKind.MEMORY:
        message = f"export 'memory' is a {memory.kind}; expected a memory"
        findings.append(_error("abi.export-signature", message))
    for name, expected in _ABI_EXPORTS.items():
        export = exports.get(name)
        if export is None:
            continue
        if export.kind is not ExternKind.FUNC:
            message = f"export '{name}' is a {export.kind}; expected a function {expected}"
            findings.append(_error("abi.export-signature", message))
            continue
        actual = info.func_type(export.index)
        if actual != expected:
            message = f"export '{name}' has type {actual}; expected {expected}"
            findings.append(_error("abi.export-signature", message))
    known = ", ".join(sorted(_ABI_IMPORTS))
    for imported in info.imports:
        name = imported.qualified_name
        provided = _ABI_IMPORTS.get(name) or _TEST_IMPORTS.get(name)
        if provided is None:
            message = f"import '{name}' is not part of the Caxton ABI; agents may import only {known}"
            findings.append(_error("abi.unknown-import", message))
            continue
        if imported.kind is not ExternKind.FUNC:
            message = f"import '{name}' is a {imported.kind}; the Caxton ABI provides only functions"
            findings.append(_error("abi.unknown-import", message))
            continue
        actual = info.type_at(imported.type_index)
        if actual != provided:
            message = f"import '{name}' has type {actual}; expected {provided}"
            findings.append(_error("abi.import-signature", message))
        if name not in policy.allowed_imports:
            allowed = ", ".join(sorted(policy.allowed_imports)) or "none"
            message = f"import '{name}' is not allowed by policy '{policy.name}' (allowed: {allowed})"
            findings.append(_error("abi.import-denied", message))
    return findings


# --------------------------------------------------------------------- custom


def _check_custom(info: ModuleInfo, policy: Policy) -> list[Finding]:
    findings = []
    for export in info.exports:
        pattern = _first_match(export.name, policy.forbidden_export_patterns)
        if pattern is not None:
            message = f"export '{export.name}' matches forbidden pattern '{pattern}'"
            findings.append(_error("custom.forbidden-export", message))
    for imported in info.imports:
        pattern = _first_match(imported.qualified_name, policy.forbidden_import_patterns)
        if pattern is not None:
            message = f"import '{imported.qualified_name}' matches forbidden pattern '{pattern}'"
            findings.append(_error("custom.forbidden-import", message))
    return findings


def _first_match(name: str, patterns: tuple[str, ...]) -> str | None:
    # fnmatchcase: names are case-sensitive on every platform.
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
