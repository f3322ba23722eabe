"""The asyncio client: :class:`hangar_sdk.aio.Client`, the same methods as the blocking
:class:`hangar_sdk.Client` as coroutines, and the watches as async iterators.

    from hangar_sdk import aio

    async with aio.Client("http://127.0.0.1:7070") as client:
        backend = await client.connect("docs/doc-1", image="hangar-demo")
        async for status in client.watch_backend(backend.id):
            print(status.state)
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import AsyncGenerator, Callable, Mapping, Optional, Sequence, TypeVar, Union

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from hangar.v1 import backend_pb2, backend_pb2_grpc, node_pb2, node_pb2_grpc

from . import names
from ._failover import Controllers, rotates
from ._follow import BackendFollower
from ._transport import Settings, env_options
from .cache import NodeStore
from .errors import BackendTerminated, HangarError
from .types import Backend, BackendState, BackendStatus, KeyLike, connect_request
from .watch import (BackendWatchCursor, BackendWatchEvent, NodeWatchCursor, NodeWatchEvent, RetryPolicy, WatchCursor,
                    stream_ended)

__all__ = ["Client", "NodeCache"]

T = TypeVar("T")


@dataclass
class _Controller:
    """One controller of a client: its channel and the stubs on it."""

    channel: grpc.aio.Channel
    nodes: node_pb2_grpc.NodeServiceStub
    backends: backend_pb2_grpc.BackendServiceStub


class Client:
    """A ``grpc.aio`` connection to a controller, or to several controllers of one cluster that
    it fails over between exactly as :class:`hangar_sdk.Client` does; see it for the arguments
    and what each method does. Make it inside a running event loop."""

    def __init__(self, url: Union[str, Sequence[str]], timeout: float = 10.0, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None):
        all_settings = Settings.parse_all(url, token=token, token_file=token_file, tls_ca=tls_ca,
                                          tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name)
        controllers = []
        for settings in all_settings:
            channel = settings.aio_channel()
            controllers.append(_Controller(channel, node_pb2_grpc.NodeServiceStub(channel),
                                           backend_pb2_grpc.BackendServiceStub(channel)))
        self._controllers: Controllers[_Controller] = Controllers([s.target for s in all_settings], controllers)
        # grpc.aio interceptors cannot add metadata to streams portably across grpcio versions,
        # so each call carries the token explicitly.
        self._metadata = all_settings[0].metadata()
        self._timeout = timeout

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the controller the next call goes to first, for calls this class does
        not wrap (pass ``metadata`` for the token yourself there); those do not fail over."""
        return self._preferred().channel

    @property
    def address(self) -> str:
        """As :attr:`hangar_sdk.Client.address`."""
        return self._controllers.urls[self._controllers.preferred()]

    @property
    def addresses(self) -> tuple[str, ...]:
        """As :attr:`hangar_sdk.Client.addresses`."""
        return self._controllers.urls

    def _preferred(self) -> _Controller:
        return self._controllers.items[self._controllers.preferred()]

    @classmethod
    def from_env(cls, url: Optional[str] = None, timeout: float = 10.0) -> "Client":
        """As :meth:`hangar_sdk.Client.from_env`."""
        options = env_options(url)
        return cls(options.pop("url"), timeout, **options)

    async def close(self) -> None:
        for controller in self._controllers.items:
            await controller.channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method: Callable[[_Controller], Callable], request, idempotent: bool = True):
        """As :meth:`hangar_sdk.Client._call`: with failover when ``idempotent``."""
        order = self._controllers.order()
        for tried, index in enumerate(order):
            try:
                response = await method(self._controllers.items[index])(request, timeout=self._timeout,
                                                                        metadata=self._metadata)
            except grpc.aio.AioRpcError as rpc_error:
                error = HangarError.from_aio_error(rpc_error)
                if self._controllers.failed(index, error) and idempotent and tried < len(order) - 1:
                    continue
                raise error from None
            self._controllers.answered(index)
            return response
        raise AssertionError("the last controller's failure is raised")

    # Nodes.

    node_filter = staticmethod(names.node_filter)

    async def list_nodes_page(self, filter: Optional[node_pb2.NodeFilter] = None, page_size: int = 0,
                              page_token: str = "") -> node_pb2.ListNodesResponse:
        return await self._call(lambda c: c.nodes.ListNodes,
                                node_pb2.ListNodesRequest(filter=filter, page_size=page_size, page_token=page_token))

    async def list_nodes_at(self, page_size: int = 500, **filter_args) -> tuple[list[node_pb2.Node], int]:
        filter = names.node_filter(**filter_args)
        nodes: list[node_pb2.Node] = []
        token, revision = "", None
        while True:
            page = await self.list_nodes_page(filter, page_size, token)
            if revision is not None and page.revision != revision:
                raise RuntimeError(f"pages from two snapshots ({revision} and {page.revision})")
            revision = page.revision
            nodes.extend(page.nodes)
            token = page.next_page_token
            if not token:
                return nodes, revision

    async def list_nodes(self, page_size: int = 500, **filter_args) -> list[node_pb2.Node]:
        return (await self.list_nodes_at(page_size, **filter_args))[0]

    async def get_node(self, node_id: str) -> node_pb2.Node:
        return (await self._call(lambda c: c.nodes.GetNode, node_pb2.GetNodeRequest(id=node_id))).node

    async def drain_node(self, node_id: str, deadline_seconds: Optional[float] = None) -> node_pb2.Node:
        deadline = None
        if deadline_seconds is not None:
            deadline = duration_pb2.Duration()
            deadline.FromNanoseconds(int(deadline_seconds * 1e9))
        request = node_pb2.DrainNodeRequest(id=node_id, deadline=deadline)
        return (await self._call(lambda c: c.nodes.DrainNode, request, idempotent=False)).node

    async def undrain_node(self, node_id: str) -> node_pb2.Node:
        return (await self._call(lambda c: c.nodes.UndrainNode, node_pb2.UndrainNodeRequest(id=node_id))).node

    def watch_nodes(self, *, start_revision: Optional[int] = None, bookmark_interval: Optional[float] = None,
                    retry: RetryPolicy = RetryPolicy(), **filter_args) -> AsyncGenerator[NodeWatchEvent, None]:
        """As :meth:`hangar_sdk.Client.watch_nodes`, an async iterator."""
        return self._watch(NodeWatchCursor(names.node_filter(**filter_args), start_revision, bookmark_interval, retry),
                           lambda c: c.nodes.WatchNodes)

    async def _watch(self, cursor: WatchCursor, open_stream: Callable[[_Controller], Callable]) -> AsyncGenerator:
        """As :meth:`hangar_sdk.Client._watch`: the one loop of both watch kinds."""
        current = self._controllers.preferred()
        while True:
            call = open_stream(self._controllers.items[current])(cursor.request(), metadata=self._metadata)
            try:
                async for message in call:
                    for event in cursor.decode(message):
                        yield event
                ended = stream_ended()
            except grpc.aio.AioRpcError as error:
                ended = HangarError.from_aio_error(error)
            finally:
                call.cancel()
            reconnect = cursor.ended(ended)
            if rotates(ended):
                current = self._controllers.next(current)
            yield dataclasses.replace(reconnect, controller=self._controllers.urls[current])
            await asyncio.sleep(reconnect.delay)

    def watch_nodes_stream(self, send_initial: bool = True, start_revision: int = 0,
                           **filter_args) -> AsyncGenerator[node_pb2.NodeEvent, None]:
        """As :meth:`hangar_sdk.Client.watch_nodes_stream`: one stream, no resume."""
        request = node_pb2.WatchNodesRequest(filter=names.node_filter(**filter_args),
                                             start_revision=start_revision, send_initial=send_initial)
        return self._one_stream(self._preferred().nodes.WatchNodes, request)

    async def _one_stream(self, open_stream: Callable, request) -> AsyncGenerator:
        call = open_stream(request, metadata=self._metadata)
        try:
            async for response in call:
                yield response.event
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise HangarError.from_aio_error(error) from None
        finally:
            call.cancel()

    # Backends.

    async def connect(self, key: KeyLike, image: Optional[str] = None, env: Optional[Mapping[str, str]] = None, *,
                      wait: bool = True, wait_timeout: Optional[float] = 120.0, command: Sequence[str] = (),
                      args: Sequence[str] = (), port: int = 0, **spawn) -> Backend:
        """As :meth:`hangar_sdk.Client.connect`."""
        request = connect_request(key, image, env, command=command, args=args, port=port, **spawn)
        backend = Backend.from_connect(await self._call(lambda c: c.backends.Connect, request,
                                                        idempotent=request.HasField("key")))
        if not wait or backend.state is BackendState.READY:
            return backend
        async for status in self.watch_backend(backend.id, timeout=wait_timeout):
            if status.state is BackendState.READY:
                return backend.replace(status=status)
            if status.state.is_terminal:
                raise BackendTerminated(backend.replace(status=status))
        raise BackendTerminated(backend)

    async def get_backend(self, backend_id: str) -> Backend:
        response = await self._call(lambda c: c.backends.GetBackend, backend_pb2.GetBackendRequest(id=backend_id))
        return Backend.from_proto(response.backend)

    async def list_backends_page(self, filter: Optional[backend_pb2.BackendFilter] = None, page_size: int = 0,
                                 page_token: str = "") -> backend_pb2.ListBackendsResponse:
        return await self._call(lambda c: c.backends.ListBackends, backend_pb2.ListBackendsRequest(
            filter=filter, page_size=page_size, page_token=page_token))

    async def list_backends_at(self, page_size: int = 500, **filter_args) -> tuple[list[Backend], int]:
        """As :meth:`hangar_sdk.Client.list_backends_at`."""
        filter = names.backend_filter(**filter_args)
        backends: list[Backend] = []
        token, revision = "", None
        while True:
            page = await self.list_backends_page(filter, page_size, token)
            if revision is not None and page.revision != revision:
                raise RuntimeError(f"pages of two listings ({revision} and {page.revision})")
            revision = page.revision
            backends.extend(Backend.from_proto(b) for b in page.backends)
            token = page.next_page_token
            if not token:
                return backends, revision

    async def list_backends(self, page_size: int = 500, **filter_args) -> list[Backend]:
        return (await self.list_backends_at(page_size, **filter_args))[0]

    def watch_backends(self, *, start_revision: Optional[int] = None, bookmark_interval: Optional[float] = None,
                       retry: RetryPolicy = RetryPolicy(), **filter_args) -> AsyncGenerator[BackendWatchEvent, None]:
        """As :meth:`hangar_sdk.Client.watch_backends`, an async iterator."""
        return self._watch(BackendWatchCursor(names.backend_filter(**filter_args), start_revision, bookmark_interval,
                                              retry), lambda c: c.backends.WatchBackends)

    def watch_backends_stream(self, send_initial: bool = True, start_revision: int = 0,
                              **filter_args) -> AsyncGenerator[backend_pb2.BackendEvent, None]:
        """As :meth:`hangar_sdk.Client.watch_backends_stream`: one stream, no resume."""
        request = backend_pb2.WatchBackendsRequest(filter=names.backend_filter(**filter_args),
                                                   start_revision=start_revision, send_initial=send_initial)
        return self._one_stream(self._preferred().backends.WatchBackends, request)

    async def watch_backend(self, backend_id: str,
                            timeout: Optional[float] = None) -> AsyncGenerator[BackendStatus, None]:
        """As :meth:`hangar_sdk.Client.watch_backend`, an async iterator."""
        follower = BackendFollower(backend_id, timeout)
        current = self._controllers.preferred()
        while not follower.done:
            call = self._controllers.items[current].backends.WatchBackend(
                follower.request, timeout=follower.remaining(), metadata=self._metadata)
            try:
                async for message in call:
                    status = follower.accept(message)
                    if status is not None:
                        yield status
                        if follower.done:
                            return
                ended = stream_ended()
            except grpc.aio.AioRpcError as error:
                ended = HangarError.from_aio_error(error)
            finally:
                call.cancel()
            delay = follower.ended(ended)
            if rotates(ended):
                current = self._controllers.next(current)
            await asyncio.sleep(delay)

    async def terminate(self, backend_id: str, hard: bool = False, *, wait: bool = False,
                        wait_timeout: Optional[float] = 60.0) -> Backend:
        """As :meth:`hangar_sdk.Client.terminate`."""
        response = await self._call(lambda c: c.backends.TerminateBackend,
                                    backend_pb2.TerminateBackendRequest(id=backend_id, hard=hard))
        backend = Backend.from_proto(response.backend)
        if wait and not backend.state.is_terminal:
            async for status in self.watch_backend(backend_id, timeout=wait_timeout):
                backend = backend.replace(status=status)
        return backend


class NodeCache(NodeStore):
    """:class:`hangar_sdk.NodeCache` for asyncio: a :class:`~hangar_sdk.NodeStore` fed by an
    asyncio task that runs ``client.watch_nodes`` (resume, re-list and all). Reading it
    (``snapshot()``, ``get``, ``revision``) never blocks; ``wait_for`` is a coroutine.

        async with aio.NodeCache(client, kinds=["drone"]) as cache:
            ready = await cache.wait_for(lambda nodes: len(nodes) > 0, timeout=30)
    """

    def __init__(self, client: Client, *, bookmark_interval: Optional[float] = None,
                 retry: RetryPolicy = RetryPolicy(), **filter_args):
        super().__init__()
        self._events = client.watch_nodes(bookmark_interval=bookmark_interval, retry=retry, **filter_args)
        self._task: Optional[asyncio.Task] = None
        self._updated = asyncio.Event()
        #: What stopped the watch for good, if anything did.
        self.error: Optional[BaseException] = None

    def start(self) -> "NodeCache":
        """Starts the watch task (inside a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stops the watch; the cache keeps what it has."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._events.aclose()

    async def __aenter__(self) -> "NodeCache":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _run(self) -> None:
        try:
            async for event in self._events:
                self.apply(event)
                self._updated.set()
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - handed to every waiter, not lost
            self.error = error
            self._updated.set()

    async def wait_for(self, predicate: Callable[[Mapping[str, node_pb2.Node]], T],
                       timeout: Optional[float] = None) -> T:
        """Waits until ``predicate(nodes)`` returns something truthy, and returns it; as
        :meth:`hangar_sdk.NodeCache.wait_for` (``TimeoutError`` after ``timeout`` seconds)."""
        async def satisfied() -> T:
            while True:
                self._updated.clear()
                result = self.check(predicate)
                if result:
                    return result
                if self.error is not None:
                    raise self.error
                await self._updated.wait()

        try:
            return await asyncio.wait_for(satisfied(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the node cache did not satisfy the condition within {timeout} s "
                               f"(at revision {self.revision}, {len(self)} nodes)") from None

    async def wait_ready(self, timeout: Optional[float] = None) -> "NodeCache":
        await self.wait_for(lambda _nodes: True, timeout)
        return self
