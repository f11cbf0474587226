"""In-process fakes of worker instances, for fast tests of the runtime's logic.

`FakeLaunch` stands where `functools.partial(launch_instance, env)` stands in
the real supervisor (the runtime's `Launch` seam): it returns `FakeInstance`s
that take batches from the agent's real mailbox through the real dispatcher
(on a dispatch pool of this module's own) and echo each message's content, with no process, no gRPC and no wasmtime. The
real Runtime, Agent, Rollout, Mailbox and SQLite store run around them, so
these tests exercise the supervisor's policy and bookkeeping in milliseconds;
the end-to-end tests cover the real plumbing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import grpc

from caxton.supervisor.deadline import Deadline
from caxton.supervisor.dispatch import Dispatcher, DispatchPool
from caxton.supervisor.instance import InstanceStartError
from caxton.supervisor.intake import OutcomeCount
from caxton.supervisor.launcher import ExitStatus
from caxton.supervisor.mailbox import Mailbox, Pending
from caxton.supervisor.store import VersionRecord
from caxton.supervisor.worker_client import MessageOutcome, WorkerStats

_pids = itertools.count(100_000)
_POOL = DispatchPool(name="fake-dispatch")


class FakeProcess:
    def __init__(self) -> None:
        self.pid = next(_pids)
        self.exit_status: ExitStatus | None = None
        self._exited = threading.Event()
        self._callbacks: list[Callable[[ExitStatus], None]] = []
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def add_exit_callback(self, callback: Callable[[ExitStatus], None]) -> None:
        with self._lock:
            if self.exit_status is None:
                self._callbacks.append(callback)
                return
        callback(self.exit_status)

    def exit(self, returncode: int) -> None:
        """The process ends (a crash when non-zero); callbacks run here."""
        with self._lock:
            if self.exit_status is not None:
                return
            self.exit_status = ExitStatus(returncode)
            callbacks, self._callbacks = self._callbacks, []
        self._exited.set()
        for callback in callbacks:
            callback(self.exit_status)

    def wait_exit(self, timeout: float | None) -> ExitStatus | None:
        self._exited.wait(timeout)
        return self.exit_status


class _FakeProbe:
    def __init__(self, stats: WorkerStats) -> None:
        self._stats = stats

    def result(self) -> WorkerStats:
        return self._stats


class FakeClient:
    def __init__(self, instance: FakeInstance) -> None:
        self._instance = instance

    def stats(self, deadline: Deadline) -> WorkerStats:
        return WorkerStats(memory_bytes=65536, messages=self._instance.handled, errors=0, resets=0)

    def probe(self, deadline: Deadline) -> _FakeProbe:
        return _FakeProbe(self.stats(deadline))

    def warm_up(self, contents, deadline: Deadline) -> list[MessageOutcome]:
        return [MessageOutcome(grpc.StatusCode.OK, "", content) for content in contents]


class FakeInstance:
    """Echoes every message; `gate` (when set by the launcher) holds each
    batch until it is opened, to keep a message in flight."""

    def __init__(self, version: VersionRecord, gate: threading.Event | None) -> None:
        self.agent = version.agent
        self.version = version.version
        self.limits = version.limits
        self.process = FakeProcess()
        self.client = FakeClient(self)
        self.enforcement = ["fake"]
        self.started_at = time.monotonic()
        self.handled = 0
        self.kill_reason = ""
        self._gate = gate
        self._on_result: OutcomeCount = lambda messages, errors: None
        self.dispatcher = Dispatcher(_POOL, self._deliver, lambda: self.process.alive, batch_max_messages=256,
                                     batch_max_bytes=1 << 22)
        self.parked = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    def serve(self, mailbox: Mailbox, on_result: OutcomeCount) -> None:
        self._on_result = on_result
        self.dispatcher.serve(mailbox)

    def _deliver(self, batch: list[Pending]) -> bool:
        if self._gate is not None:
            self._gate.wait(10)
        for pending in batch:
            if not self.process.alive:
                pending.resolve(grpc.StatusCode.UNAVAILABLE, f"worker {self.pid} died")
                self._on_result(1, 1)
                continue
            self.handled += 1
            pending.resolve(grpc.StatusCode.OK, "", pending.message.content)
            self._on_result(1, 0)
        return self.process.alive

    def retire(self, mailbox: Mailbox, *, drain: bool) -> None:
        self.dispatcher.retire(drain=drain)

    def wait_idle(self, deadline: Deadline) -> bool:
        return self.dispatcher.wait_stopped(deadline)

    def probe(self, deadline: Deadline) -> _FakeProbe:
        return self.client.probe(deadline)

    def figures(self, deadline: Deadline) -> _FakeProbe:
        return self.client.probe(deadline)

    def stats(self, deadline: Deadline) -> WorkerStats:
        return self.client.stats(deadline)

    def warm_up(self, contents, deadline: Deadline) -> list[MessageOutcome]:
        return self.client.warm_up(contents, deadline)

    def shutdown(self, deadline: Deadline) -> None:
        self.process.exit(0)

    def kill(self, reason: str = "") -> None:
        self.kill_reason = self.kill_reason or reason
        self.process.exit(-9)
        self.dispatcher.retire(drain=False)

    def crash(self) -> None:
        """The worker dies on its own (as a SIGSEGV would end it)."""
        self.process.exit(-11)
        mailbox = self.dispatcher.mailbox
        if mailbox is not None:
            mailbox.wake_all()

    def close(self) -> None:
        pass

    def describe_exit(self, status: ExitStatus) -> str:
        return status.describe()


class FakeLaunch:
    """The runtime's Launch: one FakeInstance per call. `refuse` names the
    version numbers whose caxton_init "fails"; `gate` is handed to every
    instance started while it is set."""

    def __init__(self) -> None:
        self.started: list[FakeInstance] = []
        self.refuse: set[int] = set()
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, version: VersionRecord) -> FakeInstance:
        if version.version in self.refuse:
            raise InstanceStartError("caxton_init returned 7", init_code=7)
        instance = FakeInstance(version, self.gate)
        with self._lock:
            self.started.append(instance)
        return instance

    def alive(self, agent: str) -> list[FakeInstance]:
        with self._lock:
            return [i for i in self.started if i.agent == agent and i.alive]
