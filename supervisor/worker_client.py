"""WorkerClient: the supervisor's one connection to one worker process.

Every call the supervisor makes to a worker goes through here: load, handle
a batch, statistics, the health probe, warm-up, shutdown. This is also the
one boundary where grpc ends: requests are built and responses read here,
results come back as dataclasses, and a failed call raises WorkerCallError.
What a failure means for the worker process (did it die? must it be
killed?) is for the caller, which owns the process.

Log records the worker returns with a response are forwarded to the
supervisor's log here, tagged with the agent and version. Error text from
here ends up in what clients are shown (an agent's last_error), so host
paths are taken out of it (redact.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from caxton.contract import MAX_GRPC_MESSAGE_BYTES
from caxton.internal.v1 import worker_pb2, worker_pb2_grpc
from caxton.v1 import caxton_pb2

from .config import Limits
from .deadline import Deadline
from .events import EventBus
from .logs import escape
from .redact import without_paths

log = logging.getLogger("caxton.worker_client")

_OK = grpc.StatusCode.OK
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}

WARMUP_SENDER = "caxton-warmup"


class WorkerCallError(Exception):
    """A call to the worker failed: it did not answer in time (`timed_out`),
    its socket is gone, or the call was refused. `str()` is grpc's details."""

    def __init__(self, doing: str, details: str, *, timed_out: bool):
        super().__init__(details)
        self.doing = doing  # what the call was for, e.g. "handling the message"
        self.details = details
        self.timed_out = timed_out


@dataclass(frozen=True)
class WorkerOsLimits:
    """Limits the worker applies to its own process before agent code runs
    (zero = leave as it is; uid/gid -1 = stay as we are)."""

    data_bytes: int = 0
    open_files: int = 0
    cpu_seconds: int = 0
    uid: int = -1
    gid: int = -1
    user_name: str = ""
    syscall_filter: bool = True


@dataclass(frozen=True)
class LoadResult:
    """What loading the module and running caxton_init gave."""

    init_code: int  # caxton_init's return value; 0 = started
    error: str  # non-empty: the module could not be loaded at all
    enforcement: tuple[str, ...]  # limit layers active in the worker
    memory_bytes: int = 0  # linear memory once caxton_init has run


@dataclass(frozen=True)
class WorkerStats:
    """A worker's own counters (fuel consumed is not tracked by workers)."""

    memory_bytes: int
    messages: int
    errors: int
    resets: int


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """How one message ended inside the worker."""

    code: grpc.StatusCode
    error: str = ""
    reply: bytes | None = None  # None: the agent sent no reply
    sent: Sequence[worker_pb2.Outgoing] = ()  # what the agent sent meanwhile (only if it completed)

    @property
    def ok(self) -> bool:
        return self.code is _OK


HANDLING = "handling the message"  # what a failed Handle call was doing


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn grpc's errors from the call inside into WorkerCallError."""
    try:
        yield
    except grpc.RpcError as exc:
        # grpc's details of a failed connection name the worker's socket.
        raise WorkerCallError(doing, without_paths(exc.details() or exc.code().name),
                              timed_out=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED) from exc
    except (ValueError, grpc.aio.UsageError) as exc:
        # grpc's way (sync, aio) of refusing a call on a channel that was
        # closed because the worker exited meanwhile.
        raise WorkerCallError(doing, str(exc), timed_out=False) from exc


class Probe:
    """A health probe in flight (see WorkerClient.probe): the call, or why it
    could not even be started, or figures known without asking."""

    def __init__(self, call: grpc.Future | WorkerCallError | WorkerStats):
        self._call = call

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once the probe is answered or has failed (at
        once if it is already)."""
        if not isinstance(self._call, grpc.Future):
            callback()
            return
        self._call.add_done_callback(lambda _: callback())

    def result(self) -> WorkerStats:
        """Wait for the answer, no longer than the probe's deadline; raises
        WorkerCallError if none came."""
        if isinstance(self._call, WorkerStats):
            return self._call
        if isinstance(self._call, WorkerCallError):
            raise self._call
        with translated("answering a health check"):
            response = self._call.result()
        return _stats(response)


def worker_channel(socket_path: str) -> grpc.Channel:
    """A channel to the worker serving on `socket_path` (not yet connected)."""
    return grpc.insecure_channel(
        f"unix:{socket_path}",
        options=[
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ],
    )


def warm_up_channel(socket_path: str, deadline: Deadline) -> grpc.Channel:
    """A channel to a worker that has already carried one call (Stats,
    answered before Load too): the connection, the HTTP/2 handshake and the
    worker's first RPC thread cost 5-15 ms on a loaded host, which a spare
    pays ahead instead of a deploy. Raises WorkerCallError."""
    channel = worker_channel(socket_path)
    try:
        with translated("answering its first call"):
            worker_pb2_grpc.WorkerStub(channel).Stats(worker_pb2.StatsRequest(), timeout=deadline.timeout())
    except WorkerCallError:
        channel.close()
        raise
    return channel


def handle_request(messages: Sequence[caxton_pb2.AgentMessage],
                   deadlines: Sequence[Deadline]) -> worker_pb2.HandleRequest:
    """A batch as the worker takes it: each message with its caller's deadline."""
    # A stream's messages share its deadline: read the clock once for a run
    # of them, not once per message.
    deadline_ms = []
    last: Deadline | None = None
    ms = 0
    for deadline in deadlines:
        if deadline is not last:
            last, ms = deadline, deadline.remaining_ms()
        deadline_ms.append(ms)
    return worker_pb2.HandleRequest(messages=messages, deadline_ms=deadline_ms)


class WorkerClient:
    """The gRPC channel to one worker and every call made over it."""

    def __init__(self, socket_path: str, agent: str, version: int, logbook: EventBus | None = None,
                 channel: grpc.Channel | None = None):
        """`channel`: one already open to the worker (a warm spare's), or
        None to open one."""
        self.agent = agent
        self.version = version
        self._logbook = logbook  # keeps the agent's log lines for `caxton logs`
        self._channel = channel or worker_channel(socket_path)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)

    def load(self, module_path: str, cache_dir: str, limits: Limits, os_limits: WorkerOsLimits,
             deadline: Deadline, *, module_sha256: str = "", send_budget: int = 0) -> LoadResult:
        """Load the module and run caxton_init (once in the worker's life).
        With `module_sha256`, the worker compiles the module only if its bytes
        have that digest ("" = a module the supervisor did not record)."""
        request = worker_pb2.LoadRequest(
            agent=self.agent,
            version=self.version,
            module_path=module_path,
            cache_dir=cache_dir,
            module_sha256=module_sha256,
            send_budget=send_budget,
            os_limits=worker_pb2.OsLimits(
                data_bytes=os_limits.data_bytes,
                open_files=os_limits.open_files,
                cpu_seconds=os_limits.cpu_seconds,
                uid=os_limits.uid,
                gid=os_limits.gid,
                user_name=os_limits.user_name,
                no_syscall_filter=not os_limits.syscall_filter,
            ),
            limits=worker_pb2.Limits(
                memory_bytes=limits.memory_bytes,
                fuel=limits.fuel,
                timeout_ms=limits.timeout_ms,
                max_message_bytes=limits.max_message_bytes,
            ),
        )
        with translated("loading the module"):
            response = self._stub.Load(request, timeout=deadline.timeout())
        self._forward_logs(response.logs)
        return LoadResult(response.init_code, without_paths(response.error), tuple(response.enforcement),
                          response.memory_bytes)

    def call(self, messages: Sequence[caxton_pb2.AgentMessage], deadlines: Sequence[Deadline],
             hang_bound: Deadline) -> worker_pb2.HandleResponse:
        """Run a batch of messages, in order; the worker's answer, one
        result per message (read with `outcome`, or answered straight from
        it on the hot path: WorkerInstance.answer).

        `deadlines` (parallel to `messages`) are the callers': each reaches
        the worker, which stops that message when it passes. `hang_bound`
        is for the whole call: a worker that has not answered by then is
        hung, and the WorkerCallError says `timed_out`.
        """
        with translated(HANDLING):
            return self._stub.Handle(handle_request(messages, deadlines), timeout=hang_bound.timeout())

    def handle(self, messages: Sequence[caxton_pb2.AgentMessage], deadlines: Sequence[Deadline],
               hang_bound: Deadline) -> list[MessageOutcome]:
        """As `call`, each result read as a MessageOutcome."""
        return [self.outcome(result) for result in self.call(messages, deadlines, hang_bound).results]

    def outcome(self, result: worker_pb2.HandleResult) -> MessageOutcome:
        """One message's result read (the agent's log lines go to the log
        on the way)."""
        self.forward_logs(result)
        if result.code == 0:
            return MessageOutcome(_OK, "", result.reply if result.has_reply else None, result.sent or ())
        return MessageOutcome(error_code(result.code), result.error)

    def forward_logs(self, result: worker_pb2.HandleResult) -> None:
        """What the agent logged while handling one message, to the log."""
        # Most messages log nothing: skip the call then.
        if result.logs:
            self._forward_logs(result.logs)

    def warm_up(self, contents: Sequence[bytes], deadline: Deadline) -> list[MessageOutcome]:
        """Run warm-up messages straight through the worker (no mailbox),
        all within `deadline`; one outcome per message."""
        messages = [caxton_pb2.AgentMessage(receiver=self.agent, sender=WARMUP_SENDER, content=content)
                    for content in contents]
        return self.handle(messages, [deadline] * len(messages), deadline)

    def stats(self, deadline: Deadline) -> WorkerStats:
        """The worker's counters; answered even while a message runs, so it
        doubles as a health check. Raises WorkerCallError."""
        with translated("reading its statistics"):
            response = self._stub.Stats(worker_pb2.StatsRequest(), timeout=deadline.timeout())
        return _stats(response)

    def probe(self, deadline: Deadline) -> Probe:
        """Start a health check without waiting for it, so that one sweep
        can ask every worker at once; `Probe.result()` collects it."""
        try:
            with translated("answering a health check"):
                return Probe(self._stub.Stats.future(worker_pb2.StatsRequest(), timeout=deadline.timeout()))
        except WorkerCallError as exc:
            return Probe(exc)

    def shutdown(self, deadline: Deadline) -> None:
        """Run caxton_shutdown; the worker exits after answering."""
        with translated("shutting down"):
            response = self._stub.Shutdown(worker_pb2.ShutdownRequest(), timeout=deadline.timeout())
        self._forward_logs(response.logs)

    def close(self) -> None:
        self._channel.close()

    def _forward_logs(self, records: Iterable[worker_pb2.LogRecord]) -> None:
        """An agent's caxton.log lines, as lines of the supervisor's log with
        the agent named, and the agent's text escaped: it can neither forge a
        line of its own nor send escape sequences to a terminal."""
        for record in records:
            level = _LOG_LEVELS.get(record.level, logging.INFO)
            log.log(level, "[%s v%d] %s", self.agent, self.version, escape(record.text),
                    extra={"agent": self.agent, "version": self.version})
            if self._logbook is not None:
                self._logbook.publish(self.agent, logging.getLevelName(level).lower(), self.version, record.text)


def error_code(code: int) -> grpc.StatusCode:
    """The status of a result's numeric code (UNKNOWN if it is none)."""
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


def _stats(response: worker_pb2.StatsResponse) -> WorkerStats:
    return WorkerStats(response.memory_bytes, response.messages, response.errors, response.resets)
