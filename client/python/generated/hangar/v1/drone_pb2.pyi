import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from hangar.v1 import backend_pb2 as _backend_pb2
from hangar.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DroneAttachRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "backend_event", "ack_action", "renew_key", "renew_keys")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_EVENT_FIELD_NUMBER: _ClassVar[int]
    ACK_ACTION_FIELD_NUMBER: _ClassVar[int]
    RENEW_KEY_FIELD_NUMBER: _ClassVar[int]
    RENEW_KEYS_FIELD_NUMBER: _ClassVar[int]
    hello: DroneHello
    heartbeat: DroneHeartbeat
    backend_event: DroneBackendEvent
    ack_action: AckAction
    renew_key: RenewKey
    renew_keys: RenewKeys
    def __init__(self, hello: _Optional[_Union[DroneHello, _Mapping]] = ..., heartbeat: _Optional[_Union[DroneHeartbeat, _Mapping]] = ..., backend_event: _Optional[_Union[DroneBackendEvent, _Mapping]] = ..., ack_action: _Optional[_Union[AckAction, _Mapping]] = ..., renew_key: _Optional[_Union[RenewKey, _Mapping]] = ..., renew_keys: _Optional[_Union[RenewKeys, _Mapping]] = ...) -> None: ...

class DroneAttachResponse(_message.Message):
    __slots__ = ("welcome", "action", "ack_event", "renew_key_response", "renew_keys_response")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACK_EVENT_FIELD_NUMBER: _ClassVar[int]
    RENEW_KEY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RENEW_KEYS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    action: DroneAction
    ack_event: AckEvent
    renew_key_response: RenewKeyResponse
    renew_keys_response: RenewKeysResponse
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., action: _Optional[_Union[DroneAction, _Mapping]] = ..., ack_event: _Optional[_Union[AckEvent, _Mapping]] = ..., renew_key_response: _Optional[_Union[RenewKeyResponse, _Mapping]] = ..., renew_keys_response: _Optional[_Union[RenewKeysResponse, _Mapping]] = ...) -> None: ...

class DroneHello(_message.Message):
    __slots__ = ("name", "cluster", "pool", "version", "labels", "backend_capacity", "resources", "runtime", "lease_deferrals")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEFERRALS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cluster: str
    pool: str
    version: str
    labels: _containers.ScalarMap[str, str]
    backend_capacity: int
    resources: _node_pb2.NodeResources
    runtime: str
    lease_deferrals: bool
    def __init__(self, name: _Optional[str] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., backend_capacity: _Optional[int] = ..., resources: _Optional[_Union[_node_pb2.NodeResources, _Mapping]] = ..., runtime: _Optional[str] = ..., lease_deferrals: _Optional[bool] = ...) -> None: ...

class DroneHeartbeat(_message.Message):
    __slots__ = ("local_time", "resources", "backend_count")
    LOCAL_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_COUNT_FIELD_NUMBER: _ClassVar[int]
    local_time: _timestamp_pb2.Timestamp
    resources: _node_pb2.NodeResources
    backend_count: int
    def __init__(self, local_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resources: _Optional[_Union[_node_pb2.NodeResources, _Mapping]] = ..., backend_count: _Optional[int] = ...) -> None: ...

class DroneBackendEvent(_message.Message):
    __slots__ = ("event_id", "backend_id", "status", "address")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    backend_id: str
    status: _backend_pb2.BackendStatus
    address: str
    def __init__(self, event_id: _Optional[str] = ..., backend_id: _Optional[str] = ..., status: _Optional[_Union[_backend_pb2.BackendStatus, _Mapping]] = ..., address: _Optional[str] = ...) -> None: ...

class AckAction(_message.Message):
    __slots__ = ("action_id",)
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    def __init__(self, action_id: _Optional[str] = ...) -> None: ...

class RenewKey(_message.Message):
    __slots__ = ("backend_id", "key", "fencing_token")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    key: _backend_pb2.BackendKey
    fencing_token: int
    def __init__(self, backend_id: _Optional[str] = ..., key: _Optional[_Union[_backend_pb2.BackendKey, _Mapping]] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class RenewKeys(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RenewKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[RenewKey, _Mapping]]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "controller_id", "heartbeat_interval", "batch_renewals", "store_outage_grace")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_RENEWALS_FIELD_NUMBER: _ClassVar[int]
    STORE_OUTAGE_GRACE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    controller_id: str
    heartbeat_interval: _duration_pb2.Duration
    batch_renewals: bool
    store_outage_grace: _duration_pb2.Duration
    def __init__(self, node_id: _Optional[str] = ..., controller_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., batch_renewals: _Optional[bool] = ..., store_outage_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DroneAction(_message.Message):
    __slots__ = ("action_id", "backend_id", "spawn", "terminate", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    SPAWN_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    backend_id: str
    spawn: SpawnBackend
    terminate: TerminateBackend
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, action_id: _Optional[str] = ..., backend_id: _Optional[str] = ..., spawn: _Optional[_Union[SpawnBackend, _Mapping]] = ..., terminate: _Optional[_Union[TerminateBackend, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SpawnBackend(_message.Message):
    __slots__ = ("executable", "key", "fencing_token", "static_token", "startup_timeout", "lease_duration", "stop_grace", "lease_remaining")
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATIC_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STARTUP_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    executable: _backend_pb2.Executable
    key: _backend_pb2.BackendKey
    fencing_token: int
    static_token: str
    startup_timeout: _duration_pb2.Duration
    lease_duration: _duration_pb2.Duration
    stop_grace: _duration_pb2.Duration
    lease_remaining: _duration_pb2.Duration
    def __init__(self, executable: _Optional[_Union[_backend_pb2.Executable, _Mapping]] = ..., key: _Optional[_Union[_backend_pb2.BackendKey, _Mapping]] = ..., fencing_token: _Optional[int] = ..., static_token: _Optional[str] = ..., startup_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stop_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TerminateBackend(_message.Message):
    __slots__ = ("kind", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: _backend_pb2.TerminationKind
    reason: _backend_pb2.TerminationReason
    def __init__(self, kind: _Optional[_Union[_backend_pb2.TerminationKind, str]] = ..., reason: _Optional[_Union[_backend_pb2.TerminationReason, str]] = ...) -> None: ...

class AckEvent(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class RenewKeyResponse(_message.Message):
    __slots__ = ("backend_id", "renewed", "expires_at", "deferred")
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    renewed: bool
    expires_at: _timestamp_pb2.Timestamp
    deferred: bool
    def __init__(self, backend_id: _Optional[str] = ..., renewed: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deferred: _Optional[bool] = ...) -> None: ...

class RenewKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RenewKeyResponse]
    def __init__(self, keys: _Optional[_Iterable[_Union[RenewKeyResponse, _Mapping]]] = ...) -> None: ...
