"""One worker process serving one version of one agent, seen from the supervisor.

An instance owns its process and a dispatcher thread that pulls batches from
the agent's mailbox and hands them to the worker through its `client` (a
WorkerClient, which makes every call to the worker). A batch that is inside
the worker when the worker dies is answered UNAVAILABLE (never silently
retried: the agent may have acted on it); messages still in the mailbox wait
for another instance.
"""

from __future__ import annotations

import functools
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from caxton.internal.v1 import worker_pb2

from .cgroups import CgroupLimits, Cgroups, WorkerCgroup
from .config import Config, Limits
from .deadline import Deadline
from .errors import WorkerStartError
from .events import EventBus
from .launcher import ExitStatus, Launcher, WorkerProcess
from .mailbox import Mailbox, Pending
from .pool import SparePool
from .redact import without_paths
from .store import StateStore, VersionRecord
from .worker_client import WorkerCallError, WorkerClient, WorkerOsLimits

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("caxton.instance")

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


def launch_instance(env: WorkerEnv, version: VersionRecord) -> WorkerInstance:
    """Start a worker, put it in its cgroup, load the module, run caxton_init.

    Raises WorkerStartError (no worker) or InstanceStartError (the agent
    would not load or start); no process is left behind either way.
    """
    timeout = env.config.worker_start_timeout_s
    sandbox = env.config.sandbox
    limits = version.limits
    os_memory = limits.memory_bytes + sandbox.memory_overhead_bytes
    cgroup = env.cgroups.create(CgroupLimits(os_memory, sandbox.cpu_cores, sandbox.pids_max))
    # A spare from the pool joins its cgroup now, so only what it allocates
    # from here on is charged there; a worker started for this instance
    # joins before it allocates anything.
    process = env.pool.take()
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
    if cgroup is not None:
        cgroup.adopt(process.pid)
    instance = WorkerInstance(version.agent, version.version, limits, process, env.config, cgroup, env.logbook,
                              env.relay)
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
                uid=env.uid,
                gid=env.gid,
                user_name=env.user_name,
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


def _uncounted(ok: bool) -> None:
    """Before serve(): nothing is dispatched yet."""


class WorkerInstance:
    """The process, its client and the dispatcher that feeds it."""

    def __init__(self, agent: str, version: int, limits: Limits, process: WorkerProcess, config: Config,
                 cgroup: WorkerCgroup | None = None, logbook: EventBus | None = None, relay: Relay | None = None):
        self.agent = agent
        self.version = version
        self.limits = limits
        self.process = process
        self.cgroup = cgroup
        self.enforcement: list[str] = []
        self.kill_reason = ""
        self._config = config
        self.client = WorkerClient(process.socket_path, agent, version, logbook)
        self._relay = relay
        self.started_at = time.monotonic()
        self.handled = 0  # messages answered by this worker (any outcome)
        self._retiring = False
        # While draining, the dispatcher keeps taking until the mailbox is
        # empty: messages already accepted are still handled.
        self._draining = False
        self._mailbox: Mailbox | None = None
        self._on_result: Callable[[bool], None] = _uncounted
        self._dispatcher: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    # ------------------------------------------------------------ start / stop

    def load(self, module_path: str, cache_dir: str, os_limits: WorkerOsLimits, deadline: Deadline, *,
             module_sha256: str, send_budget: int = 0) -> None:
        """Load the module and run caxton_init; raises InstanceStartError."""
        try:
            result = self.client.load(module_path, cache_dir, self.limits, os_limits, deadline,
                                      module_sha256=module_sha256, send_budget=send_budget)
        except WorkerCallError as exc:
            raise InstanceStartError(self._failure_reason(exc)) from exc
        if result.error:
            raise InstanceStartError(result.error)
        self.enforcement = list(result.enforcement) + (self.cgroup.layers if self.cgroup else [])
        if result.init_code != 0:
            raise InstanceStartError(f"caxton_init returned {result.init_code}", init_code=result.init_code)

    def serve(self, mailbox: Mailbox, on_result: Callable[[bool], None]) -> None:
        """Start pulling messages from `mailbox`. `on_result(ok)` counts each
        outcome for the agent's statistics."""
        self._mailbox = mailbox
        self._on_result = on_result
        self._dispatcher = threading.Thread(
            target=self._dispatch, args=(mailbox,), name=f"dispatch-{self.agent}-{self.pid}", daemon=True
        )
        self._dispatcher.start()

    def retire(self, mailbox: Mailbox, *, drain: bool) -> None:
        """Stop taking batches: at once (drain=False; the batch inside the
        worker still finishes), or once the mailbox is empty (drain=True)."""
        self._draining = drain
        self._retiring = True
        mailbox.wake_all()

    def move_to(self, mailbox: Mailbox, on_result: Callable[[bool], None]) -> None:
        """Take batches from `mailbox` from now on, counting outcomes with
        `on_result` (a promoted candidate's workers join the agent's own
        mailbox); the batch in hand finishes."""
        self._on_result = on_result
        old, self._mailbox = self._mailbox, mailbox
        if old is not None:
            old.wake_all()

    def reinstate(self) -> None:
        """Undo retire() for a worker kept warm (blue-green's old set), before
        it serves again."""
        self._retiring = False
        self._draining = False

    def wait_idle(self, deadline: Deadline) -> bool:
        """Wait until the dispatcher has finished its batch and stopped."""
        thread = self._dispatcher
        if thread is None:
            return True
        thread.join(deadline.timeout())
        return not thread.is_alive()

    def shutdown(self, deadline: Deadline) -> None:
        """Run caxton_shutdown in the worker and wait for it to exit; kill it
        if it does not by the deadline."""
        if self.process.alive:
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
        self._retiring = True
        self.process.kill()
        if self._mailbox is not None:
            self._mailbox.wake_all()

    def close(self) -> None:
        """Release what the instance holds once its process has exited."""
        self.client.close()
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

    # ------------------------------------------------------------ dispatch

    def _keep_taking(self, mailbox: Mailbox) -> bool:
        if not self.process.alive or mailbox is not self._mailbox:
            return False
        if not self._retiring:
            return True
        return self._draining and len(mailbox) > 0

    def _dispatch(self, mailbox: Mailbox) -> None:
        config = self._config
        keep_taking = functools.partial(self._keep_taking, mailbox)
        while True:
            batch = mailbox.take_batch(config.batch_max_messages, config.batch_max_bytes, keep_taking)
            if not batch:
                if self._mailbox is not mailbox and self._mailbox is not None and self.process.alive:
                    mailbox = self._mailbox  # moved (move_to): go on taking from there
                    keep_taking = functools.partial(self._keep_taking, mailbox)
                    continue
                return
            on_result = self._on_result
            try:
                keep_going = self._deliver(batch, on_result)
            except Exception:
                # A bug here must not strand callers: whatever was not
                # answered yet gets an error, and the loop goes on. The
                # caller sees an id; the log line has it and the detail.
                error_id = secrets.token_hex(4)
                log.exception("[%s v%d] internal error %s: dispatching a batch failed", self.agent, self.version,
                              error_id)
                for pending in batch:
                    if pending.resolve(grpc.StatusCode.INTERNAL,
                                       f"internal error {error_id}: the supervisor failed dispatching the message"):
                        on_result(False)
                keep_going = True
            if not keep_going:
                return

    def _deliver(self, batch: list[Pending], on_result: Callable[[bool], None]) -> bool:
        """Send one batch to the worker and answer each message. Returns
        False when this dispatcher should stop (worker gone or retiring)."""
        # A worker that takes far longer than its agents' own timeouts allow
        # is hung: the bound turns that into an error instead of a dispatcher
        # stuck forever.
        per_message_s = self.limits.timeout_ms / 1000 if self.limits.timeout_ms else _UNTIMED_MESSAGE_S
        hang_bound = Deadline.after(len(batch) * per_message_s + _BATCH_SLACK_S)
        try:
            outcomes = self.client.handle([p.message for p in batch], [p.deadline for p in batch], hang_bound)
        except WorkerCallError as exc:
            if exc.timed_out:
                self.kill(f"did not finish a batch of {len(batch)} messages in time")
            reason = self._failure_reason(exc)
            for pending in batch:
                if pending.resolve(grpc.StatusCode.UNAVAILABLE, reason):
                    on_result(False)
            return self.process.alive and not self._retiring
        self.handled += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.resolve(outcome.code, outcome.error, outcome.reply)
            on_result(outcome.ok)
            if outcome.sent:
                self._relay_sent(pending, outcome.sent)
        return True

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
