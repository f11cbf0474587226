"""Zero-downtime hot reload and rollback, under load, counted."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import LoadGenerator, Trip, module, wait_until


def _reload(sup, name: str, module_name: str, **fields) -> caxton_pb2.HotReloadAgentResponse:
    request = caxton_pb2.HotReloadAgentRequest(name=name, module=module(module_name), **fields)
    return sup.lifecycle.HotReloadAgent(request, timeout=60)


def _prefixes(results: list[Trip]) -> list[bytes]:
    """The version prefix of each reply, with consecutive repeats collapsed."""
    runs: list[bytes] = []
    for trip in results:
        prefix = trip.reply.split(b":", 1)[0]
        if not runs or runs[-1] != prefix:
            runs.append(prefix)
    return runs


def test_reload_and_rollback_under_load_lose_nothing(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("swap", "version1")
    with LoadGenerator(sup, "swap", callers=4, warmup=5) as load:
        forward = _reload(sup, "swap", "version2", label="second")
        assert (forward.from_version, forward.to_version) == (1, 2)
        wait_until(lambda: all(r[-1].reply.startswith(b"v2:") for r in load.results if r), 20, "v2 replies")
        back = sup.lifecycle.RollbackAgent(caxton_pb2.RollbackAgentRequest(name="swap"), timeout=60)
        assert (back.from_version, back.to_version) == (2, 1)
        counts = [len(r) for r in load.results]
        wait_until(lambda: all(len(r) > c + 5 for r, c in zip(load.results, counts, strict=True)), 20,
                   "traffic after rollback")
    outcomes = load.outcomes()
    assert set(outcomes) == {"ok"}, outcomes
    assert sum(outcomes.values()) > 100
    for results in load.results:
        # Each caller saw v1, then v2 exactly once, then v1 again (rollback).
        assert _prefixes(results) == [b"v1", b"v2", b"v1"]
        # And every reply carries the caller's own message.
        for n, reply in enumerate(trip.reply for trip in results):
            assert reply.split(b":", 1)[1].endswith(f"-{n}".encode())
    status = sup.status("swap")
    assert status.version == 1
    assert [h.version for h in status.history] == [1, 2]
    assert status.history[1].label == "second"


def test_failed_init_leaves_the_old_version_serving(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("steadfast", "version1")
    with LoadGenerator(sup, "steadfast", callers=4, warmup=5) as load:
        with pytest.raises(grpc.RpcError) as info:
            _reload(sup, "steadfast", "init_fails")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "caxton_init returned 7" in info.value.details() and "v1 keeps serving" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            _reload(sup, "steadfast", "no_handle")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "abi.missing-export" in info.value.details()
    assert set(load.outcomes()) == {"ok"}
    assert all(_prefixes(r) == [b"v1"] for r in load.results)
    status = sup.status("steadfast")
    assert status.version == 1 and status.state == caxton_pb2.AGENT_STATE_RUNNING
    assert len(status.instances) == 1


def test_reload_with_replicas_keeps_them_all_healthy(supervisor):
    sup = supervisor()
    request = caxton_pb2.DeployAgentRequest(name="trio", module=module("version1"), replicas=3)
    deployed = sup.lifecycle.DeployAgent(request, timeout=60).status
    assert len(deployed.instances) == 3 and len({i.pid for i in deployed.instances}) == 3
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            status = sup.status("trio")
            samples.append(sum(1 for i in status.instances if i.pid))

    sampler = threading.Thread(target=sample)
    with LoadGenerator(sup, "trio", callers=6, warmup=5) as load:
        sampler.start()
        response = _reload(sup, "trio", "version2")
        stop.set()
        sampler.join(10)
    assert response.to_version == 2
    assert len(samples) > 5 and min(samples) >= 3
    assert set(load.outcomes()) == {"ok"}
    status = sup.status("trio")
    assert [(v.version, v.replicas) for v in status.versions] == [(2, 3)]
    # Traffic was spread over the replicas before the switch.
    assert sum(1 for i in deployed.instances) == 3


def test_message_in_flight_on_the_old_version_finishes_there(supervisor):
    sup = supervisor()
    sup.deploy("slowpoke", "slow")
    replies = []
    sender = threading.Thread(target=lambda: replies.append(sup.send("slowpoke", b"800", timeout=30).reply.content))
    sender.start()
    wait_until(lambda: sup.status("slowpoke").instances[0].messages == 1, 10, "the slow message to be in flight")
    started = time.monotonic()
    response = _reload(sup, "slowpoke", "version2")
    sender.join(10)
    assert replies == [b"800"]  # answered by v1 (slow.wat echoes), not lost
    assert response.drained_after_s >= response.switched_after_s
    assert time.monotonic() - started < 20
    assert sup.send("slowpoke", b"x").reply.content == b"v2:x"


def test_watch_events_reports_the_rollout(shared_supervisor):
    sup = shared_supervisor
    sup.deploy("watched", "version1")
    events = []
    call = sup.lifecycle.WatchEvents(caxton_pb2.WatchEventsRequest(agent="watched"), timeout=60)

    def collect() -> None:
        try:
            for event in call:
                events.append(event)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        wait_until(lambda: events and events[0].kind == "watching", 10, "the watch to be subscribed")
        _reload(sup, "watched", "version2")
        wait_until(lambda: "reload-drained" in [e.kind for e in events], 20, "the drained event")
    finally:
        call.cancel()
        reader.join(10)
    order = [e.kind for e in events if e.kind.startswith("reload-")]
    assert order == ["reload-started", "reload-ready", "reload-switched", "reload-drained"]
    assert all(e.agent == "watched" and e.at > 0 for e in events)
    assert [e.version for e in events if e.kind == "reload-switched"] == [2]
    assert [e.kind for e in events].count("watching") == 1
