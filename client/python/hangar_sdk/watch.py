"""``watch_nodes`` and ``watch_backends``: WatchNodes and WatchBackends as one endless stream
with resume and re-list built in, the same design as the Rust SDK's ``watch_nodes`` and
``watch_backends`` (client/src/watch.rs, after kube-rs's ``watcher``). Both watches follow one
contract (docs/design/nodes-and-watch.md), so one :class:`WatchCursor` serves both; a
:class:`WatchKind` names what differs.

The first stream asks for the initial state (``send_initial``), so listing and watching are one
round trip with no race between them. The watch then tracks the last revision it has seen; when
a stream ends (controller restarting, connection lost, cut off as too slow) it waits a jittered
backoff and resumes from that revision: nothing is lost or repeated. When that revision has been
compacted away (OUT_OF_RANGE) it starts over with a fresh snapshot, announced by a new ``INIT``
event, so a consumer never misses a change silently. Errors a retry cannot fix are raised.

This module holds the part both clients share (what the next request is, what a message means,
what to do when a stream ends); :mod:`hangar_sdk.client` and :mod:`hangar_sdk.aio` only loop.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

import grpc
from google.protobuf import duration_pb2

from hangar.v1 import backend_pb2, node_pb2

from .errors import HangarError
from .names import enum_prefix
from .types import Backend


class WatchEventType(str, enum.Enum):
    """What a watch event says, for nodes and backends alike. A snapshot is ``INIT``, one
    ``INIT_APPLY`` per node (backend), then ``INIT_DONE``; whatever a consumer knew before
    ``INIT`` is to be forgotten at ``INIT_DONE`` (a re-list sends the sequence again)."""

    INIT = "INIT"
    INIT_APPLY = "INIT_APPLY"
    INIT_DONE = "INIT_DONE"
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    REMOVED = "REMOVED"
    BOOKMARK = "BOOKMARK"
    #: The stream ended; the watch continues after ``delay`` seconds. Informational.
    RECONNECTING = "RECONNECTING"

    def __str__(self) -> str:
        return self.value


#: The names the node watch was first published with.
NodeWatchEventType = WatchEventType
BackendWatchEventType = WatchEventType


@dataclass(frozen=True)
class NodeWatchEvent:
    """One item of ``Client.watch_nodes``."""

    type: WatchEventType
    #: The node (INIT_APPLY, ADDED, MODIFIED; REMOVED: the node as it was last); else ``None``.
    node: Optional[node_pb2.Node] = None
    #: The revision the watch reached with this event (``None`` for INIT, INIT_APPLY, RECONNECTING).
    revision: Optional[int] = None
    #: RECONNECTING: the revision the next stream resumes after, or ``None`` for a re-list.
    resume_from: Optional[int] = None
    #: RECONNECTING: seconds until the next stream.
    delay: float = 0.0
    #: RECONNECTING: what ended the previous stream.
    cause: str = ""
    #: RECONNECTING: the controller (``host:port``) the next stream goes to; a stream that went
    #: away with its controller resumes on the client's next one.
    controller: str = ""


@dataclass(frozen=True)
class BackendWatchEvent:
    """One item of ``Client.watch_backends``: the same sequence as :class:`NodeWatchEvent`, with
    a typed :class:`~hangar_sdk.Backend`."""

    type: WatchEventType
    #: The backend (INIT_APPLY, ADDED, MODIFIED; REMOVED: the backend as it is now, i.e. in the
    #: state that took it out of the filter); else ``None``.
    backend: Optional[Backend] = None
    #: The revision the watch reached with this event (``None`` for INIT, INIT_APPLY, RECONNECTING).
    revision: Optional[int] = None
    #: RECONNECTING: the revision the next stream resumes after, or ``None`` for a re-list.
    resume_from: Optional[int] = None
    #: RECONNECTING: seconds until the next stream.
    delay: float = 0.0
    #: RECONNECTING: what ended the previous stream.
    cause: str = ""
    #: RECONNECTING: the controller (``host:port``) the next stream goes to; a stream that went
    #: away with its controller resumes on the client's next one.
    controller: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between streams: doubling from ``initial_backoff`` up to ``max_backoff``, with
    jitter. ``max_attempts`` counts consecutive streams that ended without delivering anything;
    a watch outlives controller restarts, so it never gives up by default."""

    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    max_attempts: Optional[int] = None

    def backoff(self, failures: int) -> float:
        base = min(self.max_backoff, self.initial_backoff * 2 ** max(0, failures - 1))
        return base * random.uniform(0.5, 1.0)


# Codes of a stream that went away rather than one that was refused: a reset HTTP/2 stream, a
# dropped connection or a controller shutting down surfaces as one of these.
_RECONNECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


class InvalidResponse(Exception):
    """The server broke the watch protocol; guessing could hide a gap, so the watch ends."""


@dataclass(frozen=True)
class WatchKind:
    """What differs between WatchNodes and WatchBackends: the messages, the event enum (the two
    enums number their values alike, but each is read through its own names), the field the
    item travels in, and the event type this SDK hands out. Everything else is one cursor."""

    name: str
    request: Callable[..., Any]
    event_enum: Any
    #: The field of the wire event that carries the item: ``"node"`` or ``"backend"``.
    field: str
    #: The item as this SDK hands it out (the message itself, or a typed view of it).
    convert: Callable[[Any], Any]
    #: ``NodeWatchEvent`` or ``BackendWatchEvent``; both take (type, item, revision) in order.
    event: Callable[..., Any]

    def wire(self, name: str) -> int:
        return self.event_enum.Value(f"{enum_prefix(self.event_enum)}{name}")


NODES = WatchKind("WatchNodes", node_pb2.WatchNodesRequest, node_pb2.NodeEventType, "node", lambda node: node,
                  NodeWatchEvent)
BACKENDS = WatchKind("WatchBackends", backend_pb2.WatchBackendsRequest, backend_pb2.BackendEventType, "backend",
                     Backend.from_proto, BackendWatchEvent)


class WatchCursor:
    """Where a watch is: what to ask for next, and the events each message means. One class for
    every kind (:data:`NODES`, :data:`BACKENDS`), as the Rust SDK has one loop for both."""

    def __init__(self, kind: WatchKind, filter: Any, start_revision: Optional[int] = None,
                 bookmark_interval: Optional[float] = None, retry: RetryPolicy = RetryPolicy()):
        self.kind = kind
        self._filter = filter
        self._bookmark = None
        if bookmark_interval is not None:
            self._bookmark = duration_pb2.Duration()
            self._bookmark.FromNanoseconds(int(bookmark_interval * 1e9))
        # None: the next stream asks for a snapshot. Start revision 0 means "now" on the wire, so
        # a watch that has only seen revision 0 lists again rather than resuming from it.
        self.position: Optional[int] = start_revision or None
        self.retry = retry
        self._initial = False
        self._started = False
        self._delivered = False
        self._failures = 0
        self._added, self._end, self._bookmark_type = kind.wire("ADDED"), kind.wire("SNAPSHOT_END"), kind.wire("BOOKMARK")
        self._live = {kind.wire(name): WatchEventType[name] for name in ("ADDED", "MODIFIED", "REMOVED")}

    def request(self):
        """The next stream's request; call once per stream."""
        self._initial = self.position is None
        self._started = False
        self._delivered = False
        return self.kind.request(filter=self._filter, start_revision=self.position or 0,
                                 send_initial=self._initial, bookmark_interval=self._bookmark)

    def decode(self, message) -> list:
        """The events of one message, moving the position on."""
        kind = self.kind
        if not message.HasField("event"):
            raise InvalidResponse(f"a {kind.name} response without an event")
        event = message.event
        type_, revision = event.type, event.revision
        name = kind.event_enum.Name(type_) if type_ in kind.event_enum.values() else str(type_)
        has_item = event.HasField(kind.field)

        def item():
            if not has_item:
                raise InvalidResponse(f"a {name} event without a {kind.field}")
            return kind.convert(getattr(event, kind.field))

        events: list = []
        if self._initial:
            if not self._started:
                self._started = True
                events.append(kind.event(WatchEventType.INIT))
            if type_ == self._added:
                events.append(kind.event(WatchEventType.INIT_APPLY, item()))
            elif type_ == self._end:
                self._initial = False
                self.position = revision or None
                events.append(kind.event(WatchEventType.INIT_DONE, revision=revision))
            else:
                raise InvalidResponse(f"{name} before the end of the snapshot")
            self._delivered = True
            return events
        # Revisions only grow on a stream and a resumed stream replays strictly after its start,
        # so an older revision is a repeat: dropping it keeps a cache consistent.
        if self.position is not None and revision <= self.position and type_ != self._bookmark_type:
            return events
        if type_ in self._live:
            out = kind.event(self._live[type_], item(), revision)
        elif type_ == self._bookmark_type:
            out = kind.event(WatchEventType.BOOKMARK, revision=revision)
        else:
            raise InvalidResponse(f"a {name} event on a live stream")
        if self.position is None or revision > self.position:
            self.position = revision or None
        self._delivered = True
        return [out]

    def ended(self, error: HangarError):
        """What to do after a stream ended with ``error``: a RECONNECTING event to yield before
        sleeping its ``delay``; raises ``error`` when retrying cannot help."""
        if self._delivered:
            self._failures = 0
        self._failures += 1
        if error.code == grpc.StatusCode.OUT_OF_RANGE:
            self.position = None
        elif error.code not in _RECONNECT:
            raise error
        if self.retry.max_attempts is not None and self._failures >= self.retry.max_attempts:
            raise error
        delay = self.retry.backoff(self._failures)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return self.kind.event(WatchEventType.RECONNECTING, resume_from=self.position, delay=delay,
                               cause=str(error))


class NodeWatchCursor(WatchCursor):
    """The cursor of a node watch."""

    def __init__(self, filter: node_pb2.NodeFilter, start_revision: Optional[int] = None,
                 bookmark_interval: Optional[float] = None, retry: RetryPolicy = RetryPolicy()):
        super().__init__(NODES, filter, start_revision, bookmark_interval, retry)


class BackendWatchCursor(WatchCursor):
    """The cursor of a backend watch."""

    def __init__(self, filter: backend_pb2.BackendFilter, start_revision: Optional[int] = None,
                 bookmark_interval: Optional[float] = None, retry: RetryPolicy = RetryPolicy()):
        super().__init__(BACKENDS, filter, start_revision, bookmark_interval, retry)


def stream_ended() -> HangarError:
    """A stream the server closed without a status: the controller went away mid-watch."""
    return HangarError(grpc.StatusCode.UNAVAILABLE, "the watch stream ended")
