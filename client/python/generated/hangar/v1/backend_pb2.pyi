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

class BackendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATE_UNSPECIFIED: _ClassVar[BackendState]
    BACKEND_STATE_SCHEDULED: _ClassVar[BackendState]
    BACKEND_STATE_LOADING: _ClassVar[BackendState]
    BACKEND_STATE_STARTING: _ClassVar[BackendState]
    BACKEND_STATE_WAITING: _ClassVar[BackendState]
    BACKEND_STATE_READY: _ClassVar[BackendState]
    BACKEND_STATE_TERMINATING: _ClassVar[BackendState]
    BACKEND_STATE_HARD_TERMINATING: _ClassVar[BackendState]
    BACKEND_STATE_TERMINATED: _ClassVar[BackendState]

class TerminationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TERMINATION_KIND_UNSPECIFIED: _ClassVar[TerminationKind]
    TERMINATION_KIND_SOFT: _ClassVar[TerminationKind]
    TERMINATION_KIND_HARD: _ClassVar[TerminationKind]

class TerminationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TERMINATION_REASON_UNSPECIFIED: _ClassVar[TerminationReason]
    TERMINATION_REASON_SWEPT: _ClassVar[TerminationReason]
    TERMINATION_REASON_LIFETIME: _ClassVar[TerminationReason]
    TERMINATION_REASON_EXTERNAL: _ClassVar[TerminationReason]
    TERMINATION_REASON_KEY_EXPIRED: _ClassVar[TerminationReason]
    TERMINATION_REASON_LOST: _ClassVar[TerminationReason]
    TERMINATION_REASON_STARTUP_TIMEOUT: _ClassVar[TerminationReason]
    TERMINATION_REASON_EXITED: _ClassVar[TerminationReason]
    TERMINATION_REASON_IMAGE_PULL_FAILED: _ClassVar[TerminationReason]
    TERMINATION_REASON_INTERNAL_ERROR: _ClassVar[TerminationReason]

class PullPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_POLICY_UNSPECIFIED: _ClassVar[PullPolicy]
    PULL_POLICY_IF_NOT_PRESENT: _ClassVar[PullPolicy]
    PULL_POLICY_ALWAYS: _ClassVar[PullPolicy]
    PULL_POLICY_NEVER: _ClassVar[PullPolicy]

class BackendEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_EVENT_TYPE_UNSPECIFIED: _ClassVar[BackendEventType]
    BACKEND_EVENT_TYPE_ADDED: _ClassVar[BackendEventType]
    BACKEND_EVENT_TYPE_MODIFIED: _ClassVar[BackendEventType]
    BACKEND_EVENT_TYPE_REMOVED: _ClassVar[BackendEventType]
    BACKEND_EVENT_TYPE_BOOKMARK: _ClassVar[BackendEventType]
    BACKEND_EVENT_TYPE_SNAPSHOT_END: _ClassVar[BackendEventType]
BACKEND_STATE_UNSPECIFIED: BackendState
BACKEND_STATE_SCHEDULED: BackendState
BACKEND_STATE_LOADING: BackendState
BACKEND_STATE_STARTING: BackendState
BACKEND_STATE_WAITING: BackendState
BACKEND_STATE_READY: BackendState
BACKEND_STATE_TERMINATING: BackendState
BACKEND_STATE_HARD_TERMINATING: BackendState
BACKEND_STATE_TERMINATED: BackendState
TERMINATION_KIND_UNSPECIFIED: TerminationKind
TERMINATION_KIND_SOFT: TerminationKind
TERMINATION_KIND_HARD: TerminationKind
TERMINATION_REASON_UNSPECIFIED: TerminationReason
TERMINATION_REASON_SWEPT: TerminationReason
TERMINATION_REASON_LIFETIME: TerminationReason
TERMINATION_REASON_EXTERNAL: TerminationReason
TERMINATION_REASON_KEY_EXPIRED: TerminationReason
TERMINATION_REASON_LOST: TerminationReason
TERMINATION_REASON_STARTUP_TIMEOUT: TerminationReason
TERMINATION_REASON_EXITED: TerminationReason
TERMINATION_REASON_IMAGE_PULL_FAILED: TerminationReason
TERMINATION_REASON_INTERNAL_ERROR: TerminationReason
PULL_POLICY_UNSPECIFIED: PullPolicy
PULL_POLICY_IF_NOT_PRESENT: PullPolicy
PULL_POLICY_ALWAYS: PullPolicy
PULL_POLICY_NEVER: PullPolicy
BACKEND_EVENT_TYPE_UNSPECIFIED: BackendEventType
BACKEND_EVENT_TYPE_ADDED: BackendEventType
BACKEND_EVENT_TYPE_MODIFIED: BackendEventType
BACKEND_EVENT_TYPE_REMOVED: BackendEventType
BACKEND_EVENT_TYPE_BOOKMARK: BackendEventType
BACKEND_EVENT_TYPE_SNAPSHOT_END: BackendEventType

class BackendKey(_message.Message):
    __slots__ = ("namespace", "name", "tag")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    tag: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class ResourceLimits(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "pids")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    pids: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class Executable(_message.Message):
    __slots__ = ("image", "command", "args", "env", "pull_policy", "container_port", "resources")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    PULL_POLICY_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    pull_policy: PullPolicy
    container_port: int
    resources: ResourceLimits
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., pull_policy: _Optional[_Union[PullPolicy, str]] = ..., container_port: _Optional[int] = ..., resources: _Optional[_Union[ResourceLimits, _Mapping]] = ...) -> None: ...

class SpawnConfig(_message.Message):
    __slots__ = ("executable", "cluster", "pool", "labels", "lifetime_limit", "max_idle", "static_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_IDLE_FIELD_NUMBER: _ClassVar[int]
    STATIC_TOKEN_FIELD_NUMBER: _ClassVar[int]
    executable: Executable
    cluster: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    lifetime_limit: _duration_pb2.Duration
    max_idle: _duration_pb2.Duration
    static_token: str
    def __init__(self, executable: _Optional[_Union[Executable, _Mapping]] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., lifetime_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_idle: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., static_token: _Optional[str] = ...) -> None: ...

class BackendStatus(_message.Message):
    __slots__ = ("state", "time", "termination_kind", "termination_reason", "exit_code", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_KIND_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: BackendState
    time: _timestamp_pb2.Timestamp
    termination_kind: TerminationKind
    termination_reason: TerminationReason
    exit_code: int
    message: str
    def __init__(self, state: _Optional[_Union[BackendState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., termination_kind: _Optional[_Union[TerminationKind, str]] = ..., termination_reason: _Optional[_Union[TerminationReason, str]] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("id", "key", "status", "drone_id", "cluster", "pool", "labels", "created_at", "last_activity_at", "fencing_token", "spawn_config", "address")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRONE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPAWN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    key: BackendKey
    status: BackendStatus
    drone_id: str
    cluster: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    last_activity_at: _timestamp_pb2.Timestamp
    fencing_token: int
    spawn_config: SpawnConfig
    address: str
    def __init__(self, id: _Optional[str] = ..., key: _Optional[_Union[BackendKey, _Mapping]] = ..., status: _Optional[_Union[BackendStatus, _Mapping]] = ..., drone_id: _Optional[str] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fencing_token: _Optional[int] = ..., spawn_config: _Optional[_Union[SpawnConfig, _Mapping]] = ..., address: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("key", "spawn_config", "user", "auth")
    class AuthEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    SPAWN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    key: BackendKey
    spawn_config: SpawnConfig
    user: str
    auth: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[_Union[BackendKey, _Mapping]] = ..., spawn_config: _Optional[_Union[SpawnConfig, _Mapping]] = ..., user: _Optional[str] = ..., auth: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("backend_id", "spawned", "status", "token", "url", "token_expires_at", "static_token", "backend")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    SPAWNED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATIC_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    spawned: bool
    status: BackendStatus
    token: str
    url: str
    token_expires_at: _timestamp_pb2.Timestamp
    static_token: str
    backend: Backend
    def __init__(self, backend_id: _Optional[str] = ..., spawned: _Optional[bool] = ..., status: _Optional[_Union[BackendStatus, _Mapping]] = ..., token: _Optional[str] = ..., url: _Optional[str] = ..., token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., static_token: _Optional[str] = ..., backend: _Optional[_Union[Backend, _Mapping]] = ...) -> None: ...

class GetBackendRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ...) -> None: ...

class BackendFilter(_message.Message):
    __slots__ = ("states", "drone_id", "key_namespace", "cluster", "pool", "labels", "key_prefix")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    DRONE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[BackendState]
    drone_id: str
    key_namespace: str
    cluster: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    key_prefix: str
    def __init__(self, states: _Optional[_Iterable[_Union[BackendState, str]]] = ..., drone_id: _Optional[str] = ..., key_namespace: _Optional[str] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., key_prefix: _Optional[str] = ...) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: BackendFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[BackendFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends", "next_page_token", "revision")
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    next_page_token: str
    revision: int
    def __init__(self, backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchBackendRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchBackendResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: BackendStatus
    def __init__(self, status: _Optional[_Union[BackendStatus, _Mapping]] = ...) -> None: ...

class WatchBackendsRequest(_message.Message):
    __slots__ = ("filter", "start_revision", "send_initial", "bookmark_interval")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    SEND_INITIAL_FIELD_NUMBER: _ClassVar[int]
    BOOKMARK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    filter: BackendFilter
    start_revision: int
    send_initial: bool
    bookmark_interval: _duration_pb2.Duration
    def __init__(self, filter: _Optional[_Union[BackendFilter, _Mapping]] = ..., start_revision: _Optional[int] = ..., send_initial: _Optional[bool] = ..., bookmark_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchBackendsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: BackendEvent
    def __init__(self, event: _Optional[_Union[BackendEvent, _Mapping]] = ...) -> None: ...

class BackendEvent(_message.Message):
    __slots__ = ("type", "backend", "revision")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: BackendEventType
    backend: Backend
    revision: int
    def __init__(self, type: _Optional[_Union[BackendEventType, str]] = ..., backend: _Optional[_Union[Backend, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class TerminateBackendRequest(_message.Message):
    __slots__ = ("id", "hard")
    ID_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    id: str
    hard: bool
    def __init__(self, id: _Optional[str] = ..., hard: _Optional[bool] = ...) -> None: ...

class TerminateBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ...) -> None: ...
