"""The bad-module corpus through the real API: DeployAgent and ValidateModule.

Every module here must be refused with INVALID_ARGUMENT naming the rule it
breaks (in the status details and in the full report, which a rejected
deploy carries in trailing metadata), and no agent may be created for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2

from .harness import SupervisorProcess, module

MIB = 1 << 20
REPORT_METADATA_KEY = "caxton-validation-report-bin"

# Policies of a supervisor started just for this file.
CUSTOM_POLICIES = """
[policies.tiny]
max_module_bytes = 100

[policies.few-imports]
max_imports = 2
"""


def echo_wasm() -> bytes:
    return bytes(wasmtime.wat2wasm(module("echo").decode()))


@dataclass(frozen=True)
class Case:
    id: str
    rule: str
    module: bytes
    policy: str = ""
    limits: dict = field(default_factory=dict)
    custom: bool = False  # needs the supervisor with CUSTOM_POLICIES


CASES = [
    Case("not-wasm", "structure.not-wasm", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4),
    Case("truncated", "structure.invalid", echo_wasm()[: len(echo_wasm()) * 2 // 3]),
    Case("truncated-header-only", "structure.invalid", echo_wasm()[:12]),
    Case("empty", "structure.empty", b""),
    Case("too-large", "structure.too-large", module("echo"), policy="tiny", custom=True),
    Case("simd", "security.feature.simd", module("simd")),
    Case("shared-memory", "security.feature.threads", module("shared_memory")),
    Case("two-memories", "security.feature.multi-memory", module("two_memories")),
    Case("bad-import", "abi.unknown-import", module("bad_import")),
    Case("sender-strict", "abi.import-denied", module("sender"), policy="strict"),
    Case("many-imports", "resources.imports", module("many_imports"), policy="few-imports", custom=True),
    Case("big-memory-strict", "resources.memory-pages", module("big_memory"), policy="strict"),
    Case("big-memory-limit", "resources.memory-limit", module("big_memory"), policy="permissive",
         limits={"memory_bytes": 1 * MIB}),
    Case("no-handle", "abi.missing-export", module("no_handle")),
    Case("bad-handle-sig", "abi.export-signature", module("bad_handle_sig")),
]


@pytest.fixture(scope="module")
def policy_supervisor(tmp_path_factory, worker_start):
    """A supervisor with the custom policies above, shared by this file."""
    state = tmp_path_factory.mktemp(f"policies-{worker_start}") / "state"
    sup = SupervisorProcess(state, config=f'worker_start = "{worker_start}"\n' + CUSTOM_POLICIES).start()
    yield sup
    sup.stop()


def agent_names(sup) -> set[str]:
    return {a.name for a in sup.lifecycle.ListAgents(caxton_pb2.ListAgentsRequest(), timeout=30).agents}


def error_rules(report: caxton_pb2.ValidationReport) -> set[str]:
    return {f.rule for f in report.findings if f.severity == caxton_pb2.SEVERITY_ERROR}


def deploy_request(name: str, case: Case) -> caxton_pb2.DeployAgentRequest:
    return caxton_pb2.DeployAgentRequest(
        name=name, module=case.module, policy=case.policy, limits=caxton_pb2.ResourceLimits(**case.limits)
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_module_is_rejected(request, shared_supervisor, case):
    sup = request.getfixturevalue("policy_supervisor") if case.custom else shared_supervisor
    name = f"rejected-{case.id}"

    # ValidateModule: a dry run that reports the finding.
    report = sup.lifecycle.ValidateModule(
        caxton_pb2.ValidateModuleRequest(
            module=case.module, policy=case.policy, limits=caxton_pb2.ResourceLimits(**case.limits)
        ),
        timeout=60,
    )
    assert not report.valid
    assert case.rule in error_rules(report), list(report.findings)
    if case.policy:
        assert report.policy == case.policy

    # DeployAgent: INVALID_ARGUMENT, the rule in the details, the report in the trailers.
    with pytest.raises(grpc.RpcError) as info:
        sup.lifecycle.DeployAgent(deploy_request(name, case), timeout=60)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert case.rule in error.details()
    trailers = dict(error.trailing_metadata() or ())
    assert REPORT_METADATA_KEY in trailers, f"no report in the trailers: {sorted(trailers)}"
    rejected = caxton_pb2.ValidationReport.FromString(trailers[REPORT_METADATA_KEY])
    assert not rejected.valid
    assert case.rule in error_rules(rejected), list(rejected.findings)
    assert rejected.module_sha256 == report.module_sha256

    # No agent was created.
    assert name not in agent_names(sup)
    with pytest.raises(grpc.RpcError) as info:
        sup.status(name)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_simd_is_accepted_under_permissive(shared_supervisor):
    sup = shared_supervisor
    report = sup.lifecycle.ValidateModule(
        caxton_pb2.ValidateModuleRequest(module=module("simd"), policy="permissive"), timeout=60
    )
    assert report.valid, list(report.findings)
    status = sup.lifecycle.DeployAgent(
        caxton_pb2.DeployAgentRequest(name="simd-permissive", module=module("simd"), policy="permissive"), timeout=60
    ).status
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING
    assert status.policy == "permissive"
    assert sup.send("simd-permissive", b"vectors").reply.content == b"vectors"


def test_logger_is_accepted_under_strict(shared_supervisor):
    """strict allows caxton.log (and nothing else): the denial above is about
    caxton.send, not about imports in general."""
    sup = shared_supervisor
    status = sup.lifecycle.DeployAgent(
        caxton_pb2.DeployAgentRequest(name="logger-strict", module=module("logger"), policy="strict"), timeout=60
    ).status
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING
    assert status.policy == "strict"
    assert sup.send("logger-strict", b"hello").reply.content == b"logged"


def test_custom_policies_accept_what_fits(policy_supervisor):
    """The custom policies reject only what they are about: a module within
    them deploys (so the rejections above are not a broken configuration)."""
    sup = policy_supervisor
    request = caxton_pb2.ValidateModuleRequest(module=module("logger"), policy="few-imports")
    report = sup.lifecycle.ValidateModule(request, timeout=60)
    assert report.valid, list(report.findings)
    sup.lifecycle.DeployAgent(
        caxton_pb2.DeployAgentRequest(name="echo-few-imports", module=module("echo"), policy="few-imports"), timeout=60
    )
    assert sup.send("echo-few-imports", b"fits").reply.content == b"fits"


# ------------------------------------------------------------ operator caps (issue 12)

CAPS = """
[limits]
memory = "2MiB"
fuel = 1000000
timeout_ms = 1000
max_message_bytes = "1KiB"

[caps]
memory = "8MiB"
fuel = 1000000000
timeout_ms = 2000
max_message_bytes = "64KiB"
replicas = 3
label_length = 16
agents = 3
workers = 4
committed_memory = "24MiB"
"""

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _deploy(sup, name: str, *, wasm: bytes | None = None, label: str = "", replicas: int = 0, **limits):
    return sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(
        name=name, module=wasm if wasm is not None else module("echo"), label=label, replicas=replicas,
        limits=caxton_pb2.ResourceLimits(**limits)), timeout=60).status


# (request fields, the words the refusal must name: field, value, cap)
OVER_A_CAP = [
    (dict(memory_bytes=U64_MAX), ["limits.memory_bytes", str(U64_MAX), str(8 * MIB), "caps.memory"]),
    (dict(memory_bytes=8 * MIB + 1), ["limits.memory_bytes", str(8 * MIB + 1), str(8 * MIB)]),
    (dict(fuel=10**9 + 1), ["limits.fuel", str(10**9 + 1), str(10**9), "caps.fuel"]),
    (dict(timeout_ms=U32_MAX), ["limits.timeout_ms", str(U32_MAX), "2000", "caps.timeout_ms"]),
    (dict(max_message_bytes=64 * 1024 + 1), ["limits.max_message_bytes", "65537", "65536"]),
    (dict(replicas=4), ["replicas", "4", "3", "caps.replicas"]),
    (dict(label="x" * 17), ["label", "17 characters", "16", "caps.label_length"]),
    (dict(label="x" * (4 << 20)), ["label", f"{4 << 20} characters", "16"]),
    (dict(label="line\nbreak"), ["label", "printable", "'\\n'"]),
]


def test_every_cap_is_enforced_through_the_api_and_a_restart_follows(supervisor, tmp_path):
    """Each value above its cap is INVALID_ARGUMENT naming field, value and
    cap, and leaves nothing behind; each host-wide quota is
    RESOURCE_EXHAUSTED; and the supervisor starts again afterwards (a value
    that once got through crash-looped it at every start)."""
    state = tmp_path / "capped"
    sup = supervisor(CAPS, state_dir=state)
    for fields, words in OVER_A_CAP:
        error = _refused(lambda fields=fields: _deploy(sup, "over", **fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, error.details())
        for word in words:
            assert word in error.details(), (word, error.details())
    assert agent_names(sup) == set()
    assert not any((state / "modules").iterdir()), "a refused deploy left a module behind"

    # A dry run is held to the same caps.
    error = _refused(lambda: sup.lifecycle.ValidateModule(caxton_pb2.ValidateModuleRequest(
        module=module("echo"), limits=caxton_pb2.ResourceLimits(memory_bytes=U64_MAX)), timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "limits.memory_bytes" in error.details()

    # Host-wide quotas: agents 3, workers 4, committed memory 24 MiB.
    _deploy(sup, "quota-a", memory_bytes=8 * MIB, replicas=2)  # 2 workers, 16 MiB
    _deploy(sup, "quota-b")  # 3 workers, 18 MiB
    for fields, words in [
        (dict(memory_bytes=8 * MIB), ["limits.memory_bytes x replicas", str(26 * MIB), str(24 * MIB),
                                      "caps.committed_memory"]),
        (dict(replicas=2), ["replicas", "5", "4", "caps.workers"]),
    ]:
        error = _refused(lambda fields=fields: _deploy(sup, "quota-c", **fields))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (fields, error.details())
        for word in words:
            assert word in error.details(), (word, error.details())
    _deploy(sup, "quota-c")  # 3 agents, 4 workers, 20 MiB: exactly within
    error = _refused(lambda: _deploy(sup, "quota-d"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "caps.agents" in error.details()

    # A reload is held to the caps and to the committed-memory quota.
    def reload(**limits):
        return sup.lifecycle.HotReloadAgent(caxton_pb2.HotReloadAgentRequest(
            name="quota-b", module=module("uppercase"), limits=caxton_pb2.ResourceLimits(**limits)), timeout=60)

    error = _refused(lambda: reload(memory_bytes=U64_MAX))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "limits.memory_bytes" in error.details()
    error = _refused(lambda: reload(memory_bytes=8 * MIB))  # 20 - 2 + 8 = 26 MiB
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "caps.committed_memory" in error.details()
    assert reload(memory_bytes=6 * MIB).to_version == 2  # 24 MiB: within

    assert sup.stop() == 0
    again = supervisor(CAPS, state_dir=state)
    assert agent_names(again) == {"quota-a", "quota-b", "quota-c"}
    assert again.send("quota-a", b"back").reply.content == b"back"
    assert again.send("quota-b", b"back").reply.content == b"BACK"
    error = _refused(lambda: _deploy(again, "quota-d"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
