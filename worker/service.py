"""The worker's private gRPC service: the supervisor's only way in.

The service is a thin shell around one `Sandbox`: it turns protobuf requests
into sandbox calls and sandbox errors into per-message result codes. Messages
run one at a time, in order, under one lock: an agent instance is single
threaded by design.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from caxton.internal.v1 import worker_pb2, worker_pb2_grpc

from . import seccomp
from .allocator import release_freed_memory
from .hostcalls import LogRecord
from .limits import WORKER_PROCESS_NAME, OsLimits, apply_os_limits, name_process
from .outbox import DEFAULT_SEND_BUDGET, Outgoing
from .sandbox import AgentError, LoadError, Sandbox, SandboxLimits

log = logging.getLogger("caxton.worker")


def _log_records(records: list[LogRecord]) -> list[worker_pb2.LogRecord]:
    return [worker_pb2.LogRecord(level=r.level, text=r.text) for r in records]


def _add_sent(add: Callable[..., worker_pb2.Outgoing], sent: Sequence[Outgoing]) -> None:
    """Put the agent's sends into a result, each built in place."""
    for outgoing in sent:
        envelope = outgoing.envelope
        add(to=envelope.to, performative=envelope.performative, conversation_id=envelope.conversation_id,
            reply_with=envelope.reply_with, content=outgoing.content)


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, on_exit: Callable[[int], None]):
        # Called with an exit status when the worker must end: after Shutdown,
        # or when a trapped instance cannot be replaced.
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self._loaded = False

    def Load(self, request: worker_pb2.LoadRequest, context: grpc.ServicerContext) -> worker_pb2.LoadResponse:
        with self._lock:
            if self._loaded:
                # A worker serves one agent instance in its whole life.
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this worker has already loaded an agent")
            self._loaded = True
            name_process(WORKER_PROCESS_NAME)
            limits = SandboxLimits(
                memory_bytes=request.limits.memory_bytes,
                fuel=request.limits.fuel,
                timeout_ms=request.limits.timeout_ms,
                max_message_bytes=request.limits.max_message_bytes,
                send_budget=request.send_budget or DEFAULT_SEND_BUDGET,
            )
            os_limits = request.os_limits
            try:
                # Compile (and fill the cache) with the privileges the
                # supervisor gave us; only then lower them and filter system
                # calls, before any agent code runs.
                sandbox = Sandbox(request.module_path, limits, cache_dir=request.cache_dir,
                                  module_sha256=request.module_sha256)
                layers = apply_os_limits(
                    OsLimits(
                        data_bytes=os_limits.data_bytes,
                        open_files=os_limits.open_files,
                        cpu_seconds=os_limits.cpu_seconds,
                        uid=os_limits.uid,
                        gid=os_limits.gid,
                    )
                )
                layers += seccomp.apply(not os_limits.no_syscall_filter)
                with sandbox.running():
                    code = sandbox.start()
            except LoadError as exc:
                return worker_pb2.LoadResponse(error=str(exc))
            except OSError as exc:
                # The reason, not str(exc), which may name a host path.
                return worker_pb2.LoadResponse(error=f"the worker could not be set up: {exc.strerror or exc}")
            self._sandbox = sandbox
            # Once the answer has left (the server runs termination
            # callbacks then): not on the deploy's path.
            context.add_callback(release_freed_memory)
            return worker_pb2.LoadResponse(
                init_code=code,
                logs=_log_records(sandbox.take_logs()),
                cache_hit=sandbox.cache_hit,
                enforcement=sandbox.enforcement() + layers,
                memory_bytes=sandbox.memory_bytes,
            )

    def Handle(self, request: worker_pb2.HandleRequest, context: grpc.ServicerContext) -> worker_pb2.HandleResponse:
        # The callers' remaining times count from when the batch arrived:
        # earlier messages of the batch use up later ones' time.
        received = time.monotonic()
        with self._lock:
            sandbox = self._require_sandbox(context)
            response = worker_pb2.HandleResponse()
            # Fast path: each result is built in place with `results.add()`;
            # building HandleResults first and passing the list to
            # HandleResponse(results=...) copies every one of them again.
            add = response.results.add
            # Missing trailing entries mean "no deadline", like zeros.
            deadlines_ms = request.deadline_ms
            given = len(deadlines_ms)
            plain = True
            with sandbox.running():
                for index, message in enumerate(request.messages):
                    ms = deadlines_ms[index] if index < given else 0
                    plain &= self._handle_one(sandbox, message, received + ms / 1000 if ms else None, add)
            response.plain = plain
            return response

    def HandleStream(self, requests: Iterator[worker_pb2.HandleRequest],
                     context: grpc.ServicerContext) -> Iterator[worker_pb2.HandleResponse]:
        # The supervisor sends the next batch only once this one is
        # answered, so a batch here is exactly a Handle call.
        for request in requests:
            yield self.Handle(request, context)

    def _handle_one(self, sandbox: Sandbox, message, caller_deadline: float | None,
                    add: Callable[..., worker_pb2.HandleResult]) -> bool:
        """Handle one message into a new result; whether the result is plain
        (OK, with no logs and no sends: HandleResponse.plain)."""
        try:
            outcome = sandbox.handle(message, caller_deadline)
        except AgentError as exc:
            add(code=exc.code.value[0], error=exc.message, logs=_log_records(sandbox.take_logs()))
            return False
        except LoadError as exc:
            # The trapped instance could not be replaced: this worker is no
            # longer able to serve. Exiting makes the supervisor see a crash
            # and apply its restart policy.
            log.error("cannot replace trapped instance: %s", exc)
            self._on_exit(3)
            add(code=grpc.StatusCode.UNAVAILABLE.value[0], error=str(exc))
            return False
        result = add() if outcome.reply is None else add(reply=outcome.reply, has_reply=True)
        # Most messages log and send nothing: skip the conversions then.
        if outcome.logs:
            result.logs.extend(_log_records(outcome.logs))
        if outcome.sent:
            _add_sent(result.sent.add, outcome.sent)
        return not outcome.logs and not outcome.sent

    def Stats(self, request: worker_pb2.StatsRequest, context: grpc.ServicerContext) -> worker_pb2.StatsResponse:
        # Read without the message lock so that status stays responsive while
        # a long message runs; the counters are plain ints, so a torn read is
        # impossible and a slightly stale one is fine.
        sandbox = self._sandbox
        if sandbox is None:
            return worker_pb2.StatsResponse()
        return worker_pb2.StatsResponse(
            memory_bytes=sandbox.memory_bytes,
            messages=sandbox.messages,
            errors=sandbox.errors,
            resets=sandbox.resets,
        )

    def Shutdown(self, request: worker_pb2.ShutdownRequest,
                 context: grpc.ServicerContext) -> worker_pb2.ShutdownResponse:
        with self._lock:
            logs = []
            if self._sandbox is not None:
                with self._sandbox.running():
                    logs = self._sandbox.shutdown()
            self._on_exit(0)
            return worker_pb2.ShutdownResponse(logs=_log_records(logs))

    def _require_sandbox(self, context: grpc.ServicerContext) -> Sandbox:
        if self._sandbox is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no agent loaded in this worker")
        return self._sandbox
