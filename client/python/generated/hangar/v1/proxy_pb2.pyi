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

class ProxyAttachRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "traffic")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    hello: ProxyHello
    heartbeat: ProxyHeartbeat
    traffic: TrafficReport
    def __init__(self, hello: _Optional[_Union[ProxyHello, _Mapping]] = ..., heartbeat: _Optional[_Union[ProxyHeartbeat, _Mapping]] = ..., traffic: _Optional[_Union[TrafficReport, _Mapping]] = ...) -> None: ...

class ProxyAttachResponse(_message.Message):
    __slots__ = ("welcome", "invalidate")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    INVALIDATE_FIELD_NUMBER: _ClassVar[int]
    welcome: ProxyWelcome
    invalidate: RouteInvalidation
    def __init__(self, welcome: _Optional[_Union[ProxyWelcome, _Mapping]] = ..., invalidate: _Optional[_Union[RouteInvalidation, _Mapping]] = ...) -> None: ...

class ProxyHello(_message.Message):
    __slots__ = ("name", "cluster", "version", "labels", "public_url", "resources")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_URL_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    cluster: str
    version: str
    labels: _containers.ScalarMap[str, str]
    public_url: str
    resources: _node_pb2.NodeResources
    def __init__(self, name: _Optional[str] = ..., cluster: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., public_url: _Optional[str] = ..., resources: _Optional[_Union[_node_pb2.NodeResources, _Mapping]] = ...) -> None: ...

class ProxyHeartbeat(_message.Message):
    __slots__ = ("local_time", "resources")
    LOCAL_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    local_time: _timestamp_pb2.Timestamp
    resources: _node_pb2.NodeResources
    def __init__(self, local_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resources: _Optional[_Union[_node_pb2.NodeResources, _Mapping]] = ...) -> None: ...

class ProxyWelcome(_message.Message):
    __slots__ = ("node_id", "controller_id", "heartbeat_interval")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    controller_id: str
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, node_id: _Optional[str] = ..., controller_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrafficReport(_message.Message):
    __slots__ = ("backend_ids",)
    BACKEND_IDS_FIELD_NUMBER: _ClassVar[int]
    backend_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backend_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteInvalidation(_message.Message):
    __slots__ = ("backend_id",)
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    def __init__(self, backend_id: _Optional[str] = ...) -> None: ...

class LookupRouteRequest(_message.Message):
    __slots__ = ("token", "wait_for_ready")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_READY_FIELD_NUMBER: _ClassVar[int]
    token: str
    wait_for_ready: _duration_pb2.Duration
    def __init__(self, token: _Optional[str] = ..., wait_for_ready: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class LookupRouteResponse(_message.Message):
    __slots__ = ("backend_id", "state", "address", "user", "auth", "expires_at")
    class AuthEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    state: _backend_pb2.BackendState
    address: str
    user: str
    auth: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, backend_id: _Optional[str] = ..., state: _Optional[_Union[_backend_pb2.BackendState, str]] = ..., address: _Optional[str] = ..., user: _Optional[str] = ..., auth: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
