from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_UNLOADED: _ClassVar[AgentState]
    AGENT_STATE_LOADED: _ClassVar[AgentState]
    AGENT_STATE_RUNNING: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_STOPPED: _ClassVar[AgentState]
    AGENT_STATE_FAILED: _ClassVar[AgentState]

class Performative(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERFORMATIVE_UNSPECIFIED: _ClassVar[Performative]
    PERFORMATIVE_REQUEST: _ClassVar[Performative]
    PERFORMATIVE_INFORM: _ClassVar[Performative]
    PERFORMATIVE_QUERY_IF: _ClassVar[Performative]
    PERFORMATIVE_QUERY_REF: _ClassVar[Performative]
    PERFORMATIVE_PROPOSE: _ClassVar[Performative]
    PERFORMATIVE_ACCEPT_PROPOSAL: _ClassVar[Performative]
    PERFORMATIVE_REJECT_PROPOSAL: _ClassVar[Performative]
    PERFORMATIVE_AGREE: _ClassVar[Performative]
    PERFORMATIVE_REFUSE: _ClassVar[Performative]
    PERFORMATIVE_FAILURE: _ClassVar[Performative]
    PERFORMATIVE_NOT_UNDERSTOOD: _ClassVar[Performative]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_UNLOADED: AgentState
AGENT_STATE_LOADED: AgentState
AGENT_STATE_RUNNING: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_STOPPED: AgentState
AGENT_STATE_FAILED: AgentState
PERFORMATIVE_UNSPECIFIED: Performative
PERFORMATIVE_REQUEST: Performative
PERFORMATIVE_INFORM: Performative
PERFORMATIVE_QUERY_IF: Performative
PERFORMATIVE_QUERY_REF: Performative
PERFORMATIVE_PROPOSE: Performative
PERFORMATIVE_ACCEPT_PROPOSAL: Performative
PERFORMATIVE_REJECT_PROPOSAL: Performative
PERFORMATIVE_AGREE: Performative
PERFORMATIVE_REFUSE: Performative
PERFORMATIVE_FAILURE: Performative
PERFORMATIVE_NOT_UNDERSTOOD: Performative
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity

class AgentMessage(_message.Message):
    __slots__ = ("performative", "sender", "receiver", "conversation_id", "reply_with", "in_reply_to", "message_id", "content", "hops")
    PERFORMATIVE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_WITH_FIELD_NUMBER: _ClassVar[int]
    IN_REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    performative: Performative
    sender: str
    receiver: str
    conversation_id: str
    reply_with: str
    in_reply_to: str
    message_id: str
    content: bytes
    hops: int
    def __init__(self, performative: _Optional[_Union[Performative, str]] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., conversation_id: _Optional[str] = ..., reply_with: _Optional[str] = ..., in_reply_to: _Optional[str] = ..., message_id: _Optional[str] = ..., content: _Optional[bytes] = ..., hops: _Optional[int] = ...) -> None: ...

class ResourceLimits(_message.Message):
    __slots__ = ("memory_bytes", "fuel", "timeout_ms", "max_message_bytes")
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FUEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    memory_bytes: int
    fuel: int
    timeout_ms: int
    max_message_bytes: int
    def __init__(self, memory_bytes: _Optional[int] = ..., fuel: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("initial_delay_ms", "factor", "max_delay_ms", "reset_after_s", "max_failures", "window_s", "breaker_cooldown_ms", "breaker_cooldown_max_ms", "auto_recover")
    INITIAL_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    BREAKER_COOLDOWN_MS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_COOLDOWN_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    AUTO_RECOVER_FIELD_NUMBER: _ClassVar[int]
    initial_delay_ms: int
    factor: float
    max_delay_ms: int
    reset_after_s: int
    max_failures: int
    window_s: int
    breaker_cooldown_ms: int
    breaker_cooldown_max_ms: int
    auto_recover: bool
    def __init__(self, initial_delay_ms: _Optional[int] = ..., factor: _Optional[float] = ..., max_delay_ms: _Optional[int] = ..., reset_after_s: _Optional[int] = ..., max_failures: _Optional[int] = ..., window_s: _Optional[int] = ..., breaker_cooldown_ms: _Optional[int] = ..., breaker_cooldown_max_ms: _Optional[int] = ..., auto_recover: _Optional[bool] = ...) -> None: ...

class TraceConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "follow", "include_content")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CONTENT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    follow: bool
    include_content: bool
    def __init__(self, conversation_id: _Optional[str] = ..., follow: _Optional[bool] = ..., include_content: _Optional[bool] = ...) -> None: ...

class TracedMessage(_message.Message):
    __slots__ = ("at", "message", "content_bytes", "outcome")
    AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    at: float
    message: AgentMessage
    content_bytes: int
    outcome: str
    def __init__(self, at: _Optional[float] = ..., message: _Optional[_Union[AgentMessage, _Mapping]] = ..., content_bytes: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class RolloutOptions(_message.Message):
    __slots__ = ("strategy", "batch", "keep_old_s", "canary_replicas", "steps", "step_s", "min_messages", "max_error_rate", "max_latency_ratio", "bake_s", "compare", "max_mismatch_rate")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    KEEP_OLD_S_FIELD_NUMBER: _ClassVar[int]
    CANARY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    MIN_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    MAX_MISMATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    batch: int
    keep_old_s: float
    canary_replicas: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    step_s: float
    min_messages: int
    max_error_rate: float
    max_latency_ratio: float
    bake_s: float
    compare: str
    max_mismatch_rate: float
    def __init__(self, strategy: _Optional[str] = ..., batch: _Optional[int] = ..., keep_old_s: _Optional[float] = ..., canary_replicas: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., step_s: _Optional[float] = ..., min_messages: _Optional[int] = ..., max_error_rate: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., bake_s: _Optional[float] = ..., compare: _Optional[str] = ..., max_mismatch_rate: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("strategy", "state", "step", "steps", "share", "stable_version", "candidate_version", "reason", "started_at", "ended_at", "verdict")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    state: str
    step: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    share: float
    stable_version: int
    candidate_version: int
    reason: str
    started_at: float
    ended_at: float
    verdict: str
    def __init__(self, strategy: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., share: _Optional[float] = ..., stable_version: _Optional[int] = ..., candidate_version: _Optional[int] = ..., reason: _Optional[str] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., verdict: _Optional[str] = ...) -> None: ...

class ControlRolloutRequest(_message.Message):
    __slots__ = ("name", "action")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class DeployAgentRequest(_message.Message):
    __slots__ = ("name", "module", "limits", "policy", "label", "restart", "replicas", "rollout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    module: bytes
    limits: ResourceLimits
    policy: str
    label: str
    restart: RestartPolicy
    replicas: int
    rollout: RolloutOptions
    def __init__(self, name: _Optional[str] = ..., module: _Optional[bytes] = ..., limits: _Optional[_Union[ResourceLimits, _Mapping]] = ..., policy: _Optional[str] = ..., label: _Optional[str] = ..., restart: _Optional[_Union[RestartPolicy, _Mapping]] = ..., replicas: _Optional[int] = ..., rollout: _Optional[_Union[RolloutOptions, _Mapping]] = ...) -> None: ...

class DeployAgentResponse(_message.Message):
    __slots__ = ("status", "report")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    report: ValidationReport
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ..., report: _Optional[_Union[ValidationReport, _Mapping]] = ...) -> None: ...

class StopAgentRequest(_message.Message):
    __slots__ = ("name", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class StopAgentResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ...) -> None: ...

class StartAgentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartAgentResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ...) -> None: ...

class RemoveAgentRequest(_message.Message):
    __slots__ = ("name", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RemoveAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAgentStatusRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("cluster",)
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    cluster: bool
    def __init__(self, cluster: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "unreachable_hosts")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_HOSTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    unreachable_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ..., unreachable_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("pid", "version", "uptime_s", "memory_bytes", "messages", "errors", "resets", "rss_bytes", "enforcement")
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESETS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    pid: int
    version: int
    uptime_s: float
    memory_bytes: int
    messages: int
    errors: int
    resets: int
    rss_bytes: int
    enforcement: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., version: _Optional[int] = ..., uptime_s: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., messages: _Optional[int] = ..., errors: _Optional[int] = ..., resets: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., enforcement: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("name", "state", "version", "label", "module_sha256", "uptime_s", "memory_bytes", "messages", "errors", "restarts", "instances", "limits", "last_error", "deployed_at", "policy", "restart", "recent_failures", "next_restart_in_s", "replicas", "versions", "history", "breaker", "rollout", "health_status", "health_reason", "host")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODULE_SHA256_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_RESTART_IN_S_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_STATUS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: AgentState
    version: int
    label: str
    module_sha256: str
    uptime_s: float
    memory_bytes: int
    messages: int
    errors: int
    restarts: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    limits: ResourceLimits
    last_error: str
    deployed_at: float
    policy: str
    restart: RestartPolicy
    recent_failures: _containers.RepeatedCompositeFieldContainer[Failure]
    next_restart_in_s: float
    replicas: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionInService]
    history: _containers.RepeatedCompositeFieldContainer[VersionRecord]
    breaker: Breaker
    rollout: RolloutStatus
    health_status: str
    health_reason: str
    host: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[AgentState, str]] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., module_sha256: _Optional[str] = ..., uptime_s: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., messages: _Optional[int] = ..., errors: _Optional[int] = ..., restarts: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., limits: _Optional[_Union[ResourceLimits, _Mapping]] = ..., last_error: _Optional[str] = ..., deployed_at: _Optional[float] = ..., policy: _Optional[str] = ..., restart: _Optional[_Union[RestartPolicy, _Mapping]] = ..., recent_failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., next_restart_in_s: _Optional[float] = ..., replicas: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionInService, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[VersionRecord, _Mapping]]] = ..., breaker: _Optional[_Union[Breaker, _Mapping]] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ..., health_status: _Optional[str] = ..., health_reason: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class Breaker(_message.Message):
    __slots__ = ("state", "opened_at", "reason", "next_attempt_in_s")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_IN_S_FIELD_NUMBER: _ClassVar[int]
    state: str
    opened_at: float
    reason: str
    next_attempt_in_s: float
    def __init__(self, state: _Optional[str] = ..., opened_at: _Optional[float] = ..., reason: _Optional[str] = ..., next_attempt_in_s: _Optional[float] = ...) -> None: ...

class VersionInService(_message.Message):
    __slots__ = ("version", "replicas", "messages", "share")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    version: int
    replicas: int
    messages: int
    share: float
    def __init__(self, version: _Optional[int] = ..., replicas: _Optional[int] = ..., messages: _Optional[int] = ..., share: _Optional[float] = ...) -> None: ...

class VersionRecord(_message.Message):
    __slots__ = ("version", "label", "module_sha256", "limits", "deployed_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODULE_SHA256_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    label: str
    module_sha256: str
    limits: ResourceLimits
    deployed_at: float
    def __init__(self, version: _Optional[int] = ..., label: _Optional[str] = ..., module_sha256: _Optional[str] = ..., limits: _Optional[_Union[ResourceLimits, _Mapping]] = ..., deployed_at: _Optional[float] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("at", "reason")
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    at: float
    reason: str
    def __init__(self, at: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class HotReloadAgentRequest(_message.Message):
    __slots__ = ("name", "module", "limits", "policy", "label", "warmup", "drain_timeout_ms", "rollout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    module: bytes
    limits: ResourceLimits
    policy: str
    label: str
    warmup: _containers.RepeatedScalarFieldContainer[bytes]
    drain_timeout_ms: int
    rollout: RolloutOptions
    def __init__(self, name: _Optional[str] = ..., module: _Optional[bytes] = ..., limits: _Optional[_Union[ResourceLimits, _Mapping]] = ..., policy: _Optional[str] = ..., label: _Optional[str] = ..., warmup: _Optional[_Iterable[bytes]] = ..., drain_timeout_ms: _Optional[int] = ..., rollout: _Optional[_Union[RolloutOptions, _Mapping]] = ...) -> None: ...

class RollbackAgentRequest(_message.Message):
    __slots__ = ("name", "to_version", "drain_timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_version: int
    drain_timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., to_version: _Optional[int] = ..., drain_timeout_ms: _Optional[int] = ...) -> None: ...

class HotReloadAgentResponse(_message.Message):
    __slots__ = ("status", "from_version", "to_version", "report", "switched_after_s", "drained_after_s", "rollout")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SWITCHED_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    DRAINED_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    from_version: int
    to_version: int
    report: ValidationReport
    switched_after_s: float
    drained_after_s: float
    rollout: RolloutStatus
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., report: _Optional[_Union[ValidationReport, _Mapping]] = ..., switched_after_s: _Optional[float] = ..., drained_after_s: _Optional[float] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("agent", "since")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    agent: str
    since: float
    def __init__(self, agent: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class AgentLogsRequest(_message.Message):
    __slots__ = ("name", "since", "follow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    since: float
    follow: bool
    def __init__(self, name: _Optional[str] = ..., since: _Optional[float] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("at", "agent", "version", "level", "text")
    AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    at: float
    agent: str
    version: int
    level: str
    text: str
    def __init__(self, at: _Optional[float] = ..., agent: _Optional[str] = ..., version: _Optional[int] = ..., level: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("at", "agent", "kind", "version", "message")
    AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    at: float
    agent: str
    kind: str
    version: int
    message: str
    def __init__(self, at: _Optional[float] = ..., agent: _Optional[str] = ..., kind: _Optional[str] = ..., version: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateModuleRequest(_message.Message):
    __slots__ = ("module", "policy", "limits")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    module: bytes
    policy: str
    limits: ResourceLimits
    def __init__(self, module: _Optional[bytes] = ..., policy: _Optional[str] = ..., limits: _Optional[_Union[ResourceLimits, _Mapping]] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("rule", "severity", "message")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    severity: Severity
    message: str
    def __init__(self, rule: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("valid", "findings", "module_sha256", "policy")
    VALID_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    MODULE_SHA256_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    module_sha256: str
    policy: str
    def __init__(self, valid: _Optional[bool] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., module_sha256: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: AgentMessage
    def __init__(self, message: _Optional[_Union[AgentMessage, _Mapping]] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("reply", "has_reply")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HAS_REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: AgentMessage
    has_reply: bool
    def __init__(self, reply: _Optional[_Union[AgentMessage, _Mapping]] = ..., has_reply: _Optional[bool] = ...) -> None: ...

class StreamItem(_message.Message):
    __slots__ = ("id", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    message: AgentMessage
    def __init__(self, id: _Optional[int] = ..., message: _Optional[_Union[AgentMessage, _Mapping]] = ...) -> None: ...

class SendStreamRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StreamItem]
    def __init__(self, items: _Optional[_Iterable[_Union[StreamItem, _Mapping]]] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("id", "code", "error", "reply", "has_reply")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HAS_REPLY_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    error: str
    reply: AgentMessage
    has_reply: bool
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., error: _Optional[str] = ..., reply: _Optional[_Union[AgentMessage, _Mapping]] = ..., has_reply: _Optional[bool] = ...) -> None: ...

class SendStreamResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StreamResult, _Mapping]]] = ...) -> None: ...
