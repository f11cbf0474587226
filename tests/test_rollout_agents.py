"""The rollout tests' bad and slow versions behave as those tests rely on:
picky.wat (a v2 that traps on messages starting with '!') and sluggish.wat
(a v2 that takes at least 25 ms), deployed through a real supervisor under
its default validation policy."""

from __future__ import annotations

import time

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import module


def _deploy_clean(sup, name: str, module_name: str) -> None:
    """Deploy, and insist the default policy found nothing to say."""
    request = caxton_pb2.DeployAgentRequest(name=name, module=module(module_name))
    report = sup.lifecycle.DeployAgent(request, timeout=60).report
    assert not report.findings, [(f.rule, f.message) for f in report.findings]


def test_picky_traps_only_on_a_bang(shared_supervisor):
    sup = shared_supervisor
    _deploy_clean(sup, "picky", "picky")
    assert sup.send("picky", b"fine").reply.content == b"v2:fine"
    assert sup.send("picky", b"fine!").reply.content == b"v2:fine!"  # only a leading '!'
    with pytest.raises(grpc.RpcError) as info:
        sup.send("picky", b"!boom")
    # The status every trap gets: trap.wat's tests check the same.
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "unreachable" in info.value.details()
    assert sup.send("picky", b"again").reply.content == b"v2:again"
    assert sup.status("picky").errors == 1


def test_sluggish_answers_after_25ms(shared_supervisor):
    sup = shared_supervisor
    _deploy_clean(sup, "sluggish", "sluggish")
    for n in range(3):
        started = time.monotonic()
        reply = sup.send("sluggish", f"m{n}".encode()).reply.content
        took = time.monotonic() - started
        assert reply == f"v2:m{n}".encode()
        assert took >= 0.025, f"answered in {took * 1000:.1f} ms"
