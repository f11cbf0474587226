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
from collections.abc import Callable, Iterator

import grpc

from caxton.contract import REPORT_METADATA_KEY
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .config import Limits
from .deadline import Deadline
from .errors import CaxtonError, DeadlineExceeded, MessageFailed, ModuleRejected
from .lifecycle import AgentState
from .restart import RestartSettings
from .router import Router
from .runtime import Reloaded, Runtime
from .specs import DeploySpec, LimitOverrides, ReloadSpec, RestartOverrides
from .status import AgentSnapshot
from .store import VersionRecord
from .validation import Report, Severity

log = logging.getLogger("caxton.api")

_OK = grpc.StatusCode.OK


_PROTO_SEVERITY = {
    Severity.INFO: caxton_pb2.SEVERITY_INFO,
    Severity.WARNING: caxton_pb2.SEVERITY_WARNING,
    Severity.ERROR: caxton_pb2.SEVERITY_ERROR,
}


def report_to_proto(report: Report) -> caxton_pb2.ValidationReport:
    return caxton_pb2.ValidationReport(
        valid=report.valid,
        module_sha256=report.module_sha256,
        policy=report.policy,
        findings=[
            caxton_pb2.Finding(rule=f.rule, severity=_PROTO_SEVERITY[f.severity], message=f.message)
            for f in report.findings
        ],
    )


_PROTO_STATE = {
    AgentState.UNLOADED: caxton_pb2.AGENT_STATE_UNLOADED,
    AgentState.LOADED: caxton_pb2.AGENT_STATE_LOADED,
    AgentState.RUNNING: caxton_pb2.AGENT_STATE_RUNNING,
    AgentState.DRAINING: caxton_pb2.AGENT_STATE_DRAINING,
    AgentState.STOPPED: caxton_pb2.AGENT_STATE_STOPPED,
    AgentState.FAILED: caxton_pb2.AGENT_STATE_FAILED,
}


def limits_to_proto(limits: Limits) -> caxton_pb2.ResourceLimits:
    return caxton_pb2.ResourceLimits(memory_bytes=limits.memory_bytes, fuel=limits.fuel,
                                     timeout_ms=limits.timeout_ms, max_message_bytes=limits.max_message_bytes)


def limits_from_proto(request: caxton_pb2.ResourceLimits) -> LimitOverrides:
    """Zero (proto3's unset) means "not given"."""
    return LimitOverrides(memory_bytes=request.memory_bytes or None, fuel=request.fuel or None,
                          timeout_ms=request.timeout_ms or None, max_message_bytes=request.max_message_bytes or None)


def restart_to_proto(settings: RestartSettings) -> caxton_pb2.RestartPolicy:
    return caxton_pb2.RestartPolicy(
        initial_delay_ms=round(settings.initial_delay_s * 1000),
        factor=settings.factor,
        max_delay_ms=round(settings.max_delay_s * 1000),
        reset_after_s=round(settings.reset_after_s),
        max_failures=settings.max_failures,
        window_s=round(settings.window_s),
        breaker_cooldown_ms=round(settings.breaker_cooldown_s * 1000),
        breaker_cooldown_max_ms=round(settings.breaker_cooldown_max_s * 1000),
        auto_recover=settings.auto_recover,
    )


def restart_from_proto(request: caxton_pb2.RestartPolicy) -> RestartOverrides:
    return RestartOverrides(
        initial_delay_s=request.initial_delay_ms / 1000 if request.initial_delay_ms else None,
        factor=request.factor or None,
        max_delay_s=request.max_delay_ms / 1000 if request.max_delay_ms else None,
        reset_after_s=float(request.reset_after_s) if request.reset_after_s else None,
        max_failures=request.max_failures or None,
        window_s=float(request.window_s) if request.window_s else None,
        breaker_cooldown_s=request.breaker_cooldown_ms / 1000 if request.breaker_cooldown_ms else None,
        breaker_cooldown_max_s=request.breaker_cooldown_max_ms / 1000 if request.breaker_cooldown_max_ms else None,
        auto_recover=request.auto_recover if request.HasField("auto_recover") else None,
    )


def _history_to_proto(record: VersionRecord) -> caxton_pb2.VersionRecord:
    return caxton_pb2.VersionRecord(version=record.version, label=record.label, module_sha256=record.module_sha256,
                                    limits=limits_to_proto(record.limits), deployed_at=record.deployed_at)


def status_to_proto(status: AgentSnapshot) -> caxton_pb2.AgentStatus:
    return caxton_pb2.AgentStatus(
        name=status.name,
        state=_PROTO_STATE[status.state],
        version=status.version.version,
        label=status.version.label,
        module_sha256=status.version.module_sha256,
        uptime_s=status.uptime_s,
        memory_bytes=status.memory_bytes,
        messages=status.messages,
        errors=status.errors,
        restarts=status.restarts,
        instances=[caxton_pb2.InstanceStatus(
            pid=i.pid, version=i.version, uptime_s=i.uptime_s, rss_bytes=i.rss_bytes, enforcement=i.enforcement,
            memory_bytes=i.memory_bytes, messages=i.messages, errors=i.errors, resets=i.resets,
        ) for i in status.instances],
        limits=limits_to_proto(status.limits),
        last_error=status.last_error,
        deployed_at=status.version.deployed_at,
        policy=status.policy,
        restart=restart_to_proto(status.restart),
        recent_failures=[caxton_pb2.Failure(at=f.at, reason=f.reason) for f in status.recent_failures],
        next_restart_in_s=status.next_restart_in_s,
        replicas=status.replicas,
        versions=[caxton_pb2.VersionInService(version=v.version, replicas=v.replicas, messages=v.messages,
                                              share=v.share) for v in status.versions],
        history=[_history_to_proto(record) for record in status.history],
        breaker=caxton_pb2.Breaker(state=status.breaker.state.value, opened_at=status.breaker.opened_at or 0.0,
                                   reason=status.breaker.reason,
                                   next_attempt_in_s=status.breaker.next_attempt_in_s),
    )


def reply_envelope(request: caxton_pb2.AgentMessage, content: bytes) -> caxton_pb2.AgentMessage:
    """The FIPA-ACL envelope around an agent's reply."""
    return caxton_pb2.AgentMessage(
        performative=caxton_pb2.PERFORMATIVE_INFORM,
        sender=request.receiver,
        receiver=request.sender,
        conversation_id=request.conversation_id,
        in_reply_to=request.reply_with or request.message_id,
        content=content,
    )


def _reloaded_to_proto(result: Reloaded) -> caxton_pb2.HotReloadAgentResponse:
    response = caxton_pb2.HotReloadAgentResponse(
        status=status_to_proto(result.status), from_version=result.rollout.from_version,
        to_version=result.rollout.to_version, switched_after_s=result.rollout.switched_after_s,
        drained_after_s=result.rollout.drained_after_s,
    )
    if result.report is not None:
        response.report.CopyFrom(report_to_proto(result.report))
    return response


def _seconds(milliseconds: int) -> float | None:
    """A request's optional timeout in ms (0 = the supervisor's default)."""
    return milliseconds / 1000 if milliseconds else None


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


def _deadline(context: grpc.ServicerContext) -> Deadline:
    """The caller's deadline (never, if the caller set none)."""
    remaining = context.time_remaining()
    return Deadline.never() if remaining is None or remaining > 1e9 else Deadline.after(remaining)


# How often an idle WatchEvents stream checks that its client is still there.
_WATCH_POLL_S = 1.0


class AgentLifecycleService(caxton_pb2_grpc.AgentLifecycleServicer):
    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    @_translate_errors
    def DeployAgent(self, request, context):
        deployed = self._runtime.deploy(DeploySpec(
            name=request.name, module=request.module, limits=limits_from_proto(request.limits),
            policy=request.policy, label=request.label, restart=restart_from_proto(request.restart),
            replicas=request.replicas or None,
        ))
        return caxton_pb2.DeployAgentResponse(status=status_to_proto(deployed.status),
                                              report=report_to_proto(deployed.report))

    @_translate_errors
    def StopAgent(self, request, context):
        status = self._runtime.stop(request.name, _seconds(request.timeout_ms))
        return caxton_pb2.StopAgentResponse(status=status_to_proto(status))

    @_translate_errors
    def StartAgent(self, request, context):
        return caxton_pb2.StartAgentResponse(status=status_to_proto(self._runtime.start(request.name)))

    @_translate_errors
    def HotReloadAgent(self, request, context):
        return _reloaded_to_proto(self._runtime.hot_reload(ReloadSpec(
            name=request.name, module=request.module, limits=limits_from_proto(request.limits),
            policy=request.policy, label=request.label, warmup=tuple(request.warmup),
            drain_timeout_s=_seconds(request.drain_timeout_ms),
        )))

    @_translate_errors
    def RollbackAgent(self, request, context):
        return _reloaded_to_proto(self._runtime.rollback(
            request.name, request.to_version or None, _seconds(request.drain_timeout_ms)))

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
        self._runtime.remove(request.name, _seconds(request.timeout_ms))
        return caxton_pb2.RemoveAgentResponse()

    @_translate_errors
    def GetAgentStatus(self, request, context):
        return status_to_proto(self._runtime.status(request.name))

    @_translate_errors
    def ListAgents(self, request, context):
        return caxton_pb2.ListAgentsResponse(agents=[status_to_proto(s) for s in self._runtime.list()])

    @_translate_errors
    def ValidateModule(self, request, context):
        limits = limits_from_proto(request.limits) if request.HasField("limits") else None
        return report_to_proto(self._runtime.validate(request.module, request.policy, limits))


class MessagingService(caxton_pb2_grpc.MessagingServicer):
    def __init__(self, router: Router):
        self._router = router

    @_translate_errors
    def Send(self, request, context):
        message = request.message
        done = threading.Event()
        outcome: list = []

        def callback(code: grpc.StatusCode, error: str, reply: bytes | None) -> None:
            outcome.append((code, error, reply))
            done.set()

        deadline = _deadline(context)
        pending = self._router.submit(message, deadline, callback)
        if not done.wait(deadline.timeout()):
            pending.cancel()
            raise DeadlineExceeded(f"no reply from agent {message.receiver!r} before the deadline")
        code, error, reply = outcome[0]
        if code is not _OK:
            raise MessageFailed(code, error)
        if reply is None:
            return caxton_pb2.SendResponse(has_reply=False)
        return caxton_pb2.SendResponse(reply=reply_envelope(message, reply), has_reply=True)

    def SendStream(self, request_iterator: Iterator[caxton_pb2.SendStreamRequest],
                   context) -> Iterator[caxton_pb2.SendStreamResponse]:
        """Results are written by whichever thread resolves them into one
        queue; this generator sends everything that has accumulated as one
        frame, so frames grow with load exactly like the batches do."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        stream = _StreamState(results)
        deadline = _deadline(context)
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

    def _read_stream(self, request_iterator, stream: _StreamState, deadline: Deadline) -> None:
        submit = self._router.submit
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
