from caxton.v1 import caxton_pb2 as _caxton_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
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

class OsLimits(_message.Message):
    __slots__ = ("data_bytes", "open_files", "cpu_seconds", "uid", "gid", "user_name", "no_syscall_filter")
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    USER_NAME_FIELD_NUMBER: _ClassVar[int]
    NO_SYSCALL_FILTER_FIELD_NUMBER: _ClassVar[int]
    data_bytes: int
    open_files: int
    cpu_seconds: int
    uid: int
    gid: int
    user_name: str
    no_syscall_filter: bool
    def __init__(self, data_bytes: _Optional[int] = ..., open_files: _Optional[int] = ..., cpu_seconds: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., user_name: _Optional[str] = ..., no_syscall_filter: _Optional[bool] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("agent", "version", "module_path", "cache_dir", "limits", "os_limits", "module_sha256", "send_budget")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODULE_PATH_FIELD_NUMBER: _ClassVar[int]
    CACHE_DIR_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OS_LIMITS_FIELD_NUMBER: _ClassVar[int]
    MODULE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SEND_BUDGET_FIELD_NUMBER: _ClassVar[int]
    agent: str
    version: int
    module_path: str
    cache_dir: str
    limits: Limits
    os_limits: OsLimits
    module_sha256: str
    send_budget: int
    def __init__(self, agent: _Optional[str] = ..., version: _Optional[int] = ..., module_path: _Optional[str] = ..., cache_dir: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., os_limits: _Optional[_Union[OsLimits, _Mapping]] = ..., module_sha256: _Optional[str] = ..., send_budget: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("level", "text")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    level: int
    text: str
    def __init__(self, level: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("init_code", "error", "logs", "cache_hit", "enforcement", "memory_bytes")
    INIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    init_code: int
    error: str
    logs: _containers.RepeatedCompositeFieldContainer[LogRecord]
    cache_hit: bool
    enforcement: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    def __init__(self, init_code: _Optional[int] = ..., error: _Optional[str] = ..., logs: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., cache_hit: _Optional[bool] = ..., enforcement: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class HandleRequest(_message.Message):
    __slots__ = ("messages", "deadline_ms")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_caxton_pb2.AgentMessage]
    deadline_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, messages: _Optional[_Iterable[_Union[_caxton_pb2.AgentMessage, _Mapping]]] = ..., deadline_ms: _Optional[_Iterable[int]] = ...) -> None: ...

class HandleResult(_message.Message):
    __slots__ = ("code", "error", "reply", "has_reply", "logs", "sent")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HAS_REPLY_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    code: int
    error: str
    reply: bytes
    has_reply: bool
    logs: _containers.RepeatedCompositeFieldContainer[LogRecord]
    sent: _containers.RepeatedCompositeFieldContainer[Outgoing]
    def __init__(self, code: _Optional[int] = ..., error: _Optional[str] = ..., reply: _Optional[bytes] = ..., has_reply: _Optional[bool] = ..., logs: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., sent: _Optional[_Iterable[_Union[Outgoing, _Mapping]]] = ...) -> None: ...

class Outgoing(_message.Message):
    __slots__ = ("to", "performative", "conversation_id", "reply_with", "content")
    TO_FIELD_NUMBER: _ClassVar[int]
    PERFORMATIVE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_WITH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    to: str
    performative: _caxton_pb2.Performative
    conversation_id: str
    reply_with: str
    content: bytes
    def __init__(self, to: _Optional[str] = ..., performative: _Optional[_Union[_caxton_pb2.Performative, str]] = ..., conversation_id: _Optional[str] = ..., reply_with: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class HandleResponse(_message.Message):
    __slots__ = ("results", "plain")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PLAIN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[HandleResult]
    plain: bool
    def __init__(self, results: _Optional[_Iterable[_Union[HandleResult, _Mapping]]] = ..., plain: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("memory_bytes", "messages", "errors", "resets")
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESETS_FIELD_NUMBER: _ClassVar[int]
    memory_bytes: int
    messages: int
    errors: int
    resets: int
    def __init__(self, memory_bytes: _Optional[int] = ..., messages: _Optional[int] = ..., errors: _Optional[int] = ..., resets: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ("logs",)
    LOGS_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, logs: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...
