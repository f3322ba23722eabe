""":class:`NodeCache`: the nodes of a watch, kept current in the background (kube-rs's reflector
store, client-go's informer). The Python twin of the Rust SDK's ``NodeStore`` fed by its
``watch_nodes`` (client/src/node_store.rs, client/src/watch.rs): list + watch in one call,
resume from the last revision after a disconnect or a controller restart, a fresh list after
OUT_OF_RANGE, and readers that never see a half-applied snapshot.

:class:`NodeStore` only applies events; :class:`NodeCache` feeds one from a watch in a thread,
``hangar_sdk.aio.NodeCache`` from an asyncio task."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import MappingProxyType
from typing import Callable, Mapping, Optional, TypeVar

import grpc

from hangar.v1 import node_pb2

from . import names
from ._failover import rotates
from .errors import HangarError
from .watch import NodeWatchCursor, NodeWatchEvent, NodeWatchEventType, RetryPolicy, stream_ended

T = TypeVar("T")


class NodeStore:
    """The nodes of a watch, kept up to date by feeding it every :class:`NodeWatchEvent` (from
    ``Client.watch_nodes``). Thread-safe; a snapshot being received (at start and after a
    re-list) is swapped in only when it is complete, so readers never see half of one."""

    def __init__(self) -> None:
        #: Notified after every change; readers that wait hold it.
        self._changed = threading.Condition()
        self._nodes: dict[str, node_pb2.Node] = {}
        self._pending: Optional[dict[str, node_pb2.Node]] = None
        self._revision: Optional[int] = None
        #: Completed snapshots: 1 after the first list, one more per re-list.
        self.relists = 0
        #: Streams that ended and were reopened (RECONNECTING events).
        self.reconnects = 0

    def apply(self, event: NodeWatchEvent) -> None:
        """Applies one watch event."""
        kind, node = event.type, event.node
        with self._changed:
            if kind is NodeWatchEventType.RECONNECTING:
                self.reconnects += 1
                return
            if kind is NodeWatchEventType.INIT:
                self._pending = {}
            elif kind is NodeWatchEventType.INIT_DONE:
                self._nodes = self._pending if self._pending is not None else {}
                self._pending = None
                self._revision = event.revision
                self.relists += 1
            elif kind is NodeWatchEventType.BOOKMARK:
                self._revision = event.revision
            elif node is None:
                raise ValueError(f"a {kind} event without a node")
            elif kind is NodeWatchEventType.INIT_APPLY:
                if self._pending is None:
                    self._pending = {}
                self._pending[node.id] = node
            elif kind is NodeWatchEventType.REMOVED:
                self._nodes.pop(node.id, None)
                self._revision = event.revision
            else:  # ADDED, MODIFIED
                self._nodes[node.id] = node
                self._revision = event.revision
            self._changed.notify_all()

    @property
    def ready(self) -> bool:
        """Whether a snapshot has been completed; before that the store is empty."""
        with self._changed:
            return self._revision is not None

    @property
    def revision(self) -> Optional[int]:
        """The revision the store reflects (``None`` before the first snapshot)."""
        with self._changed:
            return self._revision

    def snapshot(self) -> dict[str, node_pb2.Node]:
        """The nodes by id, as of ``revision``: a copy, consistent, safe to keep (treat the nodes
        themselves as read-only)."""
        with self._changed:
            return dict(self._nodes)

    def get(self, node_id: str) -> Optional[node_pb2.Node]:
        with self._changed:
            return self._nodes.get(node_id)

    def __len__(self) -> int:
        with self._changed:
            return len(self._nodes)

    def check(self, predicate: Callable[[Mapping[str, node_pb2.Node]], T]) -> Optional[T]:
        """``predicate(nodes)`` if a snapshot is in, else ``None``; under the store's lock. The
        mapping is a read-only view of the live store: copy what you keep (``dict(nodes)``)."""
        with self._changed:
            return predicate(MappingProxyType(self._nodes)) if self._revision is not None else None


class NodeCache(NodeStore):
    """A :class:`NodeStore` of the nodes matching a filter, kept up to date by a background
    thread that watches the controller.

        with Client(url) as client, NodeCache(client, kinds=["drone"]) as cache:
            ready = cache.wait_for(lambda nodes: [n for n in nodes.values() if n.state == READY])

    ``snapshot()`` is a consistent copy (a dict from node id to ``node_pb2.Node``) at
    ``revision``. ``wait_for(predicate)`` blocks until the predicate, given the nodes, returns
    something truthy, and returns that.

    The thread never gives up on a controller that is away: it reconnects with backoff (to the
    client's next controller when it has several) and counts ``reconnects``; ``relists`` counts completed snapshots (1 after the first). An error
    a retry cannot fix (INVALID_ARGUMENT, PERMISSION_DENIED, …) stops it and is raised by
    ``wait_for`` and ``wait_ready``; it is also in ``error``. Filters as ``list_nodes`` takes
    them; ``start=False`` leaves starting to ``start()`` or ``with``.
    """

    def __init__(self, client, *, bookmark_interval: Optional[float] = None, retry: RetryPolicy = RetryPolicy(),
                 start: bool = True, **filter_args):
        super().__init__()
        self._controllers = client._controllers
        self._cursor = NodeWatchCursor(names.node_filter(**filter_args), None, bookmark_interval, retry)
        self._stopping = threading.Event()
        self._stream = None
        self._thread: Optional[threading.Thread] = None
        #: What stopped the watch for good, if anything did.
        self.error: Optional[BaseException] = None
        if start:
            self.start()

    def start(self) -> "NodeCache":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hangar-node-cache", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the watch and waits for its thread; the cache keeps what it has."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> "NodeCache":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            controllers = self._controllers
            current = controllers.preferred()
            while not self._stopping.is_set():
                stream = self._stream = controllers.items[current].nodes.WatchNodes(self._cursor.request())
                try:
                    for message in stream:
                        for event in self._cursor.decode(message):
                            self.apply(event)
                    ended = stream_ended()
                except grpc.RpcError as error:
                    ended = HangarError.from_rpc_error(error)
                finally:
                    stream.cancel()
                if self._stopping.is_set():
                    return
                reconnect = self._cursor.ended(ended)
                if rotates(ended):
                    current = controllers.next(current)
                self.apply(dataclasses.replace(reconnect, controller=controllers.urls[current]))
                self._stopping.wait(reconnect.delay)
        except BaseException as error:  # noqa: BLE001 - handed to every waiter, not lost
            with self._changed:
                self.error = error
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Mapping[str, node_pb2.Node]], T], timeout: Optional[float] = None) -> T:
        """Blocks until ``predicate(nodes)`` returns something truthy, and returns it. The
        predicate runs under the cache's lock after the first snapshot and after every change,
        so keep it quick; its argument is a read-only view of the live nodes, so return a copy
        (``dict(nodes)``, a list) rather than the view itself. ``TimeoutError`` after
        ``timeout`` seconds; the watch's error if it stopped for good."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._revision is not None:
                    result = predicate(MappingProxyType(self._nodes))
                    if result:
                        return result
                if self.error is not None:
                    raise self.error
                if self._stopping.is_set():
                    raise RuntimeError("the node cache was stopped")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the node cache did not satisfy the condition within {timeout} s "
                                       f"(at revision {self._revision}, {len(self._nodes)} nodes)")
                self._changed.wait(left)

    def wait_ready(self, timeout: Optional[float] = None) -> "NodeCache":
        """Blocks until the first snapshot is in."""
        self.wait_for(lambda _nodes: True, timeout)
        return self
