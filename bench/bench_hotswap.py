"""Hot swap: how long a `HotReloadAgent` takes, and whether load notices.

For each worker start mode (`worker_start = "fork"` and `"exec"`, a
supervisor each; `CAXTON_BENCH_QUICK=1` runs fork only) and for 1 and 3 replicas, an agent running
tests/agents/version1.wat (echo with a "v1:" prefix) is reloaded 20 times,
alternating version2.wat and version1.wat (plus one warm-up reload, the only
one that compiles version2; the 20 measured ones load cached compiled
modules), while 6 client threads send continuously through `Messaging.Send`
(one channel each, 30 s deadline, 100-byte messages numbered per caller).

Per reload, three durations:
- the wall time of the `HotReloadAgent` call, as the client sees it;
- `switched_after_s` (reported by the supervisor): request to traffic on the
  new workers (start them, load, `caxton_init`, health check, switch);
- `drained_after_s`: request to the old workers gone (in-flight batches
  finished, `caxton_shutdown`, exit).

Under load, every message is accounted for: sent, replied (with the right
content: the prefix of a version and the caller's own message), errors by
status code, and lost = sent - outcomes (a call that never came back). Each
caller also counts the version switches it saw (prefix changes in its own
reply sequence). Between reloads the benchmark waits, untimed, until every
caller has had a reply from the new version, so every caller must see
exactly one switch per reload. 0 lost, 0 errors, 0 wrong replies and that
switch count are asserted: a broken path must not produce a nice number.

The same 20 (+1) reloads are also timed with no traffic at all
(`test_hotswap_idle`): under load, the new workers' start competes with the
callers for the two cores, so the difference is the load's share.

Baseline, same supervisor, same run: a cold deploy (`DeployAgent` with the
same number of replicas + first `Send`, a new module each time).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import wasmtime

from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import SupervisorProcess, module, wait_until

from . import report
from .support import PAYLOAD, auth_metadata, running_supervisor, with_custom_section

# exec-started workers make this file ~6x longer (~70 s of its ~95 s);
# CAXTON_BENCH_QUICK=1 keeps fork only.
MODES = ["fork"] + ([] if os.environ.get("CAXTON_BENCH_QUICK") == "1" else ["exec"])
REPLICAS = [1, 3]
RELOADS = 20
COLD_ROUNDS = 10
CALLERS = 6
SEND_DEADLINE_S = 30.0

CONFIG = 'worker_start = "{mode}"\n'
GROUP = "hot swap: HotReloadAgent under load"

_names = itertools.count()


@pytest.fixture(scope="module", params=MODES)
def mode_supervisor(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SupervisorProcess]]:
    mode = request.param
    with running_supervisor(tmp_path_factory.mktemp(f"hotswap-{mode}") / "state", CONFIG.format(mode=mode)) as sup:
        yield mode, sup


@pytest.fixture(scope="session")
def versions() -> dict[bytes, bytes]:
    """Reply prefix -> binary module."""
    return {prefix: bytes(wasmtime.wat2wasm(module(name).decode()))
            for prefix, name in ((b"v1", "version1"), (b"v2", "version2"))}


def _remove(sup: SupervisorProcess, name: str) -> None:
    sup.lifecycle.RemoveAgent(caxton_pb2.RemoveAgentRequest(name=name), timeout=60)


def _deploy_and_send(sup: SupervisorProcess, name: str, wasm: bytes, replicas: int) -> None:
    request = caxton_pb2.DeployAgentRequest(name=name, module=wasm, replicas=replicas)
    status = sup.lifecycle.DeployAgent(request, timeout=60).status
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING, f"{name} is {caxton_pb2.AgentState.Name(status.state)}"
    assert len(status.instances) == replicas, f"{len(status.instances)} instances for {replicas} replicas"
    reply = sup.send(name, PAYLOAD, sender="bench").reply.content
    assert reply == PAYLOAD, "wrong first reply"


# ------------------------------------------------------------ baseline


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("replicas", REPLICAS)
def test_cold_deploy(benchmark, mode_supervisor: tuple[str, SupervisorProcess], echo_wasm: bytes,
                     replicas: int) -> None:
    """The baseline: DeployAgent (all replicas) + first Send of a new module."""
    mode, sup = mode_supervisor

    def setup() -> tuple[tuple[SupervisorProcess, str, bytes, int], dict]:
        n = next(_names)
        wasm = with_custom_section(echo_wasm, "caxton-bench", f"hotswap-cold-{os.getpid()}-{mode}-{n}".encode())
        return (sup, f"hotswap-cold-{mode}-{n}", wasm, replicas), {}

    benchmark.pedantic(_deploy_and_send, setup=setup, teardown=lambda sup, name, *_: _remove(sup, name),
                       rounds=COLD_ROUNDS, warmup_rounds=1)
    samples = benchmark.stats.stats.data
    p50 = report.percentile(samples, 50) * 1e3
    benchmark.extra_info.update(worker_start=mode, replicas=replicas, p50_ms=round(p50, 1),
                                max_ms=round(max(samples) * 1e3, 1))
    report.record(f"hotswap.{mode}.r{replicas}.cold.p50", p50, "ms", f"cold deploy ({mode}, {replicas} repl.) p50")


# ------------------------------------------------------------ load


@dataclass
class Caller:
    sent: int = 0
    replied: int = 0
    wrong: int = 0
    errors: Counter = field(default_factory=Counter)
    last_prefix: bytes = b""
    switches: int = 0
    latencies: list[float] = field(default_factory=list)
    first_wrong: str = ""

    @property
    def outcomes(self) -> int:
        return self.replied + self.wrong + sum(self.errors.values())


class Load:
    """CALLERS threads sending continuously, one channel each; every outcome
    is counted per caller."""

    def __init__(self, sup: SupervisorProcess, name: str, callers: int = CALLERS):
        self.address = sup.address
        self.metadata = auth_metadata(sup)
        self.name = name
        self.callers = [Caller() for _ in range(callers)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}") for i in range(callers)]
        self.stuck = 0

    def _run(self, index: int) -> None:
        caller = self.callers[index]
        with grpc.insecure_channel(self.address) as channel:
            stub = caxton_pb2_grpc.MessagingStub(channel)
            for n in itertools.count():
                if self._stop.is_set():
                    return
                content = f"c{index}-{n}-".encode().ljust(len(PAYLOAD), b".")
                message = caxton_pb2.AgentMessage(receiver=self.name, sender=f"load-{index}", content=content)
                caller.sent += 1
                start = time.perf_counter()
                try:
                    response = stub.Send(caxton_pb2.SendRequest(message=message), timeout=SEND_DEADLINE_S,
                                         metadata=self.metadata)
                except grpc.RpcError as exc:
                    caller.errors[exc.code().name] += 1
                    continue
                caller.latencies.append(time.perf_counter() - start)
                reply = response.reply.content if response.has_reply else b""
                prefix, _, rest = reply.partition(b":")
                if prefix not in (b"v1", b"v2") or rest != content:
                    caller.wrong += 1
                    caller.first_wrong = caller.first_wrong or repr(reply[:40])
                    continue
                caller.replied += 1
                if caller.last_prefix and prefix != caller.last_prefix:
                    caller.switches += 1
                caller.last_prefix = prefix

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: all(c.replied >= 5 for c in self.callers), 30, "the load to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(SEND_DEADLINE_S + 10)
        self.stuck = sum(1 for thread in self._threads if thread.is_alive())

    def all_on(self, prefix: bytes) -> bool:
        return all(c.last_prefix == prefix for c in self.callers)


# ------------------------------------------------------------ hot swap


@dataclass
class Swapper:
    sup: SupervisorProcess
    name: str
    versions: dict[bytes, bytes]
    load: Load | None
    current: bytes = b"v1"
    switched: list[float] = field(default_factory=list)
    drained: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)

    def next_round(self) -> tuple[tuple[bytes], dict]:
        """pedantic setup, untimed: every caller has had a reply from the
        version the last reload switched to."""
        if self.load is not None:
            wait_until(lambda: self.load.all_on(self.current), 30,
                       f"every caller to get {self.current.decode()} replies")
        return (b"v2" if self.current == b"v1" else b"v1",), {}

    def reload(self, target: bytes) -> None:
        request = caxton_pb2.HotReloadAgentRequest(name=self.name, module=self.versions[target])
        start = time.perf_counter()
        response = self.sup.lifecycle.HotReloadAgent(request, timeout=120)
        self.walls.append(time.perf_counter() - start)
        assert response.to_version == response.from_version + 1, (response.from_version, response.to_version)
        assert response.status.version == response.to_version
        assert response.drained_after_s >= response.switched_after_s > 0
        self.switched.append(response.switched_after_s)
        self.drained.append(response.drained_after_s)
        self.current = target


def _ms(samples: list[float], q: float) -> float:
    return report.percentile(samples, q) * 1e3


def _deploy_v1(sup: SupervisorProcess, name: str, versions: dict[bytes, bytes], replicas: int) -> None:
    request = caxton_pb2.DeployAgentRequest(name=name, module=versions[b"v1"], replicas=replicas)
    deployed = sup.lifecycle.DeployAgent(request, timeout=60).status
    assert len(deployed.instances) == replicas


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("replicas", REPLICAS)
def test_hotswap_idle(benchmark, mode_supervisor: tuple[str, SupervisorProcess], versions: dict[bytes, bytes],
                      replicas: int) -> None:
    """The same reloads with no traffic: what the reload itself costs,
    without the load competing for the two cores."""
    mode, sup = mode_supervisor
    name = f"hotswap-idle-{mode}-r{replicas}"
    _deploy_v1(sup, name, versions, replicas)
    try:
        swapper = Swapper(sup, name, versions, None)
        benchmark.pedantic(swapper.reload, setup=swapper.next_round, rounds=RELOADS, warmup_rounds=1)
        assert sup.send(name, PAYLOAD).reply.content == swapper.current + b":" + PAYLOAD
        assert len(sup.status(name).instances) == replicas
    finally:
        with contextlib.suppress(grpc.RpcError):
            _remove(sup, name)
    walls, switched, drained = swapper.walls[-RELOADS:], swapper.switched[-RELOADS:], swapper.drained[-RELOADS:]
    benchmark.extra_info.update(
        worker_start=mode, replicas=replicas, reloads=len(walls),
        call_p50_ms=round(_ms(walls, 50), 1), call_p99_ms=round(_ms(walls, 99), 1),
        switched_p50_ms=round(_ms(switched, 50), 1), switched_p99_ms=round(_ms(switched, 99), 1),
        drained_p50_ms=round(_ms(drained, 50), 1), drained_p99_ms=round(_ms(drained, 99), 1),
    )
    key, label = f"hotswap.{mode}.r{replicas}.idle", f"({mode}, {replicas} repl.), no load"
    report.record(f"{key}.call.p50", _ms(walls, 50), "ms", f"HotReloadAgent call {label} p50")
    report.record(f"{key}.switched.p50", _ms(switched, 50), "ms", f"request to switch {label} p50")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("replicas", REPLICAS)
def test_hotswap(benchmark, mode_supervisor: tuple[str, SupervisorProcess], versions: dict[bytes, bytes],
                 replicas: int) -> None:
    mode, sup = mode_supervisor
    name = f"hotswap-{mode}-r{replicas}"
    _deploy_v1(sup, name, versions, replicas)
    load = Load(sup, name)
    started = time.perf_counter()
    try:
        with load:
            swapper = Swapper(sup, name, versions, load)
            benchmark.pedantic(swapper.reload, setup=swapper.next_round, rounds=RELOADS, warmup_rounds=1)
            swapper.next_round()  # every caller sees the last switch too
        status = sup.status(name)
    finally:
        with contextlib.suppress(grpc.RpcError):
            _remove(sup, name)
    elapsed = time.perf_counter() - started

    callers = load.callers
    sent = sum(c.sent for c in callers)
    replied = sum(c.replied for c in callers)
    wrong = sum(c.wrong for c in callers)
    errors = sum((c.errors for c in callers), Counter())
    lost = sent - sum(c.outcomes for c in callers)
    switches = [c.switches for c in callers]
    latencies = [t for c in callers for t in c.latencies]
    reloads = len(swapper.walls)  # the warm-up reload included
    # Measured rounds only: the warm-up reload (the one that compiles v2) is first.
    walls, switched, drained = swapper.walls[-RELOADS:], swapper.switched[-RELOADS:], swapper.drained[-RELOADS:]
    benchmark.extra_info.update(
        worker_start=mode,
        replicas=replicas,
        reloads=len(walls),
        call_p50_ms=round(_ms(walls, 50), 1),
        call_p99_ms=round(_ms(walls, 99), 1),
        switched_p50_ms=round(_ms(switched, 50), 1),
        switched_p99_ms=round(_ms(switched, 99), 1),
        drained_p50_ms=round(_ms(drained, 50), 1),
        drained_p99_ms=round(_ms(drained, 99), 1),
        warmup_reload_ms={"call": round(swapper.walls[0] * 1e3, 1), "switched": round(swapper.switched[0] * 1e3, 1),
                          "drained": round(swapper.drained[0] * 1e3, 1)},
        callers=len(callers),
        sent=sent,
        replied=replied,
        wrong=wrong,
        errors=dict(errors),
        lost=lost,
        stuck_callers=load.stuck,
        switches_per_caller=switches,
        send_p50_ms=round(_ms(latencies, 50), 2),
        send_p99_ms=round(_ms(latencies, 99), 2),
        send_max_ms=round(max(latencies) * 1e3, 1),
        load_seconds=round(elapsed, 1),
        instances_after=len(status.instances),
    )
    assert load.stuck == 0 and lost == 0, f"{lost} messages lost, {load.stuck} callers stuck"
    assert not errors, f"errors under reload: {dict(errors)}"
    assert wrong == 0, f"{wrong} wrong replies, first: {next(c.first_wrong for c in callers if c.first_wrong)}"
    assert switches == [reloads] * len(callers), f"switches per caller {switches}, {reloads} reloads"
    assert len(status.instances) == replicas

    key, label = f"hotswap.{mode}.r{replicas}", f"({mode}, {replicas} repl.)"
    report.record(f"{key}.call.p50", _ms(walls, 50), "ms", f"HotReloadAgent call {label} p50")
    report.record(f"{key}.call.p99", _ms(walls, 99), "ms", f"HotReloadAgent call {label} p99")
    report.record(f"{key}.switched.p50", _ms(switched, 50), "ms", f"request to switch {label} p50")
    report.record(f"{key}.switched.p99", _ms(switched, 99), "ms", f"request to switch {label} p99")
    report.record(f"{key}.drained.p50", _ms(drained, 50), "ms", f"request to old drained {label} p50")
    report.record(f"{key}.drained.p99", _ms(drained, 99), "ms", f"request to old drained {label} p99")
    report.record(f"{key}.send.max", max(latencies) * 1e3, "ms", f"slowest Send during reloads {label}")
    report.record(f"{key}.lost", lost, "msg", f"messages lost {label}, of {sent:,} sent")
