"""Helpers shared by the benchmarks: baseline server processes, CPU accounting,
payloads, module variants and the token a benchmark's client presents.

Every process started here is ended with a deadline (SIGTERM, then SIGKILL),
and baseline servers also die with the benchmark process (PR_SET_PDEATHSIG),
so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from caxton.contract import AUTHORIZATION_METADATA_KEY, BEARER_SCHEME
from caxton.supervisor import grpc_engine
from caxton.v1 import caxton_pb2, caxton_pb2_grpc
from tests.harness import ROOT, SupervisorProcess

from . import report

Metadata = tuple[tuple[str, str], ...]

# The message content used everywhere: 100 bytes, as the issue asks.
PAYLOAD = bytes(range(100))


def auth_metadata(supervisor: SupervisorProcess) -> Metadata:
    """The metadata a client passes on each call to `supervisor`: its admin
    token, as the supervisor checks on every call (authentication on, as
    shipped). Passed per call on a plain channel rather than through call
    credentials (`caxton.client.connection.connect`), whose Python plugin
    would add client CPU per call that the bare baselines do not pay: the
    figures compare the servers, and the only extra a Caxton call carries is
    the token itself."""
    assert supervisor.token, "the supervisor has no admin token to present"
    return ((AUTHORIZATION_METADATA_KEY, f"{BEARER_SCHEME} {supervisor.token}"),)


def numbered_payload(number: int) -> bytes:
    """100 bytes that carry their own number, so a reply can be matched to
    the request it answers (a mixed-up reply must not count as a result)."""
    return number.to_bytes(8, "big") + PAYLOAD[8:]


def payload_number(content: bytes) -> int:
    return int.from_bytes(content[:8], "big") if len(content) == len(PAYLOAD) else -1


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    """The module with a custom section appended: same code, different
    SHA-256, so the supervisor stores it anew and the compiled-module cache
    misses. A custom section may legally follow every other section."""
    encoded = name.encode()
    body = _leb128(len(encoded)) + encoded + payload
    return wasm + b"\x00" + _leb128(len(body)) + body


# ------------------------------------------------------------ processes


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Never raises."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


@dataclass
class BaselineServer:
    """A `python -m bench.baselines` subprocess."""

    proc: subprocess.Popen
    address: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def start_baseline(kind: str, listen: str, *, upstream: str | None = None, threads: int = 64,
                   log_path: Path, timeout: float = 30.0) -> BaselineServer:
    """Start a baseline server and wait (with a deadline) until it serves."""
    args = [sys.executable, "-m", "bench.baselines", kind, "--listen", listen, "--threads", str(threads),
            "--parent-pid", str(os.getpid())]
    if upstream:
        args += ["--upstream", upstream]
    with open(log_path, "ab") as log:
        # On the gRPC engine Caxton's own processes run on: the ratios are
        # then what Caxton adds, not which engine each side uses.
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **grpc_engine.environment(os.environ)})
    try:
        address = _read_line_with(proc, "listening on ", timeout, log_path)
    except BaseException:
        stop_process(proc)
        raise
    return BaselineServer(proc, address)


def _read_line_with(proc: subprocess.Popen, prefix: str, timeout: float, log_path: Path) -> str:
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"{proc.args[3]} baseline did not start within {timeout}s: {log_path.read_text()[-2000:]}"
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"baseline exited with {proc.wait()} while starting: {log_path.read_text()[-2000:]}")
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()


@contextlib.contextmanager
def running_supervisor(state_dir: Path, config: str | None = None) -> Iterator[SupervisorProcess]:
    """A real supervisor (with an optional TOML config) for the duration of
    the block; stopped (drained, then killed if it does not exit in time)
    however the block ends."""
    supervisor = SupervisorProcess(state_dir, config=config)
    supervisor.start()
    try:
        yield supervisor
    finally:
        try:
            supervisor.stop(timeout=120)
        except AssertionError:
            pass  # stop() killed it after the deadline; nothing more to do
        finally:
            supervisor.kill()


def deploy_and_send(supervisor: SupervisorProcess, name: str, wasm: bytes,
                    limits: caxton_pb2.ResourceLimits | None = None) -> tuple[float, float]:
    """Deploy (with `limits`, or the supervisor's defaults), then wait for the
    first reply; both must succeed. Returns the seconds each part took, to
    see which one grows."""
    start = time.perf_counter()
    request = caxton_pb2.DeployAgentRequest(name=name, module=wasm, limits=limits)
    status = supervisor.lifecycle.DeployAgent(request, timeout=60).status
    deployed = time.perf_counter()
    assert status.state == caxton_pb2.AGENT_STATE_RUNNING, f"{name} is {caxton_pb2.AgentState.Name(status.state)}"
    message = caxton_pb2.AgentMessage(receiver=name, sender="bench", content=PAYLOAD)
    response = supervisor.messaging.Send(caxton_pb2.SendRequest(message=message), timeout=30)
    answered = time.perf_counter()
    assert response.has_reply and response.reply.content == PAYLOAD, "wrong first reply"
    return deployed - start, answered - deployed


# ------------------------------------------------------------ accounting


def grow_fleet(benchmark, supervisor: SupervisorProcess, names: list[str], prefix: str, count: int,
               wasm: bytes, *, limits: caxton_pb2.ResourceLimits | None = None,
               deadline: float | None = None) -> list[tuple[float, float]]:
    """Deploy agents (each with `limits`) until `names` (the agents already
    running) reaches `count`, each deploy one benchmark round; TimeoutError
    if a deploy would start after `deadline` (time.monotonic()). Returns each
    deploy's (deploy, first reply) seconds; `names` grows as agents come up,
    so a failure part way leaves it accurate for the caller's diagnosis."""
    pending = iter(f"{prefix}-{i}" for i in range(len(names), count))
    splits: list[tuple[float, float]] = []

    def setup() -> tuple[tuple[str], dict]:
        return (next(pending),), {}

    def deploy(name: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the time allowed for the deploys ran out; agents running: {len(names)}")
        splits.append(deploy_and_send(supervisor, name, wasm, limits))
        names.append(name)

    benchmark.pedantic(deploy, setup=setup, rounds=count - len(names))
    return splits


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


@dataclass
class CpuMeter:
    """CPU seconds used by a set of processes over a stretch of the run, to
    show where the time goes (client, supervisor, workers) per message."""

    groups: dict[str, list[int]]
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self._start = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {
            name: sum(_cpu_seconds(pid) for pid in pids) - self._start[name] for name, pids in self.groups.items()
        }

    def per_message_us(self, messages: int) -> dict[str, float]:
        return {f"cpu_us_per_msg_{name}": round(seconds / messages * 1e6, 1) for name, seconds in self.used.items()}


@dataclass(frozen=True)
class MemorySample:
    rss: int
    uss: int
    pss: int


def memory_of(pid: int) -> MemorySample | None:
    """RSS, USS and PSS of one process (None if it is gone)."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return None
    return MemorySample(info.rss, info.uss, info.pss)


MIB = float(1 << 20)


def measure_sends(benchmark, address: str, receiver: str, cpu_groups: dict[str, list[int]], key: str, label: str,
                  metadata: Metadata | None = None, *, rounds: int, warmup: int) -> None:
    """Time `rounds` sequential 100-byte Send calls on a fresh channel, each
    carrying `metadata` (Caxton's: the token); record `key`.p50/.p99 and the
    CPU each process spent per call."""
    request = caxton_pb2.SendRequest(
        message=caxton_pb2.AgentMessage(receiver=receiver, sender="bench", content=PAYLOAD)
    )
    calls = 0
    with grpc.insecure_channel(address) as channel:
        stub = caxton_pb2_grpc.MessagingStub(channel)

        def call() -> None:
            nonlocal calls
            response = stub.Send(request, timeout=10, metadata=metadata)
            calls += 1
            assert response.has_reply and response.reply.content == PAYLOAD, "wrong reply"

        call()  # connect outside the measurement
        with CpuMeter(cpu_groups) as meter:
            benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup)
    samples = benchmark.stats.stats.data
    p50 = report.percentile(samples, 50) * 1e6
    p99 = report.percentile(samples, 99) * 1e6
    benchmark.extra_info.update(p50_us=round(p50, 1), p99_us=round(p99, 1), **meter.per_message_us(calls))
    report.record(f"{key}.p50", p50, "µs", f"{label} p50")
    report.record(f"{key}.p99", p99, "µs", f"{label} p99")


def parked(pid: int) -> bool:
    """Whether worker `pid` is parked: stopped by SIGSTOP, or in a frozen
    cgroup v2 (supervisor/parking.py)."""
    try:
        if psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return True
        with open(f"/proc/{pid}/cgroup") as f:
            unified = [line[3:].strip() for line in f if line.startswith("0::")]
        if unified:
            with open(f"/sys/fs/cgroup{unified[0]}/cgroup.events") as f:
                return "frozen 1\n" in f.read()
    except (OSError, psutil.Error):
        pass
    return False


def wait_parked(pids: list[int], budget_s: float) -> dict[str, float]:
    """Wait (up to `budget_s`) until every worker is parked; returns how
    many were and how long it took."""
    start = time.perf_counter()
    deadline = time.monotonic() + budget_s
    waiting = list(pids)
    while waiting and time.monotonic() < deadline:
        waiting = [pid for pid in waiting if not parked(pid)]
        if waiting:
            time.sleep(0.5)  # polling a condition, with the deadline above
    return {"parked": len(pids) - len(waiting), "parked_after_s": round(time.perf_counter() - start, 1)}
