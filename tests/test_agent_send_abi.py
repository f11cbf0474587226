"""The worker side of caxton.send / caxton.send_ex and message_info's new fields.

Real wasmtime: tests/agents/abi_sender.wat runs a script of send / send_ex
calls given as its content and replies with the code each call returned.
The sandbox is driven directly (as bench/bench_sandbox.py does), and through
WorkerService in-process for what crosses the private protocol
(LoadRequest.send_budget, HandleResult.sent).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import wasmtime

from caxton.internal.v1 import worker_pb2
from caxton.supervisor.policy import BUILTIN_POLICIES
from caxton.supervisor.validation import validate
from caxton.v1 import caxton_pb2
from caxton.worker.outbox import (
    DEFAULT_SEND_BUDGET,
    MAX_ENVELOPE_BYTES,
    SEND_BUDGET_SPENT,
    SEND_MALFORMED,
    SEND_OK,
    SEND_TOO_LARGE,
    Envelope,
    Outgoing,
)
from caxton.worker.sandbox import CALL_PATH_ENV, AgentError, Sandbox, SandboxLimits
from caxton.worker.service import WorkerService

from .call_context import CallContext
from .harness import module

MAX_MESSAGE_BYTES = 1024
LIMITS = SandboxLimits(memory_bytes=1 << 20, fuel=10_000_000, timeout_ms=5000, max_message_bytes=MAX_MESSAGE_BYTES)
PEER = b"abi-peer"  # at offset 16 in abi_sender.wat
PEER_PTR = 16
REQUEST = caxton_pb2.PERFORMATIVE_REQUEST


# ------------------------------------------------------------------ scripts


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def send(to: bytes, content: bytes) -> bytes:
    return b"s" + _u32(len(to)) + to + _u32(len(content)) + content


def send_ex(envelope: bytes | dict, content: bytes) -> bytes:
    raw = json.dumps(envelope, ensure_ascii=False).encode() if isinstance(envelope, dict) else envelope
    return b"x" + _u32(len(raw)) + raw + _u32(len(content)) + content


def raw_send(to_ptr: int, to_len: int, msg_ptr: int, msg_len: int, *, ex: bool = False) -> bytes:
    return (b"R" if ex else b"r") + struct.pack("<4I", to_ptr, to_len, msg_ptr, msg_len)


def codes(reply: bytes | None) -> list[int]:
    assert reply is not None
    return list(struct.unpack(f"<{len(reply) // 4}i", reply))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True, params=["fast", "public"])
def call_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both of the sandbox's call paths (worker/fastcall.py)."""
    monkeypatch.setenv(CALL_PATH_ENV, request.param)
    return request.param


@pytest.fixture(scope="module")
def sender_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("abi") / "abi_sender.wasm"
    path.write_bytes(wasmtime.wat2wasm(module("abi_sender").decode()))
    return path


def _started(path: Path, limits: SandboxLimits) -> Iterator[Sandbox]:
    sandbox = Sandbox(str(path), limits)
    try:
        with sandbox.running():
            assert sandbox.start() == 0
            yield sandbox
    finally:
        sandbox.shutdown()


@pytest.fixture
def sandbox(sender_wasm: Path) -> Iterator[Sandbox]:
    yield from _started(sender_wasm, LIMITS)


@pytest.fixture
def roomy(sender_wasm: Path) -> Iterator[Sandbox]:
    """For scripts that carry envelopes of 4 KiB and more."""
    yield from _started(sender_wasm, SandboxLimits(memory_bytes=1 << 20, fuel=10_000_000, max_message_bytes=1 << 16))


def message(content: bytes, **envelope) -> caxton_pb2.AgentMessage:
    return caxton_pb2.AgentMessage(receiver="abi-sender", sender="outside", content=content, **envelope)


# ------------------------------------------------------------------ send


def test_send_records_a_request_to_the_named_agent(sandbox: Sandbox) -> None:
    outcome = sandbox.handle(message(send(b"pong", b"hello") + send("zoë".encode(), b"")))
    assert codes(outcome.reply) == [SEND_OK, SEND_OK]
    assert list(outcome.sent) == [
        Outgoing(Envelope("pong", REQUEST, "", ""), b"hello"),
        Outgoing(Envelope("zoë", REQUEST, "", ""), b""),
    ]


def test_send_copies_the_content_out_of_linear_memory(sandbox: Sandbox) -> None:
    """The next message reuses the same memory: what was recorded must not change."""
    first = sandbox.handle(message(send(b"pong", b"AAAA")))
    second = sandbox.handle(message(send(b"pong", b"BBBB")))
    assert [o.content for o in first.sent] == [b"AAAA"]
    assert [o.content for o in second.sent] == [b"BBBB"]


def test_the_outbox_is_per_message(sandbox: Sandbox) -> None:
    assert len(sandbox.handle(message(send(b"a", b"1") + send(b"b", b"2"))).sent) == 2
    assert sandbox.handle(message(b"")).sent == ()
    assert [o.envelope.to for o in sandbox.handle(message(send(b"c", b"3"))).sent] == ["c"]


def test_send_too_large(sandbox: Sandbox) -> None:
    outcome = sandbox.handle(message(
        send(b"n" * 255, b"")                                  # a name of 255 bytes is fine
        + send(b"n" * 256, b"")                                # 256 is not
        + raw_send(PEER_PTR, len(PEER), 0, MAX_MESSAGE_BYTES)  # content of max_message_bytes is fine
        + raw_send(PEER_PTR, len(PEER), 0, MAX_MESSAGE_BYTES + 1)
    ))
    assert codes(outcome.reply) == [SEND_OK, SEND_TOO_LARGE, SEND_OK, SEND_TOO_LARGE]
    assert [(o.envelope.to, len(o.content)) for o in outcome.sent] == [("n" * 255, 0), ("abi-peer", MAX_MESSAGE_BYTES)]


def test_send_malformed_name(sandbox: Sandbox) -> None:
    outcome = sandbox.handle(message(send(b"\xff\xfe", b"x") + send(b"", b"x") + send(b"ok", b"x")))
    assert codes(outcome.reply) == [SEND_MALFORMED, SEND_MALFORMED, SEND_OK]
    assert [o.envelope.to for o in outcome.sent] == ["ok"]


@pytest.mark.parametrize("ex", [False, True], ids=["send", "send_ex"])
@pytest.mark.parametrize("span", ["to", "msg"])
def test_a_pointer_outside_memory_traps_the_message(sandbox: Sandbox, ex: bool, span: str) -> None:
    envelope = json.dumps({"to": "abi-peer"}).encode()
    to_ptr, to_len = (PEER_PTR, len(PEER)) if not ex else (0, 0)
    script = send_ex(envelope, b"") if ex else b""
    bad = raw_send(0xFFFF0000, 8, 0, 0, ex=ex) if span == "to" else raw_send(to_ptr, to_len, 65530, 100, ex=ex)
    with pytest.raises(AgentError) as failed:
        sandbox.handle(message(script + bad))
    assert failed.value.code == grpc.StatusCode.INTERNAL and "outside linear memory" in failed.value.message
    assert sandbox.handle(message(b"")).sent == ()


# ------------------------------------------------------------------ send_ex


def test_send_ex_carries_every_envelope_field(sandbox: Sandbox) -> None:
    outcome = sandbox.handle(message(
        send_ex({"to": "pong"}, b"plain")
        + send_ex({"to": "pong", "performative": "inform"}, b"p")
        + send_ex({"to": "pong", "conversation_id": "conv-1"}, b"c")
        + send_ex({"to": "pong", "reply_with": "rw-9"}, b"r")
        + send_ex({"to": "pong", "performative": "accept-proposal", "conversation_id": "c", "reply_with": "r"}, b"")
    ))
    assert codes(outcome.reply) == [SEND_OK] * 5
    assert [o.envelope for o in outcome.sent] == [
        Envelope("pong", REQUEST, "", ""),
        Envelope("pong", caxton_pb2.PERFORMATIVE_INFORM, "", ""),
        Envelope("pong", REQUEST, "conv-1", ""),
        Envelope("pong", REQUEST, "", "rw-9"),
        Envelope("pong", caxton_pb2.PERFORMATIVE_ACCEPT_PROPOSAL, "c", "r"),
    ]
    assert [o.content for o in outcome.sent] == [b"plain", b"p", b"c", b"r", b""]


def test_send_ex_knows_every_performative_by_its_message_info_name(sandbox: Sandbox) -> None:
    names = ["request", "inform", "query-if", "query-ref", "propose", "accept-proposal", "reject-proposal",
             "agree", "refuse", "failure", "not-understood"]
    outcome = sandbox.handle(message(b"".join(send_ex({"to": "p", "performative": n}, b"") for n in names)))
    assert codes(outcome.reply) == [SEND_OK] * len(names)
    assert [caxton_pb2.Performative.Name(o.envelope.performative) for o in outcome.sent] == [
        "PERFORMATIVE_" + n.upper().replace("-", "_") for n in names
    ]


def test_send_ex_ignores_what_the_runtime_sets(sandbox: Sandbox) -> None:
    forged = {"to": "pong", "sender": "root", "message_id": "m-1", "hops": 0, "in_reply_to": "x", "extra": [1]}
    outcome = sandbox.handle(message(send_ex(forged, b"hi")))
    assert codes(outcome.reply) == [SEND_OK]
    assert list(outcome.sent) == [Outgoing(Envelope("pong"), b"hi")]


MALFORMED = {
    "not json": b"{to: pong}",
    "not utf-8": b'{"to": "p\xffong"}',
    "utf-16": json.dumps({"to": "pong"}).encode("utf-16"),
    "not an object": b'["pong"]',
    "a string": b'"pong"',
    "empty": b"",
    "to missing": b'{"performative": "inform"}',
    "to not a string": b'{"to": 7}',
    "to null": b'{"to": null}',
    "to empty": b'{"to": ""}',
    "to a lone surrogate": b'{"to": "\\ud800"}',
    "unknown performative": b'{"to": "pong", "performative": "shout"}',
    "performative in the enum's spelling": b'{"to": "pong", "performative": "PERFORMATIVE_INFORM"}',
    "performative not a string": b'{"to": "pong", "performative": 2}',
    "conversation_id not a string": b'{"to": "pong", "conversation_id": 5}',
    "reply_with not a string": b'{"to": "pong", "reply_with": ["a"]}',
    "reply_with null": b'{"to": "pong", "reply_with": null}',
    "conversation_id a lone surrogate": b'{"to": "pong", "conversation_id": "\\udfff"}',
    "deeply nested": b'{"to": "pong", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "over 4 KiB": json.dumps({"to": "pong", "pad": "x" * MAX_ENVELOPE_BYTES}).encode(),
}


@pytest.mark.parametrize("envelope", list(MALFORMED.values()), ids=list(MALFORMED))
def test_send_ex_malformed_envelope(roomy: Sandbox, envelope: bytes) -> None:
    outcome = roomy.handle(message(send_ex(envelope, b"x") + send_ex({"to": "pong"}, b"y")))
    assert codes(outcome.reply) == [SEND_MALFORMED, SEND_OK]
    assert list(outcome.sent) == [Outgoing(Envelope("pong"), b"y")]


def test_send_ex_envelope_of_exactly_4_kib_is_accepted(roomy: Sandbox) -> None:
    head = json.dumps({"to": "pong", "pad": ""}).encode()
    envelope = json.dumps({"to": "pong", "pad": "x" * (MAX_ENVELOPE_BYTES - len(head))}).encode()
    assert len(envelope) == MAX_ENVELOPE_BYTES
    outcome = roomy.handle(message(send_ex(envelope, b"") + send_ex(envelope + b" ", b"")))
    assert codes(outcome.reply) == [SEND_OK, SEND_MALFORMED]


def test_send_ex_too_large(sandbox: Sandbox) -> None:
    names = sandbox.handle(message(
        send_ex({"to": "n" * 256}, b"")
        + send_ex({"to": "é" * 128}, b"")  # 128 characters, 256 bytes
        + send_ex({"to": "é" * 127}, b"")
    ))
    assert codes(names.reply) == [SEND_TOO_LARGE, SEND_TOO_LARGE, SEND_OK]
    assert [o.envelope.to for o in names.sent] == ["é" * 127]
    # The content by raw pointers, the envelope from the script itself: the
    # agent's allocator puts the message at 1024, and the envelope follows
    # the opcode and its length.
    envelope = json.dumps({"to": "abi-peer"}).encode()
    env_ptr = 1024 + 1 + 4
    content = sandbox.handle(message(
        send_ex(envelope, b"")
        + raw_send(env_ptr, len(envelope), 0, MAX_MESSAGE_BYTES, ex=True)
        + raw_send(env_ptr, len(envelope), 0, MAX_MESSAGE_BYTES + 1, ex=True)
    ))
    assert codes(content.reply) == [SEND_OK, SEND_OK, SEND_TOO_LARGE]
    assert [len(o.content) for o in content.sent] == [0, MAX_MESSAGE_BYTES]


# ------------------------------------------------------------------ budget


@pytest.mark.parametrize("budget", [1, 5])
def test_budget_counts_send_and_send_ex_together(sender_wasm: Path, budget: int) -> None:
    limits = SandboxLimits(memory_bytes=1 << 20, max_message_bytes=MAX_MESSAGE_BYTES, send_budget=budget)
    for sandbox in _started(sender_wasm, limits):
        calls = [send(b"p", b"%d" % i) if i % 2 else send_ex({"to": "p"}, b"%d" % i) for i in range(budget + 2)]
        outcome = sandbox.handle(message(b"".join(calls)))
        assert codes(outcome.reply) == [SEND_OK] * budget + [SEND_BUDGET_SPENT] * 2
        assert [o.content for o in outcome.sent] == [b"%d" % i for i in range(budget)]
        # The next message has the whole budget again.
        assert codes(sandbox.handle(message(send(b"p", b""))).reply) == [SEND_OK]


def test_default_budget_is_64(sandbox: Sandbox) -> None:
    assert DEFAULT_SEND_BUDGET == 64
    outcome = sandbox.handle(message(send(b"p", b"") * (DEFAULT_SEND_BUDGET + 1)))
    assert codes(outcome.reply) == [SEND_OK] * DEFAULT_SEND_BUDGET + [SEND_BUDGET_SPENT]
    assert len(outcome.sent) == DEFAULT_SEND_BUDGET


def test_rejected_calls_do_not_use_the_budget(sender_wasm: Path) -> None:
    limits = SandboxLimits(memory_bytes=1 << 20, max_message_bytes=MAX_MESSAGE_BYTES, send_budget=1)
    for sandbox in _started(sender_wasm, limits):
        outcome = sandbox.handle(message(send(b"", b"") + send_ex(b"{}", b"") + send(b"p", b"")))
        assert codes(outcome.reply) == [SEND_MALFORMED, SEND_MALFORMED, SEND_OK]


def test_caxton_init_cannot_send(sandbox: Sandbox) -> None:
    """No message is being handled, so nothing could carry the send: -6, and
    the first message's outbox holds only its own sends."""
    outcome = sandbox.handle(message(b"i" + send(b"p", b"")))
    assert codes(outcome.reply) == [SEND_BUDGET_SPENT, SEND_OK]
    assert len(outcome.sent) == 1
    # Nor when a trap replaces the instance and caxton_init runs again
    # while the trapped message is still on its way out.
    with pytest.raises(AgentError):
        sandbox.handle(message(b"t"))
    outcome = sandbox.handle(message(b"i"))
    assert codes(outcome.reply) == [SEND_BUDGET_SPENT] and outcome.sent == ()


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("failure, code", [
    (b"t", grpc.StatusCode.INTERNAL),
    (b"l", grpc.StatusCode.RESOURCE_EXHAUSTED),  # out of fuel
    (b"b", grpc.StatusCode.RESOURCE_EXHAUSTED),  # reply over max_message_bytes, after the agent returned
], ids=["trap", "fuel", "reply-too-large"])
def test_a_failed_message_sends_nothing(sandbox: Sandbox, failure: bytes, code: grpc.StatusCode) -> None:
    with pytest.raises(AgentError) as failed:
        sandbox.handle(message(send(b"pong", b"1") + send_ex({"to": "pong"}, b"2") + failure))
    assert failed.value.code == code
    # Nothing of the failed message leaks into the next one.
    outcome = sandbox.handle(message(send(b"pong", b"3")))
    assert [o.content for o in outcome.sent] == [b"3"]


def test_a_timeout_after_send_sends_nothing(sender_wasm: Path) -> None:
    limits = SandboxLimits(memory_bytes=1 << 20, timeout_ms=50, max_message_bytes=MAX_MESSAGE_BYTES)
    for sandbox in _started(sender_wasm, limits):
        with pytest.raises(AgentError) as failed:
            sandbox.handle(message(send(b"pong", b"1") + b"l"))
        assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [o.content for o in sandbox.handle(message(send(b"pong", b"2"))).sent] == [b"2"]


# ------------------------------------------------------------------ service


def _service(path: Path, send_budget: int = 0) -> tuple[WorkerService, list[int]]:
    exits: list[int] = []
    service = WorkerService(on_exit=exits.append)
    context = CallContext()
    loaded = service.Load(
        worker_pb2.LoadRequest(
            agent="abi-sender", module_path=str(path), send_budget=send_budget,
            limits=worker_pb2.Limits(memory_bytes=1 << 20, fuel=10_000_000, max_message_bytes=MAX_MESSAGE_BYTES),
            # Leave this process's limits, user and system calls alone.
            os_limits=worker_pb2.OsLimits(uid=-1, gid=-1, no_syscall_filter=True),
        ),
        context,
    )
    assert not loaded.error and loaded.init_code == 0
    context.end()
    return service, exits


def test_service_returns_the_sends_of_completed_messages_only(sender_wasm: Path) -> None:
    service, exits = _service(sender_wasm, send_budget=2)
    try:
        request = worker_pb2.HandleRequest(messages=[
            message(send(b"pong", b"a") + send_ex({"to": "q", "performative": "propose", "conversation_id": "c",
                                                   "reply_with": "r"}, b"b") + send(b"x", b"over budget")),
            message(send(b"pong", b"lost") + b"t"),
            message(b""),
        ])
        results = service.Handle(request, None).results
        assert [r.code for r in results] == [0, grpc.StatusCode.INTERNAL.value[0], 0]
        assert codes(results[0].reply) == [SEND_OK, SEND_OK, SEND_BUDGET_SPENT]
        assert list(results[0].sent) == [
            worker_pb2.Outgoing(to="pong", performative=REQUEST, content=b"a"),
            worker_pb2.Outgoing(to="q", performative=caxton_pb2.PERFORMATIVE_PROPOSE, conversation_id="c",
                                reply_with="r", content=b"b"),
        ]
        assert list(results[1].sent) == [] and list(results[2].sent) == []
    finally:
        service.Shutdown(worker_pb2.ShutdownRequest(), None)
    assert exits == [0]


@pytest.mark.parametrize(("scripts", "plain"), [
    ([b"", b""], True),
    ([b"", send(b"pong", b"a")], False),  # a send
    ([b"", b"t"], False),  # a trap: an error result
])
def test_a_batch_is_plain_only_when_no_result_has_an_error_or_sends(sender_wasm: Path, scripts: list[bytes],
                                                                     plain: bool) -> None:
    """HandleResponse.plain lets the supervisor read each result for its
    reply alone: it must be false whenever one result needs more."""
    service, _ = _service(sender_wasm, send_budget=2)
    try:
        response = service.Handle(worker_pb2.HandleRequest(messages=[message(script) for script in scripts]), None)
        assert len(response.results) == len(scripts)
        assert response.plain is plain
    finally:
        service.Shutdown(worker_pb2.ShutdownRequest(), None)


def test_a_batch_with_logs_is_not_plain(tmp_path: Path) -> None:
    path = tmp_path / "logger.wasm"
    path.write_bytes(wasmtime.wat2wasm(module("logger").decode()))
    service, _ = _service(path)
    try:
        response = service.Handle(worker_pb2.HandleRequest(messages=[message(b"a line")]), None)
        assert [record.text for record in response.results[0].logs] == ["a line"]
        assert response.plain is False
    finally:
        service.Shutdown(worker_pb2.ShutdownRequest(), None)


def test_service_budget_zero_means_the_default(sender_wasm: Path) -> None:
    service, _ = _service(sender_wasm, send_budget=0)
    try:
        request = worker_pb2.HandleRequest(messages=[message(send(b"p", b"") * (DEFAULT_SEND_BUDGET + 1))])
        (result,) = service.Handle(request, None).results
        assert codes(result.reply) == [SEND_OK] * DEFAULT_SEND_BUDGET + [SEND_BUDGET_SPENT]
        assert len(result.sent) == DEFAULT_SEND_BUDGET
    finally:
        service.Shutdown(worker_pb2.ShutdownRequest(), None)


# ------------------------------------------------------------------ message_info


def test_message_info_has_receiver_and_hops(tmp_path: Path) -> None:
    path = tmp_path / "info.wasm"
    path.write_bytes(wasmtime.wat2wasm(module("info").decode()))
    for sandbox in _started(path, LIMITS):
        outcome = sandbox.handle(caxton_pb2.AgentMessage(
            receiver="info-agent", sender="pong", performative=caxton_pb2.PERFORMATIVE_INFORM,
            conversation_id="conv", message_id="m-7", reply_with="rw", in_reply_to="irt", hops=9_999, content=b"x",
        ))
        assert outcome.reply is not None
        assert json.loads(outcome.reply) == {
            "sender": "pong", "performative": "inform", "conversation_id": "conv", "message_id": "m-7",
            "reply_with": "rw", "in_reply_to": "irt", "receiver": "info-agent", "hops": 9_999,
        }
        assert json.loads(sandbox.handle(caxton_pb2.AgentMessage(receiver="info-agent")).reply or b"")["hops"] == 0


# ------------------------------------------------------------------ validation


def test_a_module_importing_send_ex_validates() -> None:
    wasm = wasmtime.wat2wasm(module("abi_sender").decode())
    assert validate(bytes(wasm), BUILTIN_POLICIES["default"]).valid
    report = validate(bytes(wasm), BUILTIN_POLICIES["strict"])
    assert {f.rule for f in report.findings} == {"abi.import-denied"}
    assert any("'caxton.send_ex'" in f.message for f in report.findings)


def test_send_ex_with_the_wrong_signature_is_rejected() -> None:
    wat = module("abi_sender").decode().replace(
        '(import "caxton" "send_ex" (func $send_ex (param i32 i32 i32 i32) (result i32)))',
        '(import "caxton" "send_ex" (func $send_ex (param i32 i32 i32) (result i32)))',
    ).replace("(call $send_ex (local.get $a) (local.get $alen) (local.get $b) (local.get $blen))",
              "(call $send_ex (local.get $a) (local.get $alen) (local.get $b))")
    report = validate(bytes(wasmtime.wat2wasm(wat)), BUILTIN_POLICIES["default"])
    assert [f.rule for f in report.findings] == ["abi.import-signature"]
