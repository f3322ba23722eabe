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

class NodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_KIND_UNSPECIFIED: _ClassVar[NodeKind]
    NODE_KIND_DRONE: _ClassVar[NodeKind]
    NODE_KIND_PROXY: _ClassVar[NodeKind]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DRAINING: _ClassVar[NodeState]
    NODE_STATE_UNHEALTHY: _ClassVar[NodeState]
    NODE_STATE_OFFLINE: _ClassVar[NodeState]

class NodeEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_EVENT_TYPE_UNSPECIFIED: _ClassVar[NodeEventType]
    NODE_EVENT_TYPE_ADDED: _ClassVar[NodeEventType]
    NODE_EVENT_TYPE_MODIFIED: _ClassVar[NodeEventType]
    NODE_EVENT_TYPE_REMOVED: _ClassVar[NodeEventType]
    NODE_EVENT_TYPE_BOOKMARK: _ClassVar[NodeEventType]
    NODE_EVENT_TYPE_SNAPSHOT_END: _ClassVar[NodeEventType]
NODE_KIND_UNSPECIFIED: NodeKind
NODE_KIND_DRONE: NodeKind
NODE_KIND_PROXY: NodeKind
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DRAINING: NodeState
NODE_STATE_UNHEALTHY: NodeState
NODE_STATE_OFFLINE: NodeState
NODE_EVENT_TYPE_UNSPECIFIED: NodeEventType
NODE_EVENT_TYPE_ADDED: NodeEventType
NODE_EVENT_TYPE_MODIFIED: NodeEventType
NODE_EVENT_TYPE_REMOVED: NodeEventType
NODE_EVENT_TYPE_BOOKMARK: NodeEventType
NODE_EVENT_TYPE_SNAPSHOT_END: NodeEventType

class NodeResources(_message.Message):
    __slots__ = ("cpu_cores", "cpu_used_millis", "memory_total_bytes", "memory_used_bytes")
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_USED_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: int
    cpu_used_millis: int
    memory_total_bytes: int
    memory_used_bytes: int
    def __init__(self, cpu_cores: _Optional[int] = ..., cpu_used_millis: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "name", "kind", "cluster", "pool", "labels", "state", "version", "controller_id", "registered_at", "last_heartbeat_at", "resources", "backend_count", "backend_capacity", "drain_deadline", "revision", "draining")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DRAIN_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    kind: NodeKind
    cluster: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    state: NodeState
    version: str
    controller_id: str
    registered_at: _timestamp_pb2.Timestamp
    last_heartbeat_at: _timestamp_pb2.Timestamp
    resources: NodeResources
    backend_count: int
    backend_capacity: int
    drain_deadline: _timestamp_pb2.Timestamp
    revision: int
    draining: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[NodeKind, str]] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[NodeState, str]] = ..., version: _Optional[str] = ..., controller_id: _Optional[str] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resources: _Optional[_Union[NodeResources, _Mapping]] = ..., backend_count: _Optional[int] = ..., backend_capacity: _Optional[int] = ..., drain_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class NodeFilter(_message.Message):
    __slots__ = ("kinds", "states", "cluster", "pool", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KINDS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[NodeKind]
    states: _containers.RepeatedScalarFieldContainer[NodeState]
    cluster: str
    pool: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, kinds: _Optional[_Iterable[_Union[NodeKind, str]]] = ..., states: _Optional[_Iterable[_Union[NodeState, str]]] = ..., cluster: _Optional[str] = ..., pool: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: NodeFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[NodeFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "next_page_token", "revision")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    next_page_token: str
    revision: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("id", "deadline")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    id: str
    deadline: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DrainNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UndrainNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class WatchNodesRequest(_message.Message):
    __slots__ = ("filter", "start_revision", "send_initial", "bookmark_interval")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    SEND_INITIAL_FIELD_NUMBER: _ClassVar[int]
    BOOKMARK_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    filter: NodeFilter
    start_revision: int
    send_initial: bool
    bookmark_interval: _duration_pb2.Duration
    def __init__(self, filter: _Optional[_Union[NodeFilter, _Mapping]] = ..., start_revision: _Optional[int] = ..., send_initial: _Optional[bool] = ..., bookmark_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchNodesResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: NodeEvent
    def __init__(self, event: _Optional[_Union[NodeEvent, _Mapping]] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("type", "node", "revision")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: NodeEventType
    node: Node
    revision: int
    def __init__(self, type: _Optional[_Union[NodeEventType, str]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...
