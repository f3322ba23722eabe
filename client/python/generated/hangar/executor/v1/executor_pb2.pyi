import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPABILITY_UNSPECIFIED: _ClassVar[Capability]
    CAPABILITY_PREPARE_IMAGE: _ClassVar[Capability]
    CAPABILITY_STATS: _ClassVar[Capability]
    CAPABILITY_EVENTS: _ClassVar[Capability]
    CAPABILITY_RESOURCE_LIMITS: _ClassVar[Capability]
    CAPABILITY_OOM_REPORTING: _ClassVar[Capability]

class PullPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_POLICY_UNSPECIFIED: _ClassVar[PullPolicy]
    PULL_POLICY_IF_NOT_PRESENT: _ClassVar[PullPolicy]
    PULL_POLICY_ALWAYS: _ClassVar[PullPolicy]
    PULL_POLICY_NEVER: _ClassVar[PullPolicy]

class RuntimeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_STATE_UNSPECIFIED: _ClassVar[RuntimeState]
    RUNTIME_STATE_CREATED: _ClassVar[RuntimeState]
    RUNTIME_STATE_RUNNING: _ClassVar[RuntimeState]
    RUNTIME_STATE_EXITED: _ClassVar[RuntimeState]
    RUNTIME_STATE_UNKNOWN: _ClassVar[RuntimeState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_SYNC: _ClassVar[EventType]
    EVENT_TYPE_STARTED: _ClassVar[EventType]
    EVENT_TYPE_EXITED: _ClassVar[EventType]
    EVENT_TYPE_OOM: _ClassVar[EventType]
    EVENT_TYPE_REMOVED: _ClassVar[EventType]
CAPABILITY_UNSPECIFIED: Capability
CAPABILITY_PREPARE_IMAGE: Capability
CAPABILITY_STATS: Capability
CAPABILITY_EVENTS: Capability
CAPABILITY_RESOURCE_LIMITS: Capability
CAPABILITY_OOM_REPORTING: Capability
PULL_POLICY_UNSPECIFIED: PullPolicy
PULL_POLICY_IF_NOT_PRESENT: PullPolicy
PULL_POLICY_ALWAYS: PullPolicy
PULL_POLICY_NEVER: PullPolicy
RUNTIME_STATE_UNSPECIFIED: RuntimeState
RUNTIME_STATE_CREATED: RuntimeState
RUNTIME_STATE_RUNNING: RuntimeState
RUNTIME_STATE_EXITED: RuntimeState
RUNTIME_STATE_UNKNOWN: RuntimeState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_SYNC: EventType
EVENT_TYPE_STARTED: EventType
EVENT_TYPE_EXITED: EventType
EVENT_TYPE_OOM: EventType
EVENT_TYPE_REMOVED: EventType

class HandshakeRequest(_message.Message):
    __slots__ = ("protocol_major", "protocol_minor", "client_name", "client_version")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    protocol_minor: int
    client_name: str
    client_version: str
    def __init__(self, protocol_major: _Optional[int] = ..., protocol_minor: _Optional[int] = ..., client_name: _Optional[str] = ..., client_version: _Optional[str] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("protocol_major", "protocol_minor", "executor_name", "executor_version", "runtime_kind", "capabilities")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_KIND_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    protocol_minor: int
    executor_name: str
    executor_version: str
    runtime_kind: str
    capabilities: _containers.RepeatedScalarFieldContainer[Capability]
    def __init__(self, protocol_major: _Optional[int] = ..., protocol_minor: _Optional[int] = ..., executor_name: _Optional[str] = ..., executor_version: _Optional[str] = ..., runtime_kind: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[Capability, str]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "reason", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: bool
    reason: str
    message: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class PrepareImageRequest(_message.Message):
    __slots__ = ("image", "pull_policy")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PULL_POLICY_FIELD_NUMBER: _ClassVar[int]
    image: str
    pull_policy: PullPolicy
    def __init__(self, image: _Optional[str] = ..., pull_policy: _Optional[_Union[PullPolicy, str]] = ...) -> None: ...

class PrepareImageResponse(_message.Message):
    __slots__ = ("image_id", "pulled")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PULLED_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    pulled: bool
    def __init__(self, image_id: _Optional[str] = ..., pulled: _Optional[bool] = ...) -> None: ...

class ResourceLimits(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "pids")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    pids: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class BackendSpec(_message.Message):
    __slots__ = ("backend_id", "image", "args", "command", "env", "port", "resources", "labels")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    image: str
    args: _containers.RepeatedScalarFieldContainer[str]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    port: int
    resources: ResourceLimits
    labels: _containers.ScalarMap[str, str]
    def __init__(self, backend_id: _Optional[str] = ..., image: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., port: _Optional[int] = ..., resources: _Optional[_Union[ResourceLimits, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartBackendRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: BackendSpec
    def __init__(self, spec: _Optional[_Union[BackendSpec, _Mapping]] = ...) -> None: ...

class StartBackendResponse(_message.Message):
    __slots__ = ("runtime_id", "address")
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    runtime_id: str
    address: str
    def __init__(self, runtime_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class StopBackendRequest(_message.Message):
    __slots__ = ("backend_id", "grace")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    grace: _duration_pb2.Duration
    def __init__(self, backend_id: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StopBackendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveBackendRequest(_message.Message):
    __slots__ = ("backend_id",)
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    def __init__(self, backend_id: _Optional[str] = ...) -> None: ...

class RemoveBackendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InspectBackendRequest(_message.Message):
    __slots__ = ("backend_id",)
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    def __init__(self, backend_id: _Optional[str] = ...) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("backend_id", "runtime_id", "state", "exit_code", "oom_killed", "created_at", "started_at", "finished_at", "address")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    runtime_id: str
    state: RuntimeState
    exit_code: int
    oom_killed: bool
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    address: str
    def __init__(self, backend_id: _Optional[str] = ..., runtime_id: _Optional[str] = ..., state: _Optional[_Union[RuntimeState, str]] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., address: _Optional[str] = ...) -> None: ...

class InspectBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: BackendInfo
    def __init__(self, backend: _Optional[_Union[BackendInfo, _Mapping]] = ...) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    def __init__(self, backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RuntimeEvent(_message.Message):
    __slots__ = ("sequence", "type", "backend_id", "time", "exit_code")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    type: EventType
    backend_id: str
    time: _timestamp_pb2.Timestamp
    exit_code: int
    def __init__(self, sequence: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., backend_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit_code: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: RuntimeEvent
    def __init__(self, event: _Optional[_Union[RuntimeEvent, _Mapping]] = ...) -> None: ...

class StreamStatsRequest(_message.Message):
    __slots__ = ("backend_id", "interval")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    interval: _duration_pb2.Duration
    def __init__(self, backend_id: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BackendStats(_message.Message):
    __slots__ = ("time", "cpu_total_ns", "memory_used_bytes", "memory_limit_bytes", "pids", "net_rx_bytes", "net_tx_bytes")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    NET_RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NET_TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    cpu_total_ns: int
    memory_used_bytes: int
    memory_limit_bytes: int
    pids: int
    net_rx_bytes: int
    net_tx_bytes: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_total_ns: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., net_rx_bytes: _Optional[int] = ..., net_tx_bytes: _Optional[int] = ...) -> None: ...

class StreamStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: BackendStats
    def __init__(self, stats: _Optional[_Union[BackendStats, _Mapping]] = ...) -> None: ...
