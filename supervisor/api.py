"""The public gRPC services (caxton.v1): thin translation onto the Runtime.

This is the one boundary where domain errors become gRPC statuses. A module
rejected by validation also carries the full report, serialized, in the
trailing metadata key `caxton-validation-report-bin`, so clients can show
every finding, not just the summary line.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import Callable, Iterator

import grpc

from caxton.contract import REPORT_METADATA_KEY
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .errors import CaxtonError, DeadlineExceeded, MessageFailed, ModuleRejected
from .runtime import Runtime, reply_envelope
from .validation import Report

log = logging.getLogger("caxton.api")

_OK = grpc.StatusCode.OK


def report_to_proto(report: Report) -> caxton_pb2.ValidationReport:
    return caxton_pb2.ValidationReport(
        valid=report.valid,
        module_sha256=report.module_sha256,
        policy=report.policy,
        findings=[
            caxton_pb2.Finding(rule=f.rule, severity=int(f.severity), message=f.message) for f in report.findings
        ],
    )


def _translate_errors(method: Callable) -> Callable:
    """Turn CaxtonError into the matching status; anything else is a bug,
    logged here and reported as INTERNAL without leaking internals."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ModuleRejected as exc:
            context.set_trailing_metadata(((REPORT_METADATA_KEY, report_to_proto(exc.report).SerializeToString()),))
            context.abort(exc.code, exc.message)
        except CaxtonError as exc:
            context.abort(exc.code, exc.message)
        except Exception as exc:
            # A bug, not the caller's fault: logged in full here, reported as
            # INTERNAL with the gist rather than grpc's bare UNKNOWN.
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")

    return wrapper


def _deadline(context: grpc.ServicerContext) -> tuple[float | None, float | None]:
    """The caller's deadline as (monotonic deadline, seconds remaining)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e9:
        return None, None
    return time.monotonic() + remaining, remaining


# How often an idle WatchEvents stream checks that its client is still there.
_WATCH_POLL_S = 1.0


class AgentLifecycleService(caxton_pb2_grpc.AgentLifecycleServicer):
    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def _status(self, agent) -> caxton_pb2.AgentStatus:
        status = agent.status()
        for record in self._runtime.history(agent.name):
            status.history.add(
                version=record.version, label=record.label, module_sha256=record.module_sha256,
                limits=record.limits.to_proto(), deployed_at=record.deployed_at,
            )
        return status

    @_translate_errors
    def DeployAgent(self, request, context):
        agent, report = self._runtime.deploy(
            request.name, request.module, request.limits, request.policy, request.label, request.restart,
            request.replicas,
        )
        return caxton_pb2.DeployAgentResponse(status=self._status(agent), report=report_to_proto(report))

    @_translate_errors
    def StopAgent(self, request, context):
        agent = self._runtime.stop(request.name, request.timeout_ms)
        return caxton_pb2.StopAgentResponse(status=self._status(agent))

    @_translate_errors
    def StartAgent(self, request, context):
        agent = self._runtime.start(request.name)
        return caxton_pb2.StartAgentResponse(status=self._status(agent))

    @_translate_errors
    def HotReloadAgent(self, request, context):
        agent, from_version, report, switched, drained = self._runtime.hot_reload(
            request.name, request.module, request.limits, request.policy, request.label, list(request.warmup),
            request.drain_timeout_ms,
        )
        return caxton_pb2.HotReloadAgentResponse(
            status=self._status(agent), from_version=from_version, to_version=agent.version.version,
            report=report_to_proto(report), switched_after_s=switched, drained_after_s=drained,
        )

    @_translate_errors
    def RollbackAgent(self, request, context):
        agent, from_version, switched, drained = self._runtime.rollback(
            request.name, request.to_version, request.drain_timeout_ms
        )
        return caxton_pb2.HotReloadAgentResponse(
            status=self._status(agent), from_version=from_version, to_version=agent.version.version,
            switched_after_s=switched, drained_after_s=drained,
        )

    def WatchEvents(self, request, context) -> Iterator[caxton_pb2.Event]:
        subscription = self._runtime.events.subscribe(request.agent)
        try:
            # Tells the client it is subscribed: it can now start what it
            # wants to watch without missing the first events.
            yield caxton_pb2.Event(at=time.time(), agent=request.agent, kind="watching")
            while context.is_active() and not subscription.closed:
                event = subscription.next(_WATCH_POLL_S)
                if event is not None:
                    yield caxton_pb2.Event(
                        at=event.at, agent=event.agent, kind=event.kind, version=event.version, message=event.message
                    )
        finally:
            self._runtime.events.unsubscribe(subscription)

    @_translate_errors
    def RemoveAgent(self, request, context):
        self._runtime.remove(request.name, request.timeout_ms)
        return caxton_pb2.RemoveAgentResponse()

    @_translate_errors
    def GetAgentStatus(self, request, context):
        return self._status(self._runtime.get(request.name))

    @_translate_errors
    def ListAgents(self, request, context):
        return caxton_pb2.ListAgentsResponse(agents=[self._status(a) for a in self._runtime.agents()])

    @_translate_errors
    def ValidateModule(self, request, context):
        limits = request.limits if request.HasField("limits") else None
        return report_to_proto(self._runtime.validate(request.module, request.policy, limits))


class MessagingService(caxton_pb2_grpc.MessagingServicer):
    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    @_translate_errors
    def Send(self, request, context):
        message = request.message
        done = threading.Event()
        outcome: list = []

        def callback(code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
            outcome.append((code, error, reply))
            done.set()

        deadline, remaining = _deadline(context)
        pending = self._runtime.submit(message, deadline, callback)
        if not done.wait(remaining):
            pending.cancel()
            raise DeadlineExceeded(f"no reply from agent {message.receiver!r} before the deadline")
        code, error, reply = outcome[0]
        if code is not _OK:
            raise MessageFailed(code, error)
        if reply is None:
            return caxton_pb2.SendResponse(has_reply=False)
        return caxton_pb2.SendResponse(reply=reply_envelope(message, reply), has_reply=True)

    def SendStream(self, request_iterator: Iterator[caxton_pb2.SendStreamRequest], context) -> Iterator[caxton_pb2.SendStreamResponse]:
        """Results are written by whichever thread resolves them into one
        queue; this generator sends everything that has accumulated as one
        frame, so frames grow with load exactly like the batches do."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        stream = _StreamState(results)
        deadline, _ = _deadline(context)
        reader = threading.Thread(
            target=self._read_stream, args=(request_iterator, stream, deadline), name="stream-reader", daemon=True
        )
        reader.start()
        while True:
            item = results.get()
            batch = []
            finished = False
            while True:
                if item is None:
                    finished = True
                else:
                    batch.append(item)
                try:
                    item = results.get_nowait()
                except queue.Empty:
                    break
            if batch:
                yield caxton_pb2.SendStreamResponse(results=batch)
            if finished:
                return

    def _read_stream(self, request_iterator, stream: "_StreamState", deadline: float | None) -> None:
        submit = self._runtime.submit
        try:
            for request in request_iterator:
                for item in request.items:
                    stream.opened()
                    try:
                        submit(item.message, deadline, stream.callback(item.id, item.message))
                    except CaxtonError as exc:
                        stream.resolved(caxton_pb2.StreamResult(id=item.id, code=exc.code.value[0], error=exc.message))
        except grpc.RpcError:
            pass  # the client went away; outstanding results have nowhere to go
        except Exception:
            log.exception("SendStream reader failed")
        finally:
            stream.finish_reading()


class _StreamState:
    """Counts outstanding messages on one stream so that the response stream
    ends exactly when the client has finished sending and every message it
    sent has its result."""

    def __init__(self, results: queue.SimpleQueue):
        self._results = results
        self._lock = threading.Lock()
        self._outstanding = 0
        self._reading = True

    def opened(self) -> None:
        with self._lock:
            self._outstanding += 1

    def resolved(self, result: caxton_pb2.StreamResult) -> None:
        self._results.put(result)
        with self._lock:
            self._outstanding -= 1
            last = not self._reading and self._outstanding == 0
        if last:
            self._results.put(None)

    def finish_reading(self) -> None:
        with self._lock:
            self._reading = False
            last = self._outstanding == 0
        if last:
            self._results.put(None)

    def callback(self, item_id: int, message: caxton_pb2.AgentMessage):
        def on_result(code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
            if code is _OK:
                if reply is None:
                    result = caxton_pb2.StreamResult(id=item_id)
                else:
                    result = caxton_pb2.StreamResult(id=item_id, reply=reply_envelope(message, reply), has_reply=True)
            else:
                result = caxton_pb2.StreamResult(id=item_id, code=code.value[0], error=error)
            self.resolved(result)

        return on_result
