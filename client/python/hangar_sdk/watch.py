"""``watch_nodes``: WatchNodes as one endless stream with resume and re-list built in, the same
design as the Rust SDK's ``watch_nodes`` (client/src/watch.rs, after kube-rs's ``watcher``).

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
from typing import Optional

import grpc
from google.protobuf import duration_pb2

from hangar.v1 import node_pb2

from .errors import HangarError


class NodeWatchEventType(str, enum.Enum):
    """What a :class:`NodeWatchEvent` says. A snapshot is ``INIT``, one ``INIT_APPLY`` per node,
    then ``INIT_DONE``; whatever a consumer knew before ``INIT`` is to be forgotten at
    ``INIT_DONE`` (a re-list sends the sequence again)."""

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


@dataclass(frozen=True)
class NodeWatchEvent:
    """One item of ``Client.watch_nodes``."""

    type: NodeWatchEventType
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


class NodeWatchCursor:
    """Where a watch is: what to ask for next, and the events each message means."""

    def __init__(self, filter: node_pb2.NodeFilter, start_revision: Optional[int] = None,
                 bookmark_interval: Optional[float] = None, retry: RetryPolicy = RetryPolicy()):
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

    def request(self) -> node_pb2.WatchNodesRequest:
        """The next stream's request; call once per stream."""
        self._initial = self.position is None
        self._started = False
        self._delivered = False
        return node_pb2.WatchNodesRequest(filter=self._filter, start_revision=self.position or 0,
                                          send_initial=self._initial, bookmark_interval=self._bookmark)

    def decode(self, message: node_pb2.WatchNodesResponse) -> list[NodeWatchEvent]:
        """The events of one message, moving the position on."""
        if not message.HasField("event"):
            raise InvalidResponse("a WatchNodesResponse without an event")
        event = message.event
        kind, revision = event.type, event.revision
        name = node_pb2.NodeEventType.Name(kind) if kind in node_pb2.NodeEventType.values() else str(kind)
        has_node = event.HasField("node")

        def node() -> node_pb2.Node:
            if not has_node:
                raise InvalidResponse(f"a {name} event without a node")
            return event.node

        events: list[NodeWatchEvent] = []
        if self._initial:
            if not self._started:
                self._started = True
                events.append(NodeWatchEvent(NodeWatchEventType.INIT))
            if kind == node_pb2.NODE_EVENT_TYPE_ADDED:
                events.append(NodeWatchEvent(NodeWatchEventType.INIT_APPLY, node()))
            elif kind == node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END:
                self._initial = False
                self.position = revision or None
                events.append(NodeWatchEvent(NodeWatchEventType.INIT_DONE, revision=revision))
            else:
                raise InvalidResponse(f"{name} before the end of the snapshot")
            self._delivered = True
            return events
        # Revisions only grow on a stream and a resumed stream replays strictly after its start,
        # so an older revision is a repeat: dropping it keeps a cache consistent.
        if self.position is not None and revision <= self.position and kind != node_pb2.NODE_EVENT_TYPE_BOOKMARK:
            return events
        types = {
            node_pb2.NODE_EVENT_TYPE_ADDED: NodeWatchEventType.ADDED,
            node_pb2.NODE_EVENT_TYPE_MODIFIED: NodeWatchEventType.MODIFIED,
            node_pb2.NODE_EVENT_TYPE_REMOVED: NodeWatchEventType.REMOVED,
        }
        if kind in types:
            out = NodeWatchEvent(types[kind], node(), revision)
        elif kind == node_pb2.NODE_EVENT_TYPE_BOOKMARK:
            out = NodeWatchEvent(NodeWatchEventType.BOOKMARK, revision=revision)
        else:
            raise InvalidResponse(f"a {name} event on a live stream")
        if self.position is None or revision > self.position:
            self.position = revision or None
        self._delivered = True
        return [out]

    def ended(self, error: HangarError) -> NodeWatchEvent:
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
        return NodeWatchEvent(NodeWatchEventType.RECONNECTING, resume_from=self.position, delay=delay,
                              cause=str(error))


def stream_ended() -> HangarError:
    """A stream the server closed without a status: the controller went away mid-watch."""
    return HangarError(grpc.StatusCode.UNAVAILABLE, "the watch stream ended")
