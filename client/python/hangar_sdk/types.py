"""Typed views of backends: :class:`Backend`, :class:`BackendStatus`, :class:`BackendKey`, and
the requests ``connect`` sends. Nodes stay the generated ``node_pb2.Node`` (they have no
lifecycle to follow); backends get a dataclass because callers use a few fields of them a lot."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Optional, Sequence, Union

from google.protobuf import duration_pb2, timestamp_pb2

from hangar.v1 import backend_pb2

from .names import enum_name


class BackendState(str, enum.Enum):
    """Where a backend is in its life (``BackendState`` in proto/hangar/v1/backend.proto). States
    only move forward; a step may be skipped. A ``str``, so ``state == "READY"`` works."""

    UNSPECIFIED = "UNSPECIFIED"
    SCHEDULED = "SCHEDULED"
    LOADING = "LOADING"
    STARTING = "STARTING"
    WAITING = "WAITING"
    READY = "READY"
    TERMINATING = "TERMINATING"
    HARD_TERMINATING = "HARD_TERMINATING"
    TERMINATED = "TERMINATED"

    def __str__(self) -> str:
        return self.value

    @property
    def number(self) -> int:
        return backend_pb2.BackendState.Value("BACKEND_STATE_" + self.value)

    @classmethod
    def from_proto(cls, value: int) -> "BackendState":
        try:
            return cls(enum_name(backend_pb2.BackendState, value))
        except ValueError:
            # A state from a newer server: the nearest this SDK knows is "not yet ready".
            return cls.UNSPECIFIED

    @property
    def is_terminal(self) -> bool:
        return self is BackendState.TERMINATED


@dataclass(frozen=True)
class BackendKey:
    """Names a backend by meaning: at most one live backend holds a key. ``str(key)`` is the
    CLI's form ``NS/NAME`` or ``NS/NAME@TAG``."""

    name: str
    namespace: str = "default"
    tag: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" + (f"@{self.tag}" if self.tag else "")

    @classmethod
    def parse(cls, text: str) -> "BackendKey":
        """``NAME``, ``NS/NAME`` or ``NS/NAME@TAG``, as ``hangar connect`` takes it (namespace
        ``default`` when left out)."""
        rest, _, tag = text.partition("@")
        if "@" in text and (not tag or "@" in tag):
            raise ValueError(f"{text!r} has an empty or second @TAG; expected NAME, NS/NAME or NS/NAME@TAG")
        namespace, slash, name = rest.rpartition("/")
        if not name or "/" in namespace or (slash and not namespace) or any(c.isspace() for c in text):
            raise ValueError(f"{text!r} is not a key; expected NAME, NS/NAME or NS/NAME@TAG (e.g. docs/doc-1@v2)")
        return cls(name=name, namespace=namespace or "default", tag=tag)

    def to_proto(self) -> backend_pb2.BackendKey:
        return backend_pb2.BackendKey(namespace=self.namespace, name=self.name, tag=self.tag)

    @classmethod
    def from_proto(cls, key: backend_pb2.BackendKey) -> "BackendKey":
        return cls(name=key.name, namespace=key.namespace, tag=key.tag)


KeyLike = Union[str, BackendKey, None]


def _time(message, name: str) -> Optional[datetime]:
    if not message.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class BackendStatus:
    """A backend's state, when it got there, and why it ended if it did."""

    state: BackendState
    time: Optional[datetime] = None
    #: ``"SOFT"`` or ``"HARD"`` once terminating; empty before.
    termination_kind: str = ""
    #: ``"SWEPT"``, ``"EXTERNAL"``, ``"EXITED"``, … once terminating; empty before.
    termination_reason: str = ""
    exit_code: Optional[int] = None
    #: Why it is in this state, in words, for people (match on ``termination_reason``).
    message: str = ""

    @classmethod
    def from_proto(cls, status: backend_pb2.BackendStatus) -> "BackendStatus":
        def name(enum, value: int) -> str:
            return "" if value == 0 else enum_name(enum, value)

        return cls(
            state=BackendState.from_proto(status.state),
            time=_time(status, "time"),
            termination_kind=name(backend_pb2.TerminationKind, status.termination_kind),
            termination_reason=name(backend_pb2.TerminationReason, status.termination_reason),
            exit_code=status.exit_code if status.HasField("exit_code") else None,
            message=status.message,
        )


@dataclass(frozen=True)
class Backend:
    """A backend as the controller last described it. ``url`` and ``token`` come from
    ``connect`` (the proxy URL to open and the connection token in it); ``get_backend`` and
    ``list_backends`` leave them empty, since only Connect hands out tokens."""

    id: str
    #: ``None`` for a backend started without a key.
    key: Optional[BackendKey]
    status: BackendStatus
    drone_id: str = ""
    cluster: str = ""
    pool: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    created_at: Optional[datetime] = None
    last_activity_at: Optional[datetime] = None
    #: Increases every time the key is taken; the backend gets it as ``HANGAR_FENCING_TOKEN``.
    fencing_token: int = 0
    #: ``host:port`` the backend answers on, as seen from its drone (empty until started).
    address: str = ""
    #: URL a client opens to reach the backend through a proxy (from ``connect``).
    url: str = ""
    #: Connection token for ``url``; it expires at ``token_expires_at`` (from ``connect``).
    token: str = ""
    token_expires_at: Optional[datetime] = None
    #: The static token, when the spawn config set one (from ``connect``).
    static_token: str = ""
    #: True when the ``connect`` call started it; False when it found a live one.
    spawned: bool = False
    #: The message this was made from, for fields this class does not surface.
    proto: backend_pb2.Backend = field(default_factory=backend_pb2.Backend, repr=False, compare=False)

    @property
    def state(self) -> BackendState:
        return self.status.state

    @classmethod
    def from_proto(cls, backend: backend_pb2.Backend) -> "Backend":
        return cls(
            id=backend.id,
            key=BackendKey.from_proto(backend.key) if backend.HasField("key") else None,
            status=BackendStatus.from_proto(backend.status),
            drone_id=backend.drone_id,
            cluster=backend.cluster,
            pool=backend.pool,
            labels=dict(backend.labels),
            created_at=_time(backend, "created_at"),
            last_activity_at=_time(backend, "last_activity_at"),
            fencing_token=backend.fencing_token,
            address=backend.address,
            proto=backend,
        )

    @classmethod
    def from_connect(cls, response: backend_pb2.ConnectResponse) -> "Backend":
        backend = cls.from_proto(response.backend)
        return backend.replace(
            id=response.backend_id or backend.id,
            status=BackendStatus.from_proto(response.status) if response.HasField("status") else backend.status,
            url=response.url,
            token=response.token,
            token_expires_at=_time(response, "token_expires_at"),
            static_token=response.static_token,
            spawned=response.spawned,
        )

    def replace(self, **changes) -> "Backend":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _duration(value: Union[float, timedelta, None]) -> Optional[duration_pb2.Duration]:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def key_proto(key: KeyLike) -> Optional[backend_pb2.BackendKey]:
    if key is None:
        return None
    return (BackendKey.parse(key) if isinstance(key, str) else key).to_proto()


def connect_request(
    key: KeyLike,
    image: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    *,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    port: int = 0,
    pull_policy: str = "",
    cpu_millis: int = 0,
    memory_bytes: int = 0,
    cluster: str = "",
    pool: str = "",
    labels: Optional[Mapping[str, str]] = None,
    lifetime_limit: Union[float, timedelta, None] = None,
    max_idle: Union[float, timedelta, None] = None,
    static_token: str = "",
    user: str = "",
    auth: Optional[Mapping[str, str]] = None,
) -> backend_pb2.ConnectRequest:
    """The ConnectRequest of :meth:`Client.connect`: a spawn config only when ``image`` is given
    (without it only a live backend is returned)."""
    spawn = None
    if image is not None:
        pull: Any = backend_pb2.PullPolicy.Value("PULL_POLICY_" + pull_policy.upper()) if pull_policy else 0
        spawn = backend_pb2.SpawnConfig(
            executable=backend_pb2.Executable(
                image=image, command=list(command), args=list(args), env=dict(env or {}), pull_policy=pull,
                container_port=port,
                resources=backend_pb2.ResourceLimits(cpu_millis=cpu_millis, memory_bytes=memory_bytes),
            ),
            cluster=cluster, pool=pool, labels=dict(labels or {}), lifetime_limit=_duration(lifetime_limit),
            max_idle=_duration(max_idle), static_token=static_token,
        )
    elif env or command or args:
        raise ValueError("env, command and args describe what to start; give image too")
    return backend_pb2.ConnectRequest(key=key_proto(key), spawn_config=spawn, user=user, auth=dict(auth or {}))
