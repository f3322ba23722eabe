"""The watch's bookkeeping without a server, the cases a live controller rarely produces on
demand: repeats after a resume are dropped, protocol violations end the watch instead of being
guessed at, and a cache never shows a half-received snapshot (as client/src/watch.rs and
client/src/node_store.rs test the Rust SDK)."""

from __future__ import annotations

import grpc
import pytest

from hangar_sdk import HangarError, NodeStore, NodeWatchEvent, NodeWatchEventType, RetryPolicy, node_pb2
from hangar_sdk.watch import InvalidResponse, NodeWatchCursor

T = NodeWatchEventType


def message(kind: int, revision: int, node_id: str = "") -> node_pb2.WatchNodesResponse:
    node = node_pb2.Node(id=node_id, name=node_id, revision=revision) if node_id else None
    return node_pb2.WatchNodesResponse(event=node_pb2.NodeEvent(type=kind, node=node, revision=revision))


def test_a_snapshot_then_live_changes_move_the_resume_position():
    cursor = NodeWatchCursor(node_pb2.NodeFilter())
    request = cursor.request()
    assert (request.send_initial, request.start_revision) == (True, 0)
    events = [e for m in (message(node_pb2.NODE_EVENT_TYPE_ADDED, 3, "a"),
                          message(node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END, 5),
                          message(node_pb2.NODE_EVENT_TYPE_MODIFIED, 6, "a")) for e in cursor.decode(m)]
    assert [e.type for e in events] == [T.INIT, T.INIT_APPLY, T.INIT_DONE, T.MODIFIED]
    request = cursor.request()
    assert (request.send_initial, request.start_revision) == (False, 6)


def test_a_repeated_revision_is_dropped_and_a_bookmark_moves_the_position():
    cursor = NodeWatchCursor(node_pb2.NodeFilter(), start_revision=10)
    cursor.request()
    assert cursor.decode(message(node_pb2.NODE_EVENT_TYPE_MODIFIED, 10, "a")) == []
    assert cursor.decode(message(node_pb2.NODE_EVENT_TYPE_BOOKMARK, 14)) == [NodeWatchEvent(T.BOOKMARK, revision=14)]
    assert cursor.position == 14


def test_protocol_violations_are_errors_not_guesses():
    cursor = NodeWatchCursor(node_pb2.NodeFilter())
    cursor.request()
    with pytest.raises(InvalidResponse, match="before the end of the snapshot"):
        cursor.decode(message(node_pb2.NODE_EVENT_TYPE_MODIFIED, 3, "a"))
    live = NodeWatchCursor(node_pb2.NodeFilter(), start_revision=3)
    live.request()
    with pytest.raises(InvalidResponse, match="without a node"):
        live.decode(message(node_pb2.NODE_EVENT_TYPE_ADDED, 4))
    with pytest.raises(InvalidResponse):
        live.decode(message(node_pb2.NODE_EVENT_TYPE_UNSPECIFIED, 4))
    with pytest.raises(InvalidResponse, match="without an event"):
        live.decode(node_pb2.WatchNodesResponse())


def test_what_a_stream_end_leads_to():
    cursor = NodeWatchCursor(node_pb2.NodeFilter(), start_revision=7, retry=RetryPolicy(initial_backoff=0.01))
    cursor.request()
    away = cursor.ended(HangarError(grpc.StatusCode.UNAVAILABLE, "gone"))
    assert (away.type, away.resume_from) == (T.RECONNECTING, 7)
    slow = cursor.ended(HangarError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", "RATE_LIMITED", retry_after=0.5))
    assert slow.resume_from == 7 and slow.delay >= 0.5, "the controller's named wait is honoured"
    compacted = cursor.ended(HangarError(grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED"))
    assert compacted.resume_from is None and cursor.request().send_initial
    with pytest.raises(HangarError):
        cursor.ended(HangarError(grpc.StatusCode.INVALID_ARGUMENT, "bad filter"))


def test_an_empty_store_at_revision_zero_lists_again_instead_of_resuming_from_now():
    cursor = NodeWatchCursor(node_pb2.NodeFilter())
    cursor.request()
    cursor.decode(message(node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END, 0))
    assert cursor.request().send_initial


def test_retries_give_up_after_max_attempts_without_progress():
    cursor = NodeWatchCursor(node_pb2.NodeFilter(), retry=RetryPolicy(initial_backoff=0.01, max_attempts=2))
    cursor.request()
    cursor.ended(HangarError(grpc.StatusCode.UNAVAILABLE, "gone"))
    cursor.request()
    with pytest.raises(HangarError):
        cursor.ended(HangarError(grpc.StatusCode.UNAVAILABLE, "still gone"))


def test_store_swaps_in_a_new_snapshot_only_when_it_is_complete():
    cache = NodeStore()

    def node(node_id: str, revision: int) -> node_pb2.Node:
        return node_pb2.Node(id=node_id, revision=revision)

    for event in [NodeWatchEvent(T.INIT), NodeWatchEvent(T.INIT_APPLY, node("a", 1)),
                  NodeWatchEvent(T.INIT_APPLY, node("b", 2)), NodeWatchEvent(T.INIT_DONE, revision=5),
                  NodeWatchEvent(T.MODIFIED, node("a", 6), 6), NodeWatchEvent(T.REMOVED, node("b", 2), 7),
                  NodeWatchEvent(T.ADDED, node("c", 8), 8)]:
        cache.apply(event)
    assert sorted(cache.snapshot()) == ["a", "c"] and cache.revision == 8
    # A re-list: the old state stays visible until the new snapshot is complete.
    cache.apply(NodeWatchEvent(T.INIT))
    cache.apply(NodeWatchEvent(T.INIT_APPLY, node("d", 20)))
    assert sorted(cache.snapshot()) == ["a", "c"]
    cache.apply(NodeWatchEvent(T.INIT_DONE, revision=30))
    assert sorted(cache.snapshot()) == ["d"] and (cache.revision, cache.relists) == (30, 2)
