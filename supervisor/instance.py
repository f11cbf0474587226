"""One worker process serving one version of one agent, seen from the supervisor.

An instance owns its process and a dispatcher (dispatch.py) that pulls
batches from the agent's mailbox and hands them to the worker through its
`client` (a WorkerClient, which makes every call to the worker), and its
parking (parking.py): every call to the worker goes through the instance,
which thaws a parked worker first. A batch that is inside
the worker when the worker dies is answered UNAVAILABLE (never silently
retried: the agent may have acted on it); messages still in the mailbox wait
for another instance.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from caxton.internal.v1 import worker_pb2

from .answers import Answers
from .cgroups import CgroupLimits, Cgroups, WorkerCgroup
from .config import Config, Limits
from .deadline import Deadline
from .dispatch import Dispatcher, DispatchPool
from .errors import WorkerStartError
from .events import EventBus
from .figures import KnownFigures
from .intake import OutcomeCount
from .launcher import ExitStatus, Launcher, WorkerProcess
from .loop_delivery import Connected, LoopDelivery
from .mailbox import Mailbox, Pending
from .parking import CgroupFreezer, Freezer, Parking, SignalFreezer
from .pool import SparePool
from .redact import without_paths
from .store import StateStore, VersionRecord
from .worker_client import (
    MessageOutcome,
    Probe,
    WorkerCallError,
    WorkerClient,
    WorkerOsLimits,
    WorkerStats,
    error_code,
)

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("caxton.instance")

_OK = grpc.StatusCode.OK

_DATA_LIMIT_SLACK = 64 << 20

# A batch's hang bound: each message may take the agent's timeout (this
# much when it has none), plus slack for the round trip. A worker past it
# is hung and gets killed; callers' own deadlines are enforced in the worker.
_UNTIMED_MESSAGE_S = 60.0
_BATCH_SLACK_S = 5.0


class InstanceStartError(Exception):
    """The worker could not load the module or caxton_init refused."""

    def __init__(self, message: str, *, init_code: int = 0):
        super().__init__(message)
        self.init_code = init_code


@dataclass(frozen=True)
class WorkerEnv:
    """Everything needed to start a worker for an agent."""

    config: Config
    launcher: Launcher
    store: StateStore
    cgroups: Cgroups
    pool: SparePool
    # The unprivileged identity workers switch to (-1 = stay as we are).
    uid: int = -1
    gid: int = -1
    user_name: str = ""
    # Where agents' log lines are kept for `caxton logs` (None: not kept).
    logbook: EventBus | None = None
    # Where what agents send to agents goes (None: nowhere).
    relay: Relay | None = None
    # The threads that carry messages to workers, shared by all instances.
    dispatch: DispatchPool = field(default_factory=DispatchPool)


def launch_instance(env: WorkerEnv, version: VersionRecord) -> WorkerInstance:
    """Start a worker, put it in its cgroup, load the module, run caxton_init.

    Raises WorkerStartError (no worker) or InstanceStartError (the agent
    would not load or start); no process is left behind either way.
    """
    timeout = env.config.worker_start_timeout_s
    sandbox = env.config.sandbox
    limits = version.limits
    os_memory = limits.memory_bytes + sandbox.memory_overhead_bytes
    cgroup_limits = CgroupLimits(os_memory, sandbox.cpu_cores, sandbox.pids_max)
    # A spare from the pool was born in a cgroup of its own: it gets this
    # instance's limits there, rather than being moved (a move waits for an
    # RCU grace period: milliseconds). A worker started for this instance
    # joins its new cgroup before it allocates anything. Either way all the
    # worker allocates is charged there.
    spare = env.pool.take()
    if spare is not None and spare.cgroup is not None:
        cgroup: WorkerCgroup | None = spare.cgroup
        env.cgroups.limit(spare.cgroup, cgroup_limits)
    else:
        cgroup = env.cgroups.create(cgroup_limits)
    process, channel = (spare.process, spare.channel) if spare is not None else (None, None)
    ahead = spare.ahead if spare is not None else None
    if process is None:
        try:
            process = env.launcher.spawn(timeout, cgroup.procs_files if cgroup is not None else [])
        except WorkerStartError as exc:
            if cgroup is not None:
                cgroup.remove()
            # The reason becomes the agent's last_error: no host paths in it
            # (an interpreter or socket that could not be found).
            raise WorkerStartError(without_paths(str(exc))) from exc
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
    if cgroup is not None and spare is not None and spare.cgroup is None:
        cgroup.adopt(process.pid)  # a spare born outside any cgroup of ours
    process.serves(version.agent)
    # Its own uid where it has one (uids.py), else the configured user's.
    uid, gid, user_name = (process.uid, process.uid, "") if process.uid >= 0 else (env.uid, env.gid, env.user_name)
    instance = WorkerInstance(version.agent, version.version, limits, process, env.config, cgroup, env.logbook,
                              env.relay, env.dispatch, channel, ahead)
    try:
        instance.load(
            str(env.store.modules.path(version.module_sha256)),
            str(env.store.modules.cache_dir),
            WorkerOsLimits(
                # RLIMIT_DATA is the backstop where cgroups are unavailable;
                # where they are, the cgroup is the precise limit, so the
                # rlimit sits a little above it rather than racing it.
                data_bytes=os_memory + _DATA_LIMIT_SLACK,
                open_files=sandbox.open_files,
                cpu_seconds=sandbox.cpu_seconds,
                syscall_filter=sandbox.syscall_filter,
                uid=uid,
                gid=gid,
                user_name=user_name,
            ),
            Deadline.after(timeout),
            module_sha256=version.module_sha256,
            send_budget=env.config.messaging.send_budget,
        )
    except BaseException:
        instance.kill()
        process.wait_exit(timeout)
        instance.close()
        raise
    return instance


def _uncounted(messages: int, errors: int) -> None:
    """Before serve(): nothing is dispatched yet."""


def _freezer(process: WorkerProcess, cgroup: WorkerCgroup | None) -> Freezer:
    """The worker's own cgroup v2 freezer if it has one, else SIGSTOP."""
    if cgroup is not None and cgroup.version == 2 and "" in cgroup.dirs:
        return CgroupFreezer(cgroup.dirs[""])
    return SignalFreezer(process.send_signal)


class WorkerInstance:
    """The process, its client, the dispatcher that feeds it and its parking."""

    def __init__(self, agent: str, version: int, limits: Limits, process: WorkerProcess, config: Config,
                 cgroup: WorkerCgroup | None = None, logbook: EventBus | None = None, relay: Relay | None = None,
                 pool: DispatchPool | None = None, channel: grpc.Channel | None = None,
                 ahead: Connected | None = None):
        """`channel`, `ahead`: a spare's channels to its worker, the
        thread's and the API loop's (pool.py)."""
        self.agent = agent
        self.version = version
        self.limits = limits
        self.process = process
        self.cgroup = cgroup
        self.enforcement: list[str] = []
        self.kill_reason = ""
        self.client = WorkerClient(process.socket_path, agent, version, logbook, channel)
        self._relay = relay
        self.started_at = time.monotonic()
        self.handled = 0  # messages answered by this worker (any outcome)
        self.on_result: OutcomeCount = _uncounted  # counts each outcome for the agent
        pool = pool or DispatchPool()
        # Batches woken on the API loop are sent from there (loop_delivery.py).
        self._loop_delivery = LoopDelivery(self, pool.loop, ahead) if pool.loop is not None else None
        if self._loop_delivery is None and ahead is not None:
            ahead.close()
        self.dispatcher = Dispatcher(pool, self._deliver_safely, lambda: self.process.alive,
                                     batch_max_messages=config.batch_max_messages,
                                     batch_max_bytes=config.batch_max_bytes, on_loop=self._loop_delivery)
        self.parking = Parking(_freezer(process, cgroup), label=f"[{agent} v{version}] worker {process.pid}")
        self._figures = KnownFigures()  # what the worker last said of itself, while still true

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def parked(self) -> bool:
        return self.parking.parked

    def park_if_idle(self, after_s: float) -> bool:
        """Park the worker if no call has run for `after_s` (parking.py);
        True if it was parked now. A parked worker needs no channel from
        the API loop until it runs again."""
        if not self.parking.park_if_idle(after_s):
            return False
        if self._loop_delivery is not None:
            self._loop_delivery.channel.rest()
        return True

    @property
    def retired(self) -> bool:
        """Out of service: it takes no more batches (retire())."""
        return self.dispatcher.retiring

    # ------------------------------------------------------------ start / stop

    def load(self, module_path: str, cache_dir: str, os_limits: WorkerOsLimits, deadline: Deadline, *,
             module_sha256: str, send_budget: int = 0) -> None:
        """Load the module and run caxton_init; raises InstanceStartError."""
        ticket = self._figures.ticket()
        try:
            result = self.client.load(module_path, cache_dir, self.limits, os_limits, deadline,
                                      module_sha256=module_sha256, send_budget=send_budget)
        except WorkerCallError as exc:
            raise InstanceStartError(self._failure_reason(exc)) from exc
        if result.error:
            raise InstanceStartError(result.error)
        self.enforcement = list(result.enforcement) + (self.cgroup.layers if self.cgroup else [])
        # caxton_init is not a message: the counters start at zero.
        self._figures.record(ticket, WorkerStats(result.memory_bytes, 0, 0, 0))
        if result.init_code != 0:
            raise InstanceStartError(f"caxton_init returned {result.init_code}", init_code=result.init_code)

    def serve(self, mailbox: Mailbox, on_result: OutcomeCount) -> None:
        """Start taking messages from `mailbox`. `on_result(messages, errors)`
        counts outcomes for the agent's statistics."""
        self.on_result = on_result
        self.dispatcher.serve(mailbox)

    def retire(self, mailbox: Mailbox, *, drain: bool) -> None:
        """Stop taking batches: at once (drain=False; the batch inside the
        worker still finishes), or once the mailbox is empty (drain=True)."""
        self.dispatcher.retire(drain=drain)

    def move_to(self, mailbox: Mailbox, on_result: OutcomeCount) -> None:
        """Take batches from `mailbox` from now on, counting outcomes with
        `on_result` (a promoted candidate's workers join the agent's own
        mailbox); the batch in hand finishes."""
        self.on_result = on_result
        self.dispatcher.move_to(mailbox)

    def reinstate(self) -> None:
        """Undo retire() for a worker kept warm (blue-green's old set), before
        it serves again."""
        self.dispatcher.reinstate()

    def wait_idle(self, deadline: Deadline) -> bool:
        """Wait until the dispatcher has finished its batch and stopped."""
        return self.dispatcher.wait_stopped(deadline)

    def shutdown(self, deadline: Deadline) -> None:
        """Run caxton_shutdown in the worker and wait for it to exit; kill it
        if it does not by the deadline."""
        if self._loop_delivery is not None:
            # Its open stream would hold the worker's exit up (loop_delivery.py).
            self._loop_delivery.channel.close()
        if self.process.alive:
            self.parking.enter()  # thawed for good: it is about to exit
            try:
                self.client.shutdown(deadline)
            except WorkerCallError as exc:
                log.warning("[%s v%d] shutdown of worker %d failed: %s", self.agent, self.version, self.pid,
                            self._failure_reason(exc))
        if self.process.wait_exit(deadline.timeout()) is None:
            log.warning("[%s v%d] worker %d did not exit in time; killing it", self.agent, self.version, self.pid)
            self.kill()
            self.process.wait_exit(5.0)
        self.close()

    def kill(self, reason: str = "") -> None:
        """SIGKILL the worker; `reason` (why the supervisor did it) becomes
        part of how its exit is described."""
        if reason and not self.kill_reason:
            self.kill_reason = reason
        self.process.kill()
        self.dispatcher.retire(drain=False)

    def close(self) -> None:
        """Release what the instance holds once its process has exited."""
        self.client.close()
        if self._loop_delivery is not None:
            self._loop_delivery.channel.close()
        if self.cgroup is not None and not self.process.alive:
            self.cgroup.remove()

    def describe_exit(self, status: ExitStatus) -> str:
        """How the worker ended, naming the kernel's OOM killer when the
        worker's cgroup says it struck."""
        if status.signal == signal.SIGKILL and self.kill_reason:
            return f"was killed by the supervisor: it {self.kill_reason}"
        if status.signal == signal.SIGKILL and self.cgroup is not None and self.cgroup.oom_killed():
            return (f"was killed by the kernel's OOM killer: the worker passed its cgroup memory limit "
                    f"({self.cgroup.memory_bytes >> 20} MiB)")
        return status.describe()

    # ------------------------------------------------------------ calls besides messages

    def figures(self, deadline: Deadline) -> Probe:
        """The worker's figures for status and metrics, without waiting: the
        ones it last gave if no agent code has run since (figures.py), so a
        parked worker is not woken and a fresh one not asked again; else
        asked now."""
        known = self._figures.known()
        if known is not None:
            return Probe(known)
        return self.probe(deadline)

    def probe(self, deadline: Deadline) -> Probe:
        """Ask the worker now, without waiting (WorkerClient.probe): a
        liveness check as well. A parked worker is thawed first."""
        ticket = self._figures.ticket()
        self.parking.enter()
        call = self.client.probe(deadline)

        def answered() -> None:
            self.parking.leave()
            try:
                self._figures.record(ticket, call.result())
            except WorkerCallError:
                pass

        call.add_done_callback(answered)
        return call

    def stats(self, deadline: Deadline) -> WorkerStats:
        ticket = self._figures.ticket()
        with self.parking.awake():
            stats = self.client.stats(deadline)
        self._figures.record(ticket, stats)
        return stats

    def warm_up(self, contents: list[bytes], deadline: Deadline) -> list[MessageOutcome]:
        with self._figures.agent_code_runs(), self.parking.awake():
            return self.client.warm_up(contents, deadline)

    # ------------------------------------------------------------ dispatch

    def _deliver_safely(self, batch: list[Pending]) -> bool:
        """Deliver one batch (on a dispatch pool thread). A bug here must not
        strand callers: whatever was not answered yet gets an error, and the
        dispatcher goes on. The caller sees an id; the log line has it and
        the detail."""
        on_result = self.on_result
        try:
            with self.running_agent_code():
                return self._deliver(batch, on_result)
        except Exception:
            return self.internal_error(batch, on_result)

    @contextlib.contextmanager
    def running_agent_code(self) -> Iterator[None]:
        """Around every call that runs agent code: the worker is thawed for
        it, and the figures it last gave are out of date."""
        with self._figures.agent_code_runs(), self.parking.awake():
            yield

    def internal_error(self, batch: list[Pending], on_result: OutcomeCount) -> bool:
        """(In an exception handler.) A bug of ours while delivering `batch`:
        each message not answered yet gets an error naming an id, which the
        log line has with the traceback; the dispatcher goes on."""
        error_id = secrets.token_hex(4)
        log.exception("[%s v%d] internal error %s: dispatching a batch failed", self.agent, self.version, error_id)
        error = f"internal error {error_id}: the supervisor failed dispatching the message"
        failed = sum(pending.resolve(grpc.StatusCode.INTERNAL, error) for pending in batch)
        on_result(failed, failed)
        return True

    def hang_bound(self, batch: list[Pending]) -> Deadline:
        """How long the worker may take over `batch` before it counts as hung."""
        # A worker that takes far longer than its agents' own timeouts allow
        # is hung: the bound turns that into an error instead of a dispatcher
        # stuck forever.
        per_message_s = self.limits.timeout_ms / 1000 if self.limits.timeout_ms else _UNTIMED_MESSAGE_S
        return Deadline.after(len(batch) * per_message_s + _BATCH_SLACK_S)

    def _deliver(self, batch: list[Pending], on_result: OutcomeCount) -> bool:
        """Send one batch to the worker and answer each message. Returns
        False when the worker is gone."""
        try:
            response = self.client.call([p.message for p in batch], [p.deadline for p in batch],
                                        self.hang_bound(batch))
        except WorkerCallError as exc:
            return self.batch_failed(batch, exc, on_result)
        self.answer(batch, response.results, on_result, plain=response.plain)
        return True

    def batch_failed(self, batch: list[Pending], exc: WorkerCallError, on_result: OutcomeCount) -> bool:
        """The worker did not answer `batch`: each message is answered
        UNAVAILABLE (a hung worker is killed first). May wait briefly for a
        dead worker's exit, to say how it died. Returns whether it lives."""
        if exc.timed_out:
            self.kill(f"did not finish a batch of {len(batch)} messages in time")
        reason = self._failure_reason(exc)
        failed = sum(pending.resolve(grpc.StatusCode.UNAVAILABLE, reason) for pending in batch)
        on_result(failed, failed)
        return self.process.alive

    def answer(self, batch: list[Pending], results: Sequence[worker_pb2.HandleResult],
               on_result: OutcomeCount, start: int = 0, *, stop_at_sends: bool = False, plain: bool = False) -> int:
        """Answer the messages of `batch` from `start` on, in order, each
        straight from the worker's result for it (no outcome object between:
        a microsecond of the supervisor's per message), and relay what the
        agent sent meanwhile. Returns the index of the first message not
        answered: len(batch), unless `stop_at_sends` (on the API loop, which
        must not block) stopped before one whose agent sent messages, since
        relaying may wait on another host; answer(start=...) finishes the
        batch on a thread. `plain`: the worker said that every result is OK
        with no logs and no sends (HandleResponse.plain), so each is read
        for its reply alone."""
        if len(results) != len(batch):
            raise ValueError(f"the worker answered {len(results)} results for a batch of {len(batch)}")
        client = self.client
        index = start
        errors = 0
        # OK replies go in runs to the streams they belong to (answers.py);
        # anything else is delivered on its own, after the runs before it.
        answers = Answers()
        try:
            if plain:
                for index in range(start, len(batch)):
                    result = results[index]
                    reply = result.reply if result.has_reply else None
                    if not answers.add(batch[index], reply):
                        batch[index].resolve(_OK, "", reply)
                index = len(batch)
                return index
            for index in range(start, len(batch)):
                result = results[index]
                pending = batch[index]
                if result.code == 0:
                    sent = result.sent
                    if sent and stop_at_sends:
                        break
                    client.forward_logs(result)
                    reply = result.reply if result.has_reply else None
                    if sent:
                        answers.flush()
                        pending.resolve(_OK, "", reply)
                        self._relay_sent(pending, sent)
                    elif not answers.add(pending, reply):
                        pending.resolve(_OK, "", reply)
                else:
                    client.forward_logs(result)
                    answers.flush()
                    pending.resolve(error_code(result.code), result.error)
                    errors += 1
            else:
                index = len(batch)
        finally:
            answers.flush()
            # Counted once per batch (what was answered, if a bug of ours
            # stopped it part way: internal_error counts the rest).
            self.handled += index - start
            on_result(index - start, errors)
        return index

    def _relay_sent(self, pending: Pending, sent: Sequence[worker_pb2.Outgoing]) -> None:
        """What the agent sent while handling `pending`, which completed."""
        relay = self._relay
        if relay is None:
            return
        if pending.shadow:
            relay.suppressed(self.agent, len(sent))
        else:
            relay.sent(self.agent, pending.message, sent)

    def _failure_reason(self, exc: WorkerCallError) -> str:
        """A readable reason for a failed call to the worker. If the worker
        died, say how (waiting briefly for the exit to be reaped)."""
        if exc.timed_out:
            return f"worker {self.pid} of agent {self.agent!r} did not answer in time while {exc.doing}; killed it"
        # A large worker killed by the kernel can take a moment to be reaped;
        # its channel may also have been closed by the exit handler first.
        status = self.process.wait_exit(2.0)
        if status is not None:
            return f"worker {self.pid} of agent {self.agent!r} {self.describe_exit(status)} while {exc.doing}"
        return f"worker {self.pid} of agent {self.agent!r} failed while {exc.doing}: {exc.details}"
