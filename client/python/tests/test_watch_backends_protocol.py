"""The backend watch's bookkeeping without a server: the one cursor of both watch kinds, read
through WatchBackends' own messages, hands out typed backends, drops a repeat after a resume,
and names a protocol violation after the backend (as test_watch_protocol.py does for nodes)."""

from __future__ import annotations

import grpc
import pytest

from hangar_sdk import Backend, BackendState, BackendWatchEvent, HangarError, backend_pb2
from hangar_sdk.watch import BackendWatchCursor, InvalidResponse, WatchEventType

T = WatchEventType
READY, TERMINATING = backend_pb2.BACKEND_STATE_READY, backend_pb2.BACKEND_STATE_TERMINATING


def message(kind: int, revision: int, backend_id: str = "", state: int = READY) -> backend_pb2.WatchBackendsResponse:
    backend = None
    if backend_id:
        backend = backend_pb2.Backend(id=backend_id, status=backend_pb2.BackendStatus(state=state),
                                      key=backend_pb2.BackendKey(namespace="shop", name=backend_id))
    return backend_pb2.WatchBackendsResponse(event=backend_pb2.BackendEvent(type=kind, backend=backend,
                                                                            revision=revision))


def test_a_backend_snapshot_then_a_filter_exit_as_typed_events():
    cursor = BackendWatchCursor(backend_pb2.BackendFilter(key_namespace="shop"))
    request = cursor.request()
    assert isinstance(request, backend_pb2.WatchBackendsRequest)
    assert (request.send_initial, request.start_revision, request.filter.key_namespace) == (True, 0, "shop")
    events = [e for m in (message(backend_pb2.BACKEND_EVENT_TYPE_ADDED, 3, "a"),
                          message(backend_pb2.BACKEND_EVENT_TYPE_SNAPSHOT_END, 5),
                          message(backend_pb2.BACKEND_EVENT_TYPE_REMOVED, 6, "a", TERMINATING))
              for e in cursor.decode(m)]
    assert all(isinstance(e, BackendWatchEvent) for e in events)
    assert [e.type for e in events] == [T.INIT, T.INIT_APPLY, T.INIT_DONE, T.REMOVED]
    applied, removed = events[1].backend, events[3].backend
    assert isinstance(applied, Backend) and applied.state is BackendState.READY and str(applied.key) == "shop/a"
    assert (removed.state, events[3].revision) == (BackendState.TERMINATING, 6)
    assert (cursor.request().send_initial, cursor.request().start_revision) == (False, 6)


def test_a_resumed_backend_stream_drops_repeats_and_relists_after_out_of_range():
    cursor = BackendWatchCursor(backend_pb2.BackendFilter(), start_revision=10)
    cursor.request()
    assert cursor.decode(message(backend_pb2.BACKEND_EVENT_TYPE_MODIFIED, 10, "a")) == []
    [modified] = cursor.decode(message(backend_pb2.BACKEND_EVENT_TYPE_MODIFIED, 11, "a"))
    assert (modified.type, modified.backend.id, cursor.position) == (T.MODIFIED, "a", 11)
    away = cursor.ended(HangarError(grpc.StatusCode.UNAVAILABLE, "gone"))
    assert isinstance(away, BackendWatchEvent) and (away.type, away.resume_from) == (T.RECONNECTING, 11)
    compacted = cursor.ended(HangarError(grpc.StatusCode.OUT_OF_RANGE, "compacted", "REVISION_COMPACTED"))
    assert compacted.resume_from is None and cursor.request().send_initial


def test_backend_protocol_violations_name_the_backend():
    live = BackendWatchCursor(backend_pb2.BackendFilter(), start_revision=3)
    live.request()
    with pytest.raises(InvalidResponse, match="without a backend"):
        live.decode(message(backend_pb2.BACKEND_EVENT_TYPE_ADDED, 4))
    with pytest.raises(InvalidResponse, match="WatchBackends response without an event"):
        live.decode(backend_pb2.WatchBackendsResponse())
    with pytest.raises(InvalidResponse, match="SNAPSHOT_END"):
        live.decode(message(backend_pb2.BACKEND_EVENT_TYPE_SNAPSHOT_END, 4))
