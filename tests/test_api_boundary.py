"""The gRPC boundary in process: errors become statuses, requests are gated.

A real grpc.aio server (supervisor/api_server.py) with the real services in
front of a stand-in runtime, so that a defect and a slow validation can be
provoked at will.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from caxton.client.connection import connect
from caxton.contract import REPORT_METADATA_KEY
from caxton.supervisor.api import AgentLifecycleService, translate_error
from caxton.supervisor.api_server import ApiServer
from caxton.supervisor.audit import Audit
from caxton.supervisor.auth import Authorizer, Role, TokenEntry, new_token, token_sha256
from caxton.supervisor.config import Config
from caxton.supervisor.errors import ModuleRejected, NotFound
from caxton.supervisor.events import EventBus
from caxton.supervisor.memory_budget import MemoryBudget
from caxton.supervisor.request_gate import Gate, RequestGate
from caxton.supervisor.validation import Report
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

MIB = 1 << 20
SECRET = "/srv/secret/state/agents.db"
INTERNAL = re.compile(r"internal error ([0-9a-f]{8}): (\w+) failed")


class Runtime:
    """Stands in for the Runtime: status() fails like a bug would, and
    validate() waits until it is let go."""

    config = Config()

    def __init__(self) -> None:
        self.validating = threading.Event()
        self.let_go = threading.Event()

    def status(self, name: str):
        raise OSError(f"unable to open database file {SECRET}")

    def validate(self, module: bytes, policy: str, limits) -> Report:
        self.validating.set()
        assert self.let_go.wait(10)
        return Report((), "0" * 64, "default", None)


@pytest.fixture
def served() -> Iterator[tuple[Runtime, caxton_pb2_grpc.AgentLifecycleStub]]:
    runtime = Runtime()
    pools = ThreadPoolExecutor(2), ThreadPoolExecutor(2)
    modules = Gate(1, hold_from=1, wait_s=0.3, busy="modules are being validated one at a time")
    api = ApiServer([], [RequestGate({"/caxton.v1.AgentLifecycle/ValidateModule": modules})])
    token = new_token()
    authorizer = Authorizer([TokenEntry("admin", Role.ADMIN, token_sha256(token))])
    service = AgentLifecycleService(runtime, MemoryBudget(512 * MIB, 64 * MIB), *pools,  # type: ignore[arg-type]
                                    authorizer, Audit(EventBus()))
    caxton_pb2_grpc.add_AgentLifecycleServicer_to_server(service, api.server)
    port = api.listen("127.0.0.1:0")
    api.start()
    channel = connect(f"127.0.0.1:{port}", token=token, discover=False)
    try:
        yield runtime, caxton_pb2_grpc.AgentLifecycleStub(channel)
    finally:
        runtime.let_go.set()
        channel.close()
        api.stop(0)
        for pool in pools:
            pool.shutdown()


# ------------------------------------------------------------ errors


def test_a_caxton_error_keeps_its_code_and_message():
    assert translate_error(NotFound("no agent named 'x'"), "GetAgentStatus") == (
        grpc.StatusCode.NOT_FOUND, "no agent named 'x'", ())


def test_a_rejected_module_carries_its_report():
    report = Report((), "0" * 64, "default", None)
    code, _, trailing = translate_error(ModuleRejected("module rejected", report), "DeployAgent")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [key for key, _ in trailing] == [REPORT_METADATA_KEY]


def test_a_defect_says_what_failed_and_logs_the_rest_under_an_id(caplog):
    try:
        raise OSError(f"unable to open database file {SECRET}")
    except OSError as exc:
        with caplog.at_level(logging.ERROR, logger="caxton.api"):
            code, details, trailing = translate_error(exc, "DeployAgent")
    assert code == grpc.StatusCode.INTERNAL and trailing == ()
    match = INTERNAL.fullmatch(details)
    assert match and match[2] == "DeployAgent", details
    assert SECRET not in details and "OSError" not in details
    (record,) = caplog.records
    assert match[1] in record.getMessage()
    assert SECRET in caplog.text and "Traceback" in caplog.text


def test_a_defect_reaches_the_client_as_internal_with_the_id_of_the_log_line(served, caplog):
    _, stub = served
    with caplog.at_level(logging.ERROR, logger="caxton.api"), pytest.raises(grpc.RpcError) as info:
        stub.GetAgentStatus(caxton_pb2.GetAgentStatusRequest(name="any"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    match = INTERNAL.fullmatch(info.value.details())
    assert match and match[2] == "GetAgentStatus", info.value.details()
    assert f"internal error {match[1]}: GetAgentStatus failed" in caplog.text
    assert SECRET in caplog.text


# ------------------------------------------------------------ the request gate


def test_a_large_module_keeps_its_turn_and_one_waiting_too_long_is_refused(served):
    runtime, stub = served
    request = caxton_pb2.ValidateModuleRequest(module=b"\0asm\x01\0\0\0")
    first = stub.ValidateModule.future(request, timeout=10)
    assert runtime.validating.wait(10)
    with pytest.raises(grpc.RpcError) as info:
        stub.ValidateModule(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "modules are being validated one at a time"
    runtime.let_go.set()
    assert first.result().module_sha256 == "0" * 64
    # The turn came back with the first call's end.
    assert stub.ValidateModule(request, timeout=10).module_sha256 == "0" * 64
