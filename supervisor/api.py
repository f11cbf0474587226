"""The public gRPC boundary (caxton.v1): protobuf <-> domain types, errors ->
statuses, and the AgentLifecycle service, a thin translation onto the Runtime.
The Messaging service is in messaging.py; both run on the asyncio server
(api_server.py).

This is the one boundary where domain errors become gRPC statuses. A module
rejected by validation also carries the full report, serialized, in the
trailing metadata key `caxton-validation-report-bin`, so clients can show
every finding, not just the summary line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from caxton.contract import REPORT_METADATA_KEY
from caxton.v1 import caxton_pb2, caxton_pb2_grpc

from .audit import Audit
from .auth import Authorizer, Principal, Role, check_policy_choice
from .config import Limits
from .deadline import Deadline
from .errors import CaxtonError, ModuleRejected, NotFound, PermissionDenied, ResourceExhausted
from .events import AgentEvent, EventBus
from .lifecycle import AgentState
from .memory_budget import MemoryBudget
from .metrics import Deployments
from .redact import without_paths
from .request_gate import request_bytes
from .restart import RestartSettings
from .rollout_status import RolloutRecord
from .runtime import Reloaded, Runtime
from .specs import DeploySpec, LimitOverrides, ReloadSpec, RestartOverrides, check_name
from .status import AgentSnapshot
from .store import VersionRecord
from .strategy import RolloutRequest
from .validation import Report, Severity

if TYPE_CHECKING:
    from .cluster import Cluster

T = TypeVar("T")

log = logging.getLogger("caxton.api")

# Copies of a module a call holds while it is processed (see _module_charge).
MODULE_COPIES = 4
# What a cluster read (another host's status, every host's list) may take
# when its caller set no deadline.
CLUSTER_READ_S = 5.0


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
        rollout=rollout_to_proto(status.rollout) if status.rollout is not None else None,
        health_status=status.health,
        health_reason=status.health_reason,
    )


def rollout_to_proto(record: RolloutRecord) -> caxton_pb2.RolloutStatus:
    return caxton_pb2.RolloutStatus(
        strategy=record.strategy, state=record.state.value, step=record.step, steps=record.steps,
        share=record.share, stable_version=record.stable_version, candidate_version=record.candidate_version,
        reason=without_paths(record.reason), started_at=record.started_at, ended_at=record.ended_at,
        verdict=record.verdict,
    )


def rollout_from_proto(request: caxton_pb2.RolloutOptions) -> RolloutRequest:
    def optional(name: str) -> Any:
        return getattr(request, name) if request.HasField(name) else None

    return RolloutRequest(
        strategy=request.strategy, batch=request.batch or None, keep_old_s=optional("keep_old_s"),
        canary_replicas=request.canary_replicas or None, steps=tuple(request.steps),
        step_s=optional("step_s"), min_messages=optional("min_messages"),
        max_error_rate=optional("max_error_rate"), max_latency_ratio=optional("max_latency_ratio"),
        bake_s=optional("bake_s"), compare=request.compare, max_mismatch_rate=optional("max_mismatch_rate"),
    )


def _reloaded_to_proto(result: Reloaded) -> caxton_pb2.HotReloadAgentResponse:
    response = caxton_pb2.HotReloadAgentResponse(
        status=status_to_proto(result.status), from_version=result.rollout.from_version,
        to_version=result.rollout.to_version, switched_after_s=result.rollout.switched_after_s,
        drained_after_s=result.rollout.drained_after_s,
    )
    if result.record is not None:
        response.rollout.CopyFrom(rollout_to_proto(result.record))
    if result.report is not None:
        response.report.CopyFrom(report_to_proto(result.report))
    return response


def _traced(event: AgentEvent, content: bool) -> caxton_pb2.TracedMessage:
    """A trace kept by the relay (relay.py) as the API shows it."""
    if event.kind == "events-dropped":
        return caxton_pb2.TracedMessage(at=event.at, outcome="dropped", message=caxton_pb2.AgentMessage(
            content=event.message.encode() if content else b""))
    kept = json.loads(event.message)
    message = caxton_pb2.AgentMessage(
        performative=kept["performative"], sender=kept["sender"],
        receiver=kept["receiver"], conversation_id=event.agent, reply_with=kept["reply_with"],
        in_reply_to=kept["in_reply_to"], message_id=kept["message_id"], hops=event.version,
        content=kept["content"].encode("latin-1") if content else b"",
    )
    return caxton_pb2.TracedMessage(at=event.at, message=message, content_bytes=kept["content_bytes"],
                                    outcome=event.kind)


def _log_line(line: AgentEvent) -> caxton_pb2.LogLine:
    """An agent's log line (kept on a per-agent event bus: kind = level)."""
    if line.kind == "events-dropped":  # a follower that fell behind
        return caxton_pb2.LogLine(at=line.at, agent=line.agent, level="warning", text=line.message)
    return caxton_pb2.LogLine(at=line.at, agent=line.agent, version=line.version, level=line.kind, text=line.message)


def _seconds(milliseconds: int) -> float | None:
    """A request's optional timeout in ms (0 = the supervisor's default)."""
    return milliseconds / 1000 if milliseconds else None



def translate_error(exc: Exception, what: str) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """The status, details and trailing metadata a failed call answers with.

    A CaxtonError is the caller's to read, message and all. Anything else is
    a bug: its details say only what failed and an error id; the log line
    with the same id has the exception and its traceback, which may name
    host paths and internals that are nobody else's business.
    """
    if isinstance(exc, ModuleRejected):
        return exc.code, exc.message, ((REPORT_METADATA_KEY, report_to_proto(exc.report).SerializeToString()),)
    if isinstance(exc, CaxtonError):
        return exc.code, exc.message, ()
    error_id = secrets.token_hex(4)
    log.error("internal error %s: %s failed", error_id, what, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error {error_id}: {what} failed", ()


def answer_error(context: grpc.aio.ServicerContext, exc: Exception, what: str) -> None:
    """End the call with the status for `exc` once the handler returns.

    Not context.abort: the AbortError it raises is kept in the call's state,
    and its traceback holds the handler's frames, the request among them, in
    a cycle that only the garbage collector frees: under a flood of refused
    1 MiB messages that is hundreds of MiB waiting for a collection.
    """
    code, details, trailing = translate_error(exc, what)
    if trailing:
        context.set_trailing_metadata(trailing)
    context.set_code(code)
    context.set_details(details)


def translate_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | None]]:
    """The one place where errors become statuses (see translate_error)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext) -> T | None:
        try:
            return await method(self, request, context)
        except Exception as exc:
            answer_error(context, exc, method.__name__)
            return None  # grpc sends no response when the status is not OK

    return wrapper


# The deployment strategy each lifecycle call counts as (metrics.py); a
# reload counts itself, under its strategy's name, when its rollout ends.
_STRATEGIES = {"DeployAgent": "deploy", "RollbackAgent": "rollback"}


def audited(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Record a lifecycle call in the audit log: who (the token's name),
    what, on which agent, and how it ended; and count deployments, reloads
    and rollbacks with their duration. Inside translate_errors, so it sees
    the domain error before it becomes a status."""

    @functools.wraps(method)
    async def wrapper(self: AgentLifecycleService, request, context: grpc.aio.ServicerContext) -> T:
        caller = self._principal(context).name
        started = time.monotonic()
        # A deploy to an existing agent with a strategy is a rollout, which
        # counts itself when it ends.
        rolls_out = (method.__name__ == "DeployAgent" and request.HasField("rollout")
                     and self._runtime.exists(request.name))
        outcome = "OK"
        try:
            response = await method(self, request, context)
            # RollbackAgent during a rollout is its abort, which counts itself.
            rolls_out = rolls_out or (isinstance(response, caxton_pb2.HotReloadAgentResponse)
                                      and method.__name__ == "RollbackAgent" and response.HasField("rollout"))
            return response
        except CaxtonError as exc:
            outcome = f"{exc.code.name}: {exc.message}"
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except Exception:
            outcome = "INTERNAL"
            raise
        finally:
            self._audit.record(caller, method.__name__, request.name, outcome)
            strategy = None if rolls_out else _STRATEGIES.get(method.__name__)
            if strategy is not None:
                self._deployments.finished(strategy, "succeeded" if outcome == "OK" else "failed",
                                           time.monotonic() - started)
                if strategy == "rollback" and outcome == "OK":
                    self._deployments.rolled_back(request.name, "manual")

    return wrapper


def deadline_of(context: grpc.aio.ServicerContext) -> Deadline:
    """The caller's deadline (never, if the caller set none)."""
    remaining = context.time_remaining()
    return Deadline.never() if remaining is None or remaining > 1e9 else Deadline.after(remaining)


class AgentLifecycleService(caxton_pb2_grpc.AgentLifecycleServicer):
    """Lifecycle calls block for seconds in the Runtime (starting workers,
    draining, validating): they run on `lifecycle`, a bounded pool, so they
    never hold the event loop; status queries run on `queries`, so that they
    never wait behind a slow deploy. A request that carries a module is
    charged to the memory budget while it is being processed."""

    def __init__(self, runtime: Runtime, budget: MemoryBudget, lifecycle: Executor, queries: Executor,
                 authorizer: Authorizer, audit: Audit, deployments: Deployments | None = None,
                 logbook: EventBus | None = None, traces: EventBus | None = None, cluster: Cluster | None = None):
        self._runtime = runtime
        # This supervisor's cluster ([cluster]); None: standalone.
        self._cluster = cluster
        self._deployments = deployments or Deployments()
        self._logbook = logbook or EventBus(per_agent=True)
        self._traces = traces or EventBus(per_agent=True)
        self._budget = budget
        self._lifecycle = lifecycle
        self._queries = queries
        self._authorizer = authorizer
        self._audit = audit

    def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """Who calls (the interceptor has already let the call through)."""
        return self._authorizer.authenticate(context.invocation_metadata() or ())

    def _check_policy(self, context: grpc.aio.ServicerContext, policy: str) -> None:
        check_policy_choice(self._principal(context), policy, self._runtime.config.default_policy)

    async def _run(self, executor: Executor, call: Callable[[], T], *, charge: int = 0) -> T:
        """`call()` on `executor`. `charge` bytes are held in the budget until
        it has finished: a call whose caller gave up may still be running (a
        deploy is never abandoned halfway), and its bytes with it. The
        request is converted inside `call`, so a refused one is never copied."""
        if charge and not self._budget.try_charge(charge):
            raise ResourceExhausted(self._budget.exhausted_message(charge))
        try:
            future = executor.submit(call)
        except BaseException:
            self._budget.release(charge)
            raise
        if charge:
            future.add_done_callback(lambda _: self._budget.release(charge))
        return await asyncio.wrap_future(future)

    @staticmethod
    def _module_charge(request: Message) -> int:
        """What a request with a module holds while it is processed: the
        request as received and as parsed, the module as the bytes the
        runtime works on, and the validator's copy of it."""
        size = request_bytes()
        return MODULE_COPIES * (size if size >= 0 else request.ByteSize())

    @translate_errors
    @audited
    async def DeployAgent(self, request, context):
        self._check_policy(context, request.policy)
        deadline = deadline_of(context)

        def deploy() -> caxton_pb2.DeployAgentResponse:
            claimed = self._claim(request.name, deadline)
            try:
                deployed = self._runtime.deploy(DeploySpec(
                    name=request.name, module=request.module, limits=limits_from_proto(request.limits),
                    policy=request.policy, label=request.label, restart=restart_from_proto(request.restart),
                    replicas=request.replicas or None,
                    rollout=rollout_from_proto(request.rollout) if request.HasField("rollout") else None,
                ))
            except BaseException:
                if claimed and not self._runtime.exists(request.name):
                    self._release(request.name)
                raise
            return caxton_pb2.DeployAgentResponse(status=self._with_host(status_to_proto(deployed.status)),
                                                  report=report_to_proto(deployed.report))

        return await self._run(self._lifecycle, deploy, charge=self._module_charge(request))

    def _claim(self, name: str, deadline: Deadline) -> bool:
        """In a cluster, a new agent's name is claimed first (unique across
        hosts: ALREADY_EXISTS naming the host that has it). True if claimed."""
        if self._cluster is None or self._runtime.exists(name):
            return False
        check_name(name)
        self._cluster.directory.claim(name, min(deadline.remaining(), CLUSTER_READ_S))
        return True

    def _release(self, name: str) -> None:
        if self._cluster is not None:
            self._cluster.directory.release(name)

    def _with_host(self, status: caxton_pb2.AgentStatus) -> caxton_pb2.AgentStatus:
        """In a cluster, every status this host answers names it."""
        if self._cluster is not None:
            status.host = self._cluster.host
        return status

    def _reloaded(self, result: Reloaded) -> caxton_pb2.HotReloadAgentResponse:
        response = _reloaded_to_proto(result)
        self._with_host(response.status)
        return response

    @translate_errors
    @audited
    async def StopAgent(self, request, context):
        return await self._run(self._lifecycle, lambda: caxton_pb2.StopAgentResponse(
            status=self._with_host(status_to_proto(self._runtime.stop(request.name, _seconds(request.timeout_ms))))))

    @translate_errors
    @audited
    async def StartAgent(self, request, context):
        return await self._run(self._lifecycle, lambda: caxton_pb2.StartAgentResponse(
            status=self._with_host(status_to_proto(self._runtime.start(request.name)))))

    @translate_errors
    @audited
    async def HotReloadAgent(self, request, context):
        self._check_policy(context, request.policy)

        def reload() -> caxton_pb2.HotReloadAgentResponse:
            return self._reloaded(self._runtime.hot_reload(ReloadSpec(
                name=request.name, module=request.module, limits=limits_from_proto(request.limits),
                policy=request.policy, label=request.label, warmup=tuple(request.warmup),
                drain_timeout_s=_seconds(request.drain_timeout_ms),
                rollout=rollout_from_proto(request.rollout),
            )))

        return await self._run(self._lifecycle, reload, charge=self._module_charge(request))

    @translate_errors
    @audited
    async def ControlRollout(self, request, context):
        return await self._run(self._lifecycle, lambda: rollout_to_proto(
            self._runtime.control_rollout(request.name, request.action)))

    @translate_errors
    @audited
    async def RollbackAgent(self, request, context):
        return await self._run(self._lifecycle, lambda: self._reloaded(self._runtime.rollback(
            request.name, request.to_version or None, _seconds(request.drain_timeout_ms))))

    @translate_errors
    async def WatchEvents(self, request, context):
        """Events as they happen, with no thread held while none do; the
        subscription's bounded queue drops the oldest for a client that
        does not keep up (events.py)."""
        subscription = self._runtime.events.subscribe(request.agent, since=request.since or None)
        try:
            # Tells the client it is subscribed: it can now start what it
            # wants to watch without missing the first events.
            await context.write(caxton_pb2.Event(at=time.time(), agent=request.agent, kind="watching"))
            while (event := await subscription.get()) is not None:
                await context.write(caxton_pb2.Event(
                    at=event.at, agent=event.agent, kind=event.kind, version=event.version, message=event.message
                ))
        finally:
            self._runtime.events.unsubscribe(subscription)

    @translate_errors
    @audited
    async def RemoveAgent(self, request, context):
        await self._run(self._lifecycle, lambda: self._runtime.remove(request.name, _seconds(request.timeout_ms)))
        self._release(request.name)
        self._logbook.forget(request.name)
        return caxton_pb2.RemoveAgentResponse()

    @translate_errors
    async def AgentLogs(self, request, context):
        """The agent's kept log lines newer than `since`, then, with follow,
        new ones as they come (no thread held while none do)."""
        self._runtime.get(request.name)  # NOT_FOUND for an unknown agent
        if not request.follow:
            for kept in self._logbook.replay(request.name, request.since):
                await context.write(_log_line(kept))
            return
        subscription = self._logbook.subscribe(request.name, since=request.since)
        try:
            while (line := await subscription.get()) is not None:
                await context.write(_log_line(line))
        finally:
            self._logbook.unsubscribe(subscription)

    @translate_errors
    async def TraceConversation(self, request, context):
        """A conversation's agent-to-agent messages kept so far, in order,
        then, with follow, as they are sent (no thread held meanwhile)."""
        principal = self._principal(context)
        content = request.include_content
        if content and not principal.may(Role.DEPLOYER):
            raise PermissionDenied(f"token {principal.name!r} ({principal.role.value}) may not read message "
                                   "content: it takes the deployer or admin role")
        key = request.conversation_id
        if not request.follow:
            for kept in self._traces.replay(key, 0.0):
                await context.write(_traced(kept, content))
            return
        subscription = self._traces.subscribe(key, since=0.0)
        try:
            while (event := await subscription.get()) is not None:
                await context.write(_traced(event, content))
        finally:
            self._traces.unsubscribe(subscription)

    @translate_errors
    async def GetAgentStatus(self, request, context):
        """In a cluster, an agent of another host is asked of that host."""
        timeout = min(deadline_of(context).remaining(), CLUSTER_READ_S)

        def status() -> caxton_pb2.AgentStatus:
            try:
                return self._with_host(status_to_proto(self._runtime.status(request.name)))
            except NotFound:
                host = self._cluster.remote.host_for(request.name) if self._cluster is not None else None
                if self._cluster is None or host is None:
                    raise
                return caxton_pb2.AgentStatus.FromString(self._cluster.queries.status(request.name, host, timeout))

        return await self._run(self._queries, status)

    @translate_errors
    async def ListAgents(self, request, context):
        """With `cluster`, every host is asked at once, within the deadline."""
        timeout = min(deadline_of(context).remaining(), CLUSTER_READ_S)

        def listing() -> caxton_pb2.ListAgentsResponse:
            response = caxton_pb2.ListAgentsResponse(
                agents=[self._with_host(status_to_proto(s)) for s in self._runtime.list()])
            if not request.cluster or self._cluster is None:
                return response
            others = self._cluster.directory.listing.hosts() - {self._cluster.host}
            for host, answer in sorted(self._cluster.queries.lists(others, timeout).items()):
                if isinstance(answer, bytes):
                    response.agents.extend(caxton_pb2.ListAgentsResponse.FromString(answer).agents)
                else:
                    response.unreachable_hosts.append(f"{host}: {answer}")
            response.agents.sort(key=lambda status: (status.name, status.host))
            return response

        return await self._run(self._queries, listing)

    @translate_errors
    async def ValidateModule(self, request, context):
        self._check_policy(context, request.policy)

        def validate() -> caxton_pb2.ValidationReport:
            limits = limits_from_proto(request.limits) if request.HasField("limits") else None
            return report_to_proto(self._runtime.validate(request.module, request.policy, limits))

        return await self._run(self._lifecycle, validate, charge=self._module_charge(request))
