"""The engine a worker makes before its Load (worker/sandbox.py,
`prepare_engine`): it serves the first sandbox whose limits it fits, and
only that one, since each sandbox's epoch ticker advances its own engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from caxton.v1 import caxton_pb2
from caxton.worker import sandbox
from caxton.worker.sandbox import Sandbox, SandboxLimits
from tests.harness import EXAMPLES

ECHO = str(EXAMPLES / "echo.wat")
USUAL = SandboxLimits(memory_bytes=1 << 20, fuel=1_000_000, timeout_ms=1000)


@pytest.fixture
def prepared() -> Iterator[object]:
    """This process's prepared engine, made afresh and forgotten after."""
    sandbox._prepared_engine = None
    sandbox.prepare_engine()
    assert sandbox._prepared_engine is not None
    yield sandbox._prepared_engine[1]
    sandbox._prepared_engine = None


@pytest.fixture
def made() -> Iterator[list[Sandbox]]:
    """Sandboxes a test makes, shut down after it (their epoch tickers stop)."""
    boxes: list[Sandbox] = []
    yield boxes
    for box in boxes:
        box.shutdown()


def _answers(box: Sandbox) -> bool:
    box.start()
    with box.running():
        return box.handle(caxton_pb2.AgentMessage(content=b"hi")).reply == b"hi"


def test_the_prepared_engine_serves_one_sandbox_only(prepared: object, made: list[Sandbox]) -> None:
    first, second = Sandbox(ECHO, USUAL), Sandbox(ECHO, USUAL)
    made += [first, second]
    assert first.engine is prepared
    assert second.engine is not prepared
    assert _answers(first) and _answers(second)


@pytest.mark.parametrize("limits", [
    SandboxLimits(memory_bytes=1 << 20),
    SandboxLimits(memory_bytes=1 << 20, fuel=1_000_000),
    SandboxLimits(memory_bytes=1 << 20, timeout_ms=1000),
])
def test_a_sandbox_with_other_engine_settings_makes_its_own(prepared: object, made: list[Sandbox],
                                                            limits: SandboxLimits) -> None:
    other = Sandbox(ECHO, limits)
    made.append(other)
    assert other.engine is not prepared
    assert _answers(other)
    # Still there for the sandbox it fits.
    usual = Sandbox(ECHO, USUAL)
    made.append(usual)
    assert usual.engine is prepared
