"""Unit tests for the validation pipeline, rule by rule.

Modules are built inline from WAT so each test shows exactly what it breaks.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import wasmtime

from caxton.supervisor import validation
from caxton.supervisor.policy import (
    BUILTIN_POLICIES,
    CAXTON_IMPORTS,
    KNOWN_FEATURES,
    UNSAFE_FEATURES,
    Policy,
    PolicyError,
    policy_from_config,
)
from caxton.supervisor.validation import ModuleFormatError, Report, Severity, to_wasm, validate
from caxton.supervisor.wasm_reader import ExternKind, FuncType, Limits, WasmReadError, read_module

STRICT = BUILTIN_POLICIES["strict"]
DEFAULT = BUILTIN_POLICIES["default"]
PERMISSIVE = BUILTIN_POLICIES["permissive"]

ECHO_AGENT = """
(module
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; Bump allocator: the host writes each message into the returned block.
  (func (export "caxton_alloc") (param $size i32) (result i32)
    (local $block i32)
    (local.set $block (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $block))
  ;; Echo: the reply is the message itself, returned as (ptr << 32) | len.
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 1) (local.get $ptr) (local.get $len))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
  (func (export "caxton_init") (result i32) (i32.const 0))
  (func (export "caxton_shutdown")))
"""

HANDLE = '(func (export "caxton_handle") (param i32 i32) (result i64) i64.const 0)'


def agent(
    *,
    imports: str = "",
    memory: str = '(memory (export "memory") 1)',
    handle: str = HANDLE,
    extra: str = "",
) -> bytes:
    """A minimal valid agent with one part swapped out."""
    return bytes(
        wasmtime.wat2wasm(
            f"""(module {imports} {memory}
              (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
              {handle} {extra})"""
        )
    )


def rules(report: Report, severity: Severity | None = None) -> list[str]:
    return [f.rule for f in report.findings if severity is None or f.severity is severity]


def finding(report: Report, rule: str) -> validation.Finding:
    matches = [f for f in report.findings if f.rule == rule]
    assert matches, f"no {rule} finding in {report.findings}"
    return matches[0]


def with_(policy: Policy, **changes: object) -> Policy:
    return dataclasses.replace(policy, **changes)


# ------------------------------------------------------------------ passing


@pytest.mark.parametrize("policy", [STRICT, DEFAULT, PERMISSIVE], ids=lambda p: p.name)
def test_echo_agent_passes_every_builtin_policy(policy: Policy) -> None:
    report = validate(ECHO_AGENT.encode(), policy)
    assert report.findings == ()
    assert report.valid
    assert report.policy == policy.name
    assert report.summary() == ""


def test_text_and_binary_give_the_same_report() -> None:
    binary = bytes(wasmtime.wat2wasm(ECHO_AGENT))
    from_text = validate(ECHO_AGENT.encode(), DEFAULT)
    from_binary = validate(binary, DEFAULT)
    assert from_text.wasm == from_binary.wasm == binary
    assert from_text.module_sha256 == from_binary.module_sha256 == hashlib.sha256(binary).hexdigest()


def test_severity_numbers_match_the_proto() -> None:
    from caxton.v1 import caxton_pb2

    for severity in Severity:
        assert caxton_pb2.Severity.Value(f"SEVERITY_{severity.name}") == severity


# ---------------------------------------------------------------- structure


def test_to_wasm_converts_text_and_passes_binaries_through() -> None:
    binary = to_wasm(b"(module)")
    assert binary.startswith(b"\0asm")
    assert to_wasm(binary) is binary


@pytest.mark.parametrize(
    ("module", "rule"),
    [(b"", "structure.empty"), (b"not wasm", "structure.not-wasm"), (b"(module (func (foo)))", "structure.wat")],
)
def test_to_wasm_raises_module_format_error(module: bytes, rule: str) -> None:
    with pytest.raises(ModuleFormatError) as caught:
        to_wasm(module)
    assert caught.value.rule == rule
    assert isinstance(caught.value, ValueError)


def test_empty_module() -> None:
    report = validate(b"", DEFAULT)
    assert rules(report) == ["structure.empty"]
    assert report.wasm is None
    assert report.module_sha256 == hashlib.sha256(b"").hexdigest()


def test_too_large_module_is_rejected_before_parsing() -> None:
    report = validate(agent(), with_(DEFAULT, max_module_bytes=16))
    assert rules(report) == ["structure.too-large"]
    assert "policy 'default' allows at most 16 bytes" in report.findings[0].message
    assert report.wasm is None


@pytest.mark.parametrize("module", [b"not wasm", b"\xff\xfe\x00garbage", b"  ;; comment only\n"])
def test_not_wasm(module: bytes) -> None:
    report = validate(module, DEFAULT)
    assert rules(report) == ["structure.not-wasm"]
    assert "\\0asm" in report.findings[0].message


def test_wat_that_does_not_parse_reports_the_position() -> None:
    report = validate(b";; agent\n(module\n  (func (bogus)))", DEFAULT)
    assert rules(report) == ["structure.wat"]
    assert "line 3" in report.findings[0].message
    assert "\n" not in report.findings[0].message


def test_unsupported_binary_version() -> None:
    report = validate(b"\0asm\x02\x00\x00\x00", DEFAULT)
    assert rules(report) == ["structure.version"]
    assert "version 2" in report.findings[0].message


def test_truncated_module_is_invalid_with_wasmtimes_message() -> None:
    report = validate(agent()[:-3], DEFAULT)
    assert rules(report) == ["structure.invalid"]
    assert "end-of-file" in report.findings[0].message


def test_truncated_header_is_invalid() -> None:
    assert rules(validate(b"\0asm\x01", DEFAULT)) == ["structure.invalid"]


COMPONENT = b"\0asm\x0d\x00\x01\x00"


def test_component_is_a_denied_feature_under_default() -> None:
    report = validate(COMPONENT, DEFAULT)
    assert rules(report) == ["security.feature.component-model"]


def test_component_cannot_run_even_when_allowed() -> None:
    report = validate(COMPONENT, PERMISSIVE)
    assert rules(report) == ["structure.component"]
    assert not report.valid


# ----------------------------------------------------------------- security

FEATURE_MODULES = {
    "simd": {"extra": "(func (result v128) v128.const i64x2 0 0)"},
    "relaxed-simd": {
        "extra": "(func (param v128 v128) (result v128) local.get 0 local.get 1 i8x16.relaxed_swizzle)"
    },
    "threads": {"memory": '(memory (export "memory") 1 1 shared)'},
    "multi-memory": {"extra": "(memory 1)"},
    "memory64": {"memory": '(memory (export "memory") i64 1)'},
    "gc": {"extra": "(type (struct (field i32)))"},
    "exceptions": {"extra": "(tag)"},
    "custom-page-sizes": {"memory": '(memory (export "memory") 65536 (pagesize 1))'},
    "stack-switching": {"extra": "(type $f (func)) (type (cont $f))"},
}


@pytest.mark.parametrize("feature", sorted(FEATURE_MODULES))
def test_unsafe_feature_denied_by_default_allowed_by_permissive(feature: str) -> None:
    module = agent(**FEATURE_MODULES[feature])
    denied = validate(module, DEFAULT)
    assert f"security.feature.{feature}" in rules(denied)
    assert "policy 'default' denies" in finding(denied, f"security.feature.{feature}").message
    assert validate(module, PERMISSIVE).valid


def test_simd_rejected_under_default_but_accepted_under_permissive() -> None:
    module = agent(**FEATURE_MODULES["simd"])
    assert rules(validate(module, DEFAULT)) == ["security.feature.simd"]
    assert validate(module, PERMISSIVE).findings == ()


def test_shared_memory_is_threads() -> None:
    report = validate(agent(**FEATURE_MODULES["threads"]), DEFAULT)
    assert rules(report) == ["security.feature.threads"]
    assert "shared memor" in report.findings[0].message


def test_two_memories_are_multi_memory() -> None:
    report = validate(agent(**FEATURE_MODULES["multi-memory"]), DEFAULT)
    assert rules(report) == ["security.feature.multi-memory"]


def test_relaxed_simd_also_counts_as_simd() -> None:
    report = validate(agent(**FEATURE_MODULES["relaxed-simd"]), DEFAULT)
    assert sorted(rules(report)) == ["security.feature.relaxed-simd", "security.feature.simd"]


def test_reference_types_reported_only_when_denied() -> None:
    module = agent(extra="(table 1 externref)")
    assert validate(module, DEFAULT).valid
    denying = with_(DEFAULT, denied_features=frozenset({"reference-types"}))
    assert rules(validate(module, denying)) == ["security.feature.reference-types"]


def test_a_module_seen_before_is_not_validated_by_wasmtime_again(monkeypatch) -> None:
    asked: list[bytes] = []
    real = validation._rejection

    def counting(engine: wasmtime.Engine, wasm: bytes) -> str | None:
        asked.append(wasm)
        return real(engine, wasm)

    monkeypatch.setattr(validation, "_rejection", counting)
    shared = agent(**FEATURE_MODULES["threads"], extra="(func $once)")  # a module no other test made
    first = validate(shared, DEFAULT)
    assert asked and rules(first) == ["security.feature.threads"]
    asked.clear()
    again = validate(shared, DEFAULT)
    assert asked == [] and again.findings == first.findings  # the same verdict, word for word
    other = agent(**FEATURE_MODULES["threads"], extra="(func $twice)")
    assert rules(validate(other, DEFAULT)) == ["security.feature.threads"] and asked  # new bytes: asked


def test_a_module_using_no_denied_feature_is_checked_with_them_all_off_at_once(monkeypatch) -> None:
    asked: list[wasmtime.Engine] = []
    real = validation._rejection

    def counting(engine: wasmtime.Engine, wasm: bytes) -> str | None:
        asked.append(engine)
        return real(engine, wasm)

    monkeypatch.setattr(validation, "_rejection", counting)
    report = validate(agent(extra="(func $plain_and_new)"), DEFAULT)
    assert report.valid
    everything_denied = frozenset().union(
        *(validation._FEATURES[name].switches for name in DEFAULT.denied_features & validation._FEATURES.keys()))
    # The structure check (every proposal on), then one for all denied features.
    assert asked == [validation._engine(frozenset()), validation._engine(everything_denied)]


def test_every_feature_engine_can_be_built() -> None:
    # Some switch combinations abort the process inside wasmtime; building
    # each engine here catches a bad combination before production does.
    assert set(validation._FEATURES) | {"component-model"} == KNOWN_FEATURES
    for feature in validation._FEATURES.values():
        assert validation._engine(feature.switches) is validation._engine(feature.switches)
    # And with all of them off at once, as a policy denying them all checks first.
    every = frozenset().union(*(feature.switches for feature in validation._FEATURES.values()))
    assert validation._engine(every) is validation._engine(every)


def test_unknown_denied_feature_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="denied_features"):
        validate(agent(), with_(DEFAULT, denied_features=frozenset({"teleportation"})))


# ---------------------------------------------------------------- resources


def test_memory_minimum_above_policy() -> None:
    report = validate(agent(memory='(memory (export "memory") 32)'), STRICT)
    assert rules(report) == ["resources.memory-pages"]
    message = report.findings[0].message
    assert "memory 0" in message and "32 pages" in message and "16 pages" in message


def test_memory_maximum_above_policy_is_only_a_warning() -> None:
    report = validate(agent(memory='(memory (export "memory") 1 65536)'), STRICT)
    assert rules(report, Severity.WARNING) == ["resources.memory-pages"]
    assert "maximum of 65536 pages" in report.findings[0].message
    assert report.valid


def test_memory_limit_of_the_agent() -> None:
    module = agent(memory='(memory (export "memory") 2)')
    assert validate(module, DEFAULT, memory_limit_bytes=2 * 65536).valid
    report = validate(module, DEFAULT, memory_limit_bytes=65536)
    assert rules(report) == ["resources.memory-limit"]
    assert "128 KiB" in report.findings[0].message and "64 KiB" in report.findings[0].message


def test_table_size() -> None:
    report = validate(agent(extra="(table 2000 funcref)"), STRICT)
    assert rules(report) == ["resources.table-size"]
    assert "table 0" in report.findings[0].message and "2000" in report.findings[0].message


def test_too_many_imports() -> None:
    imports = '(import "caxton" "log" (func (param i32 i32 i32))) (import "caxton" "now_ms" (func (result i64)))'
    report = validate(agent(imports=imports), with_(DEFAULT, max_imports=1))
    assert rules(report) == ["resources.imports"]
    assert "2 imports" in report.findings[0].message


def test_too_many_functions() -> None:
    report = validate(agent(), with_(DEFAULT, max_functions=1))
    assert rules(report) == ["resources.functions"]
    assert "defines 2 functions" in report.findings[0].message


# ---------------------------------------------------------------------- abi


def test_missing_caxton_handle() -> None:
    report = validate(agent(handle=""), DEFAULT)
    assert rules(report) == ["abi.missing-export"]
    assert "'caxton_handle'" in report.findings[0].message


def test_missing_memory() -> None:
    report = validate(agent(memory="(memory 1)"), DEFAULT)
    assert rules(report) == ["abi.missing-export"]
    assert "'memory'" in report.findings[0].message


def test_caxton_handle_wrong_signature() -> None:
    handle = '(func (export "caxton_handle") (param i32) (result i32) i32.const 0)'
    report = validate(agent(handle=handle), DEFAULT)
    assert rules(report) == ["abi.export-signature"]
    assert report.findings[0].message == (
        "export 'caxton_handle' has type (i32) -> (i32); expected (i32, i32) -> (i64)"
    )


def test_optional_exports_are_checked_when_present() -> None:
    report = validate(agent(extra='(func (export "caxton_init"))'), DEFAULT)
    assert rules(report) == ["abi.export-signature"]
    assert "'caxton_init'" in report.findings[0].message


def test_memory_export_must_be_a_memory() -> None:
    module = agent(memory='(memory 1) (func (export "memory"))')
    report = validate(module, DEFAULT)
    assert rules(report) == ["abi.export-signature"]
    assert report.findings[0].message == "export 'memory' is a function; expected a memory"


def test_import_outside_the_abi_is_unknown() -> None:
    report = validate(agent(imports='(import "env" "abort" (func))'), PERMISSIVE)
    assert rules(report) == ["abi.unknown-import"]
    assert "'env.abort'" in report.findings[0].message


def test_caxton_import_that_is_not_a_function_is_unknown() -> None:
    report = validate(agent(imports='(import "caxton" "log" (global i32))'), DEFAULT)
    assert rules(report) == ["abi.unknown-import"]
    assert "'caxton.log' is a global" in report.findings[0].message


def test_caxton_import_with_wrong_signature() -> None:
    report = validate(agent(imports='(import "caxton" "now_ms" (func (result i32)))'), DEFAULT)
    assert rules(report) == ["abi.import-signature"]
    assert report.findings[0].message == "import 'caxton.now_ms' has type () -> (i32); expected () -> (i64)"


def test_caxton_send_denied_under_strict() -> None:
    module = agent(imports='(import "caxton" "send" (func (param i32 i32 i32 i32) (result i32)))')
    assert validate(module, DEFAULT).valid
    report = validate(module, STRICT)
    assert rules(report) == ["abi.import-denied"]
    assert "'caxton.send'" in report.findings[0].message and "'strict'" in report.findings[0].message


def test_abi_import_table_matches_policy_vocabulary() -> None:
    assert set(validation._ABI_IMPORTS) == CAXTON_IMPORTS


# ------------------------------------------------------------------- custom


def test_forbidden_export_pattern() -> None:
    module = agent(extra='(func (export "debug_dump"))')
    report = validate(module, with_(DEFAULT, forbidden_export_patterns=("debug_*",)))
    assert rules(report) == ["custom.forbidden-export"]
    assert report.findings[0].message == "export 'debug_dump' matches forbidden pattern 'debug_*'"


def test_forbidden_import_pattern_matches_module_dot_name() -> None:
    module = agent(imports='(import "caxton" "send" (func (param i32 i32 i32 i32) (result i32)))')
    report = validate(module, with_(DEFAULT, forbidden_import_patterns=("caxton.s*",)))
    assert rules(report) == ["custom.forbidden-import"]
    assert "'caxton.send'" in report.findings[0].message


# ------------------------------------------------------------------- report


def test_report_lists_all_findings_and_summary_names_every_error() -> None:
    module = agent(
        imports='(import "env" "abort" (func))',
        memory='(memory (export "memory") 32 65536)',
        handle="",
        extra="(func (result v128) v128.const i64x2 0 0)",
    )
    report = validate(module, STRICT)
    errors = {f.rule for f in report.errors()}
    assert errors == {
        "security.feature.simd",
        "resources.memory-pages",
        "abi.missing-export",
        "abi.unknown-import",
    }
    assert "resources.memory-pages" in rules(report, Severity.WARNING)
    summary = report.summary()
    for rule in errors:
        assert f"{rule}: " in summary
    assert "maximum" not in summary  # warnings stay out of the summary
    assert "\n" not in summary
    assert not report.valid


# ------------------------------------------------------------------- policy


def test_builtin_policies() -> None:
    assert STRICT.allowed_imports == {"caxton.log"}
    assert DEFAULT.allowed_imports == PERMISSIVE.allowed_imports == CAXTON_IMPORTS
    assert STRICT.denied_features == DEFAULT.denied_features == UNSAFE_FEATURES
    assert PERMISSIVE.denied_features == frozenset()
    assert (STRICT.max_memory_pages, DEFAULT.max_memory_pages, PERMISSIVE.max_memory_pages) == (16, 1024, 16384)


def test_policy_from_config_converts_lists_and_fills_defaults() -> None:
    policy = policy_from_config(
        "mine",
        {"max_memory_pages": 32, "allowed_imports": ["caxton.log"], "forbidden_export_patterns": ["debug_*"]},
    )
    assert policy == with_(
        DEFAULT,
        name="mine",
        max_memory_pages=32,
        allowed_imports=frozenset({"caxton.log"}),
        forbidden_export_patterns=("debug_*",),
    )


def test_denied_features_follow_deny_unsafe_features_unless_listed() -> None:
    assert policy_from_config("p", {"deny_unsafe_features": False}).denied_features == frozenset()
    assert policy_from_config("p", {}).denied_features == UNSAFE_FEATURES
    explicit = policy_from_config("p", {"denied_features": ["simd"]})
    assert explicit.denied_features == {"simd"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_module_bytes", 0),
        ("max_memory_pages", -1),
        ("max_memory_pages", "16"),
        ("max_table_elements", True),
        ("max_imports", 1.5),
        ("allowed_imports", ["caxton.log", "env.abort"]),
        ("allowed_imports", "caxton.log"),
        ("deny_unsafe_features", "yes"),
        ("denied_features", ["teleportation"]),
        ("max_functions", -5),
        ("forbidden_export_patterns", [1]),
        ("forbidden_import_patterns", [""]),
        ("colour", "blue"),
        ("name", "other"),
    ],
)
def test_policy_from_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_config("mine", {field: value})
    assert caught.value.field == field
    assert f"policy 'mine': {field}:" in str(caught.value)


# -------------------------------------------------------------- wasm reader


def test_reader_decodes_declarations() -> None:
    info = read_module(bytes(wasmtime.wat2wasm(ECHO_AGENT)))
    assert [(i.qualified_name, i.kind) for i in info.imports] == [("caxton.log", ExternKind.FUNC)]
    assert info.memories == (Limits(1, None),)
    handle = next(e for e in info.exports if e.name == "caxton_handle")
    assert info.func_type(handle.index) == FuncType(("i32", "i32"), ("i64",))


def test_reader_skips_table_initializers_and_gc_types() -> None:
    wasm = wasmtime.wat2wasm(
        """(module
             (rec (type (struct (field i8))) (type (array (mut i32))))
             (type (func (param (ref null 0)) (result externref)))
             (table 3 10 (ref null func) (ref.null func))
             (table 1 externref)
             (memory i64 3))"""
    )
    info = read_module(bytes(wasm))
    assert info.types == (None, None, FuncType(("(ref null 0)",), ("externref",)))
    assert [t.limits.min for t in info.tables] == [3, 1]
    assert info.memories == (Limits(3, None, is64=True),)


@pytest.mark.parametrize(
    "wasm",
    [
        b"\0asm\x01\x00\x00\x00\x01\xff\xff\xff\xff\x0f",  # section longer than the module
        b"\0asm\x01\x00\x00\x00\x01\x80\x80\x80\x80\x80\x01",  # LEB128 longer than 5 bytes
        b"\0asm\x01\x00\x00\x00\x01\x80",  # LEB128 cut off
        b"\0asm\x01\x00\x00\x00\x01\x03\xff\xff\x0f",  # type count far beyond the section
        b"\0asm\x01\x00\x00\x00\x05\x04\x01\x00\x01\x00",  # memory section with a trailing byte
        b"\0asm\x02\x00\x00\x00",
        b"junk",
    ],
)
def test_reader_rejects_garbage_cleanly(wasm: bytes) -> None:
    with pytest.raises(WasmReadError):
        read_module(wasm)
