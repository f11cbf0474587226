"""Rollout strategies end to end: real supervisor, real workers, under load, every message counted.

v1 is `version1` (replies "v1:..."); a good v2 is `version2` ("v2:..."); a
bad v2 is `picky` (traps on content starting with "!"), a slow one
`slow` (as many ms as the content says). The load sends "!"-prefixed content on a
share of its messages where the test says so: v1 answers them, picky traps.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import grpc
import pytest

from caxton.v1 import caxton_pb2

from .harness import ROOT, LoadGenerator, Trip, module, wait_until

ENDED = ("promoted", "rolled-back", "aborted")


def _deploy(sup, name: str, module_name: str, replicas: int = 1) -> None:
    sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(name=name, module=module(module_name),
                                                            replicas=replicas), timeout=60)


def _options(strategy: str, **fields) -> caxton_pb2.RolloutOptions:
    return caxton_pb2.RolloutOptions(strategy=strategy, **fields)


def _reload(sup, name: str, module_name: str, options: caxton_pb2.RolloutOptions,
            **fields) -> caxton_pb2.HotReloadAgentResponse:
    request = caxton_pb2.HotReloadAgentRequest(name=name, module=module(module_name), rollout=options, **fields)
    return sup.lifecycle.HotReloadAgent(request, timeout=60)


def _rollout(sup, name: str) -> caxton_pb2.RolloutStatus:
    return sup.status(name).rollout


def _wait_ended(sup, name: str, timeout: float = 60) -> caxton_pb2.RolloutStatus:
    return wait_until(lambda: (r := _rollout(sup, name)).state in ENDED and r, timeout, f"{name}'s rollout to end")


def _wait_state(sup, name: str, state: str, timeout: float = 60) -> caxton_pb2.RolloutStatus:
    return wait_until(lambda: (r := _rollout(sup, name)).state == state and r, timeout, f"rollout {state}")


def _bang_every(k: int):
    """Content for LoadGenerator: every k-th message of each caller starts with '!'."""
    return lambda caller, n: (b"!" if n % k == k - 1 else b"") + f"c{caller}-{n}".encode()


def _versions(trips: list[Trip]) -> Counter[bytes]:
    return Counter(t.reply.split(b":", 1)[0] for t in trips if t.status == "ok")


def _settle(load: LoadGenerator, more: int = 10) -> None:
    """Let every caller get `more` answers past this point."""
    marks = [len(r) for r in load.results]
    wait_until(lambda: all(len(r) >= m + more for r, m in zip(load.results, marks, strict=True)), 30, "more load")


# Tests of anything but latency allow for a busy two-core test machine.
FAST = dict(step_s=0.5, min_messages=20, bake_s=0.0, max_latency_ratio=20.0)


@pytest.mark.parametrize("strategy,extra", [
    ("immediate", {}),
    ("rolling", {"batch": 1}),
    ("blue-green", {"keep_old_s": 0.0}),
    ("canary", {"steps": [50, 100]}),
    ("traffic-split", {"steps": [25, 100]}),
    # v1 and v2 reply differently ("v1:" / "v2:"): compare outcomes only.
    ("parallel", {"compare": "outcome"}),
    ("graceful", {}),
])
def test_each_strategy_moves_v1_to_v2_losing_nothing(shared_supervisor, strategy, extra):
    sup = shared_supervisor
    name = f"good-{strategy}"
    _deploy(sup, name, "version1", replicas=2)
    with LoadGenerator(sup, name, callers=3, warmup=5) as load:
        _reload(sup, name, "version2", _options(strategy, **FAST, **extra))
        record = _wait_ended(sup, name)
        assert record.state == "promoted", record
        _settle(load)
    trips = load.trips()
    assert load.outcomes() == Counter({"ok": len(trips)}), load.outcomes()
    assert all(t.reply.endswith(t.content) for t in trips)
    assert trips[-1].reply.startswith(b"v2:")
    status = sup.status(name)
    assert status.version == 2 and status.rollout.candidate_version == 2
    assert {i.version for i in status.instances} == {2} and len(status.instances) == 2
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


@pytest.mark.parametrize("strategy,extra", [
    ("canary", {"steps": [10, 50, 100], "canary_replicas": 1}),
    ("traffic-split", {"steps": [10, 50, 100]}),
    ("parallel", {"compare": "outcome"}),
])
def test_a_trapping_v2_is_rolled_back_by_itself(shared_supervisor, strategy, extra):
    sup = shared_supervisor
    name = f"bad-{strategy}"
    _deploy(sup, name, "version1", replicas=2)
    with LoadGenerator(sup, name, callers=3, warmup=5, content=_bang_every(2)) as load:
        _reload(sup, name, "picky", _options(strategy, step_s=2.0, min_messages=20, max_error_rate=0.05,
                                             max_latency_ratio=20.0, **extra))
        record = _wait_ended(sup, name)
        _settle(load)
    assert record.state == "rolled-back", record
    causes = ("error-rate", "shadow-mismatch") if strategy == "parallel" else ("error-rate",)
    assert record.reason.startswith(causes), record.reason
    trips = load.trips()
    errors = [t for t in trips if t.status != "ok"]
    if strategy == "parallel":
        # The callers only ever saw v1: no error, no v2 reply.
        assert not errors, errors[:3]
        assert _versions(trips) == Counter({b"v1": len(trips)})
    else:
        # Only the 10% share sent to v2 could fail (and only its "!" half).
        assert errors, "the bad version never got a message"
        assert all(t.status == "INTERNAL" for t in errors), Counter(t.status for t in errors)
        assert len(errors) <= max(5, 0.10 * len(trips)), (len(errors), len(trips))
    status = sup.status(name)
    assert status.version == 1 and {i.version for i in status.instances} == {1}
    assert trips[-1].status == "ok" and trips[-1].reply.startswith(b"v1:")
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def test_a_slow_v2_is_rolled_back_on_latency(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "slowpoke", "version1")
    # slow.wat waits as many ms as the content says: 100 ms a message, where
    # v1 answers in one or two, and a heavily loaded test machine in tens.
    # The step is held long enough that only the latency verdict can end it.
    with LoadGenerator(sup, "slowpoke", callers=3, warmup=150, content=lambda caller, n: b"100"):
        _reload(sup, "slowpoke", "slow", _options("traffic-split", steps=[50, 100], step_s=600.0,
                                                  min_messages=20, max_latency_ratio=3.0))
        record = _wait_ended(sup, "slowpoke", timeout=120)
    assert record.state == "rolled-back" and record.reason.startswith("latency"), record
    assert sup.status("slowpoke").version == 1


@pytest.mark.parametrize("batch", [1, 2])
def test_rolling_never_has_fewer_healthy_replicas(shared_supervisor, batch):
    sup = shared_supervisor
    name = f"rolling-{batch}"
    _deploy(sup, name, "version1", replicas=4)
    samples: list[tuple[int, ...]] = []
    stop = threading.Event()

    def sample() -> None:
        # Workers in service that answer (a status lists only those).
        while not stop.is_set():
            samples.append(tuple(i.version for i in sup.status(name).instances if i.memory_bytes))

    sampler = threading.Thread(target=sample)
    with LoadGenerator(sup, name, callers=2, warmup=5) as load:
        sampler.start()
        try:
            _reload(sup, name, "version2", _options("rolling", batch=batch))
        finally:
            stop.set()
            sampler.join()
        _settle(load)
    assert _rollout(sup, name).state == "promoted"
    assert load.outcomes() == Counter({"ok": len(load.trips())})
    assert len(samples) > 5 and min(len(s) for s in samples) >= 4, samples
    assert any(set(s) == {1, 2} for s in samples), "never saw both versions serving"
    status = sup.status(name)
    assert status.version == 2 and [i.version for i in status.instances] == [2, 2, 2, 2]


def test_blue_green_rollback_in_the_window_starts_no_worker(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "bluegreen", "version1")
    old_pids = sorted(i.pid for i in sup.status("bluegreen").instances)
    with LoadGenerator(sup, "bluegreen", callers=3, warmup=5) as load:
        _reload(sup, "bluegreen", "version2", _options("blue-green", keep_old_s=120.0, bake_s=0.0))
        assert sup.status("bluegreen").version == 2
        _settle(load)
        workers_before = set(sup.worker_pids())
        started = time.monotonic()
        back = sup.lifecycle.RollbackAgent(caxton_pb2.RollbackAgentRequest(name="bluegreen"), timeout=60)
        took = time.monotonic() - started
        _settle(load)
    assert back.rollout.state == "aborted", back.rollout
    status = sup.status("bluegreen")
    assert status.version == 1
    # The very workers that served v1 before serve it again: none started.
    assert sorted(i.pid for i in status.instances) == old_pids
    assert set(sup.worker_pids()) <= workers_before
    assert load.outcomes() == Counter({"ok": len(load.trips())})
    assert took < 5.0, took


def test_a_v2_failing_after_promotion_is_rolled_back_in_its_bake(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "baker", "version1")
    failing = {"on": False}
    content = lambda caller, n: (b"!" if failing["on"] and n % 2 else b"") + f"c{caller}-{n}".encode()  # noqa: E731
    with LoadGenerator(sup, "baker", callers=3, warmup=5, content=content):
        _reload(sup, "baker", "picky", _options("canary", steps=[50, 100], step_s=0.5, min_messages=20,
                                                bake_s=60.0, max_latency_ratio=20.0))
        _wait_state(sup, "baker", "baking")
        failing["on"] = True  # v2 now gets messages it traps on
        started = time.monotonic()
        record = _wait_ended(sup, "baker")
    assert record.state == "rolled-back" and record.reason.startswith("bake-failure"), record
    assert time.monotonic() - started < 30
    status = sup.status("baker")
    assert status.version == 1 and {i.version for i in status.instances} == {1}
    assert sup.send("baker", b"!after").reply.content == b"v1:!after"


def test_conversations_stay_on_one_version_during_a_split(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "sticky", "version1")
    with LoadGenerator(sup, "sticky", callers=4, warmup=5,
                       conversation=lambda caller, n: f"conv-{caller}-{n // 20}") as load:
        _reload(sup, "sticky", "version2", _options("traffic-split", steps=[20, 60, 100], step_s=1.0,
                                                    min_messages=20, bake_s=0.0, max_latency_ratio=20.0))
        record = _wait_ended(sup, "sticky")
    assert record.state == "promoted" and record.step == 3, record
    by_conversation: dict[str, set[bytes]] = {}
    for caller, trips in enumerate(load.results):
        for n, trip in enumerate(trips):
            assert trip.status == "ok", trip
            by_conversation.setdefault(f"conv-{caller}-{n // 20}", set()).add(trip.reply.split(b":", 1)[0])
    mixed = {c: v for c, v in by_conversation.items() if len(v) > 1}
    both = {v for versions in by_conversation.values() for v in versions}
    assert both == {b"v1", b"v2"}
    # Only a conversation open when the last step took all traffic (or that
    # began on v1 before the split) may have moved, once: at most one per caller.
    assert len(mixed) <= 4, mixed


def test_a_stream_during_a_split_reaches_both_versions_losing_nothing(shared_supervisor):
    """SendStream's frames go by receiver in one step only outside rollouts;
    during a split each message takes its conversation's lane, one by one,
    and every one is answered by the version its lane runs."""
    sup = shared_supervisor
    _deploy(sup, "stream-split", "version1")
    _reload(sup, "stream-split", "version2", _options("traffic-split", steps=[50, 100], step_s=600.0,
                                                      max_latency_ratio=20.0))
    _wait_state(sup, "stream-split", "progressing")
    frames = [caxton_pb2.SendStreamRequest(items=[
        caxton_pb2.StreamItem(id=n, message=caxton_pb2.AgentMessage(
            receiver="stream-split", conversation_id=f"conv-{n}", content=b"m%d" % n))
        for n in range(f * 100, (f + 1) * 100)]) for f in range(4)]
    try:
        results = {r.id: r for response in sup.messaging.SendStream(iter(frames), timeout=60)
                   for r in response.results}
    finally:
        sup.lifecycle.ControlRollout(caxton_pb2.ControlRolloutRequest(name="stream-split", action="abort"),
                                     timeout=60)
    assert sorted(results) == list(range(400))
    replies = [results[n].reply.content for n in range(400)]
    assert all(results[n].code == 0 for n in range(400)), [results[n].error for n in range(400) if results[n].code]
    assert all(reply.split(b":", 1)[1] == b"m%d" % n for n, reply in enumerate(replies))
    assert Counter(reply.split(b":", 1)[0] for reply in replies).keys() == {b"v1", b"v2"}


def test_operators_steer_a_rollout(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "steered", "version1")
    control = lambda action: sup.lifecycle.ControlRollout(  # noqa: E731
        caxton_pb2.ControlRolloutRequest(name="steered", action=action), timeout=60)
    with pytest.raises(grpc.RpcError) as none:
        control("promote")
    assert none.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with LoadGenerator(sup, "steered", callers=2, warmup=5):
        _reload(sup, "steered", "version2", _options("canary", steps=[10, 100], step_s=600.0, bake_s=0.0,
                                                          max_latency_ratio=20.0))
        assert control("pause").state == "paused"
        with pytest.raises(grpc.RpcError) as again:
            control("pause")
        assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert control("resume").state == "progressing"
        promoted = control("promote")
    assert promoted.state == "promoted", promoted
    assert sup.status("steered").version == 2
    with LoadGenerator(sup, "steered", callers=2, warmup=5) as load:
        _reload(sup, "steered", "version1", _options("traffic-split", steps=[50, 100], step_s=600.0,
                                                             max_latency_ratio=20.0))
        # status shows each version's share of the traffic since the split began.
        shares = wait_until(lambda: (v := sup.status("steered").versions) and sum(x.messages for x in v) >= 400
                            and {x.version: x.share for x in v}, 30, "traffic on both versions")
        assert set(shares) == {2, 3} and 0.35 < shares[2] < 0.65, (shares, _rollout(sup, "steered"))  # v3: version1
        aborted = control("abort")
        _settle(load)
    assert aborted.state == "aborted" and "operator" in aborted.reason, aborted
    assert sup.status("steered").version == 2
    assert load.outcomes() == Counter({"ok": len(load.trips())})


def test_a_deploy_of_an_existing_name(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "redeploy", "version1")
    with pytest.raises(grpc.RpcError) as taken:
        _deploy(sup, "redeploy", "version2")
    assert taken.value.code() is grpc.StatusCode.ALREADY_EXISTS
    sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(
        name="redeploy", module=module("version2"), rollout=_options("immediate")), timeout=60)
    assert sup.status("redeploy").version == 2
    with pytest.raises(grpc.RpcError) as bad:
        _reload(sup, "redeploy", "version1", _options("canary", steps=[50, 20]))
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "rollout.steps" in bad.value.details()


def test_a_supervisor_that_dies_mid_rollout_comes_back_on_stable(supervisor, tmp_path):
    state = tmp_path / "state"
    first = supervisor(state_dir=state)
    _deploy(first, "interrupted", "version1")
    _reload(first, "interrupted", "version2", _options("canary", steps=[50, 100], step_s=600.0))
    assert _rollout(first, "interrupted").state == "progressing"
    first.kill()
    second = supervisor(state_dir=state)
    status = second.status("interrupted")
    assert status.version == 1 and {i.version for i in status.instances} == {1}
    assert status.rollout.state == "aborted" and status.rollout.reason.startswith("supervisor-restart")
    assert second.send("interrupted", b"x").reply.content == b"v1:x"


def test_rollouts_are_counted_in_the_metrics(supervisor):
    import re
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    sup = supervisor('metrics_listen = "127.0.0.1:0"\n')
    url = wait_until(lambda: re.search(r"metrics on (http://\S+)", sup.log_text()), 10, "the metrics address")[1]
    _deploy(sup, "counted", "version1")
    with LoadGenerator(sup, "counted", callers=2, warmup=5, content=_bang_every(2)):
        _reload(sup, "counted", "picky", _options("canary", steps=[50, 100], step_s=2.0, max_latency_ratio=20.0))
        assert _wait_ended(sup, "counted").state == "rolled-back"
    with urllib.request.urlopen(url, timeout=10) as response:
        families = {f.name: f.samples for f in text_string_to_metric_families(response.read().decode())}
    rollbacks = {(s.labels["agent"], s.labels["reason"]): s.value for s in families["caxton_rollbacks"]
                 if s.name == "caxton_rollbacks_total"}
    assert rollbacks[("counted", "error-rate")] == 1
    deployments = {(s.labels["strategy"], s.labels["outcome"]): s.value for s in families["caxton_deployments"]
                   if s.name == "caxton_deployments_total"}
    assert deployments[("canary", "rolled-back")] == 1


def test_a_shadow_sends_nothing_until_it_is_promoted(shared_supervisor):
    sup = shared_supervisor
    _deploy(sup, "shadow-sink", "version1")
    _deploy(sup, "shadowed", "version1")
    fanout = (ROOT / "examples" / "agents" / "fanout.wat").read_bytes()
    # v2 (fanout) sends "hello from fanout" to every agent named in the content.
    with LoadGenerator(sup, "shadowed", callers=2, warmup=5, content=lambda caller, n: b"shadow-sink"):
        sup.lifecycle.HotReloadAgent(caxton_pb2.HotReloadAgentRequest(
            name="shadowed", module=fanout, rollout=_options("parallel", compare="outcome", min_messages=1_000_000,
                                                             bake_s=0.0, max_latency_ratio=20.0)), timeout=60)
        # Shadowing until told otherwise: v2 has handled copies by now...
        compared = re.compile(r"waiting for \d{2,} of")
        wait_until(lambda: compared.search(_rollout(sup, "shadowed").verdict), 30, "compared replies")
        assert _rollout(sup, "shadowed").state == "progressing"
        # ...and none of its sends reached the sink.
        assert sup.status("shadow-sink").messages == 0
        sup.lifecycle.ControlRollout(caxton_pb2.ControlRolloutRequest(name="shadowed", action="promote"), timeout=60)
        wait_until(lambda: sup.status("shadow-sink").messages > 10, 30, "sends after the promotion")
    assert _rollout(sup, "shadowed").state == "promoted"
