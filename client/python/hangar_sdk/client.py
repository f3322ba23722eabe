"""The blocking client: :class:`Client`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Generator, Mapping, Optional, Sequence, TypeVar, Union

import grpc
from google.protobuf import duration_pb2

from hangar.v1 import backend_pb2, backend_pb2_grpc, node_pb2, node_pb2_grpc

from . import names
from ._failover import Controllers, rotates
from ._follow import BackendFollower
from ._transport import BearerToken, Settings, env_options
from .errors import BackendTerminated, HangarError
from .types import Backend, BackendState, BackendStatus, KeyLike, connect_request
from .watch import (BackendWatchCursor, BackendWatchEvent, NodeWatchCursor, NodeWatchEvent, RetryPolicy, WatchCursor,
                    stream_ended)

T = TypeVar("T")


@dataclass
class _Controller:
    """One controller of a client: its channel and the stubs on it."""

    channel: grpc.Channel
    #: ``channel`` with the token interceptor, if any: what the stubs use.
    calls: grpc.Channel
    nodes: node_pb2_grpc.NodeServiceStub
    backends: backend_pb2_grpc.BackendServiceStub


class Client:
    """A connection to a controller, or to several controllers of one cluster that it fails over
    between, over the whole ``hangar.v1`` API: nodes and backends.

    ``url`` is one controller URL, several comma-separated (``"http://a:7070,http://b:7070"``),
    or a list of URLs; each controller gets its own channel, with the same token and TLS
    settings. Each call goes first to the first controller in that order that has not failed
    lately. An idempotent call (list, get, a keyed ``connect``, ``terminate``, ``undrain_node``)
    that a controller does not answer (UNAVAILABLE other than NO_DRONE_AVAILABLE; a broken
    connection or the call's deadline, without an answer from the controller) goes to the next
    one at once, and the one that failed is tried after the others during a cooldown (0.5 s,
    doubling with each failure in a row, up to 15 s; any answer ends it). A call with effects (a
    keyless ``connect``, ``drain_node``) is never repeated: its failure is raised, and the next
    call goes to another controller. ``timeout`` bounds each attempt, so an idempotent call to
    hung controllers may take up to one ``timeout`` per controller. Watches resume on the next
    controller from the last revision they saw.

    ``https://`` URLs use TLS: ``tls_ca`` is the PEM file of the CA that signed the controller's
    certificate (the system's roots without it), ``tls_cert`` and ``tls_key`` a client
    certificate for a controller that requires one (mTLS; both or neither), and
    ``tls_server_name`` the name to expect in the controller's certificate when it is not the
    URL's host. ``token`` (or ``token_file``, read now and stripped) is sent as
    ``authorization: Bearer …`` on every call, over TLS or plain http://. Files that are missing
    or not PEM raise ``ValueError`` naming them. ``timeout`` bounds each unary call, in seconds.

    Every failed call raises :class:`HangarError`. Use it as a context manager, or ``close()``."""

    def __init__(self, url: Union[str, Sequence[str]], timeout: float = 10.0, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None):
        all_settings = Settings.parse_all(url, token=token, token_file=token_file, tls_ca=tls_ca,
                                          tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name)
        controllers = []
        for settings in all_settings:
            channel = settings.blocking_channel()
            calls = channel
            if settings.token is not None:
                calls = grpc.intercept_channel(channel, BearerToken(settings.token))
            controllers.append(_Controller(channel, calls, node_pb2_grpc.NodeServiceStub(calls),
                                           backend_pb2_grpc.BackendServiceStub(calls)))
        self._controllers: Controllers[_Controller] = Controllers([s.target for s in all_settings], controllers)
        self._timeout = timeout

    @property
    def channel(self) -> grpc.Channel:
        """The channel (with the token, if any) to the controller the next call goes to first,
        for calls this class does not wrap; those do not fail over."""
        return self._controllers.items[self._controllers.preferred()].calls

    @property
    def address(self) -> str:
        """The ``host:port`` of the controller the next call goes to first."""
        return self._controllers.urls[self._controllers.preferred()]

    @property
    def addresses(self) -> tuple[str, ...]:
        """The ``host:port`` of every controller of this client, in the order given."""
        return self._controllers.urls

    @classmethod
    def from_env(cls, url: Optional[str] = None, timeout: float = 10.0) -> "Client":
        """A client configured as the ``hangar`` CLI is from the environment: ``HANGAR_CONTROLLER``
        (unless ``url`` is given; default http://127.0.0.1:7070), ``HANGAR_TOKEN`` or
        ``HANGAR_TOKEN_FILE``, ``HANGAR_TLS_CA``, ``HANGAR_TLS_CERT``, ``HANGAR_TLS_KEY``,
        ``HANGAR_TLS_SERVER_NAME``. An empty variable counts as unset."""
        options = env_options(url)
        return cls(options.pop("url"), timeout, **options)

    def close(self) -> None:
        for controller in self._controllers.items:
            controller.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: Callable[[_Controller], Callable[..., T]], request, idempotent: bool = True) -> T:
        """``method(controller)(request)`` with failover: on the controllers in order until one
        answers when ``idempotent``, else on the first only."""
        order = self._controllers.order()
        for tried, index in enumerate(order):
            try:
                response = method(self._controllers.items[index])(request, timeout=self._timeout)
            except grpc.RpcError as rpc_error:
                error = HangarError.from_rpc_error(rpc_error)
                if self._controllers.failed(index, error) and idempotent and tried < len(order) - 1:
                    continue
                raise error from None
            self._controllers.answered(index)
            return response
        raise AssertionError("the last controller's failure is raised")

    # Nodes.

    node_filter = staticmethod(names.node_filter)

    def list_nodes_page(self, filter: Optional[node_pb2.NodeFilter] = None, page_size: int = 0,
                        page_token: str = "") -> node_pb2.ListNodesResponse:
        """One page of ListNodes, as the server sent it."""
        return self._call(lambda c: c.nodes.ListNodes,
                          node_pb2.ListNodesRequest(filter=filter, page_size=page_size, page_token=page_token))

    def list_nodes_at(self, page_size: int = 500, **filter_args) -> tuple[list[node_pb2.Node], int]:
        """Every matching node and the revision of the snapshot they were read at (pass it to
        ``watch_nodes(start_revision=…)`` to follow on without a gap)."""
        filter = names.node_filter(**filter_args)
        nodes: list[node_pb2.Node] = []
        token, revision = "", None
        while True:
            page = self.list_nodes_page(filter, page_size, token)
            if revision is not None and page.revision != revision:
                raise RuntimeError(f"pages from two snapshots ({revision} and {page.revision})")
            revision = page.revision
            nodes.extend(page.nodes)
            token = page.next_page_token
            if not token:
                return nodes, revision

    def list_nodes(self, page_size: int = 500, **filter_args) -> list[node_pb2.Node]:
        """Every matching node, across pages of one snapshot (the revision is checked). Filters:
        ``kinds=["drone"]``, ``states=["ready"]``, ``cluster``, ``pool``, ``labels``."""
        return self.list_nodes_at(page_size, **filter_args)[0]

    def get_node(self, node_id: str) -> node_pb2.Node:
        return self._call(lambda c: c.nodes.GetNode, node_pb2.GetNodeRequest(id=node_id)).node

    def drain_node(self, node_id: str, deadline_seconds: Optional[float] = None) -> node_pb2.Node:
        """Stops placing backends on the drone; with a deadline, soft-terminates the ones still
        running when it passes."""
        deadline = None
        if deadline_seconds is not None:
            deadline = duration_pb2.Duration()
            deadline.FromNanoseconds(int(deadline_seconds * 1e9))
        request = node_pb2.DrainNodeRequest(id=node_id, deadline=deadline)
        return self._call(lambda c: c.nodes.DrainNode, request, idempotent=False).node

    def undrain_node(self, node_id: str) -> node_pb2.Node:
        """Undoes a drain: the drone takes new backends again (READY once attached and healthy),
        and a drain deadline that has not passed terminates nothing. Undraining a drone that is not
        draining changes nothing."""
        return self._call(lambda c: c.nodes.UndrainNode, node_pb2.UndrainNodeRequest(id=node_id)).node

    def watch_nodes(self, *, start_revision: Optional[int] = None, bookmark_interval: Optional[float] = None,
                    retry: RetryPolicy = RetryPolicy(), **filter_args) -> Generator[NodeWatchEvent, None, None]:
        """The matching nodes, then every change, for as long as you iterate: ``INIT``, one
        ``INIT_APPLY`` per node, ``INIT_DONE``, then ``ADDED`` / ``MODIFIED`` / ``REMOVED`` (and
        ``BOOKMARK`` with ``bookmark_interval``). It resumes by itself from the last revision after
        a dropped stream or a controller restart (announced by ``RECONNECTING``), and lists again
        after OUT_OF_RANGE (a new ``INIT``). With ``start_revision`` (e.g. from
        :meth:`list_nodes_at`) it starts by replaying the changes after it instead. Errors a retry
        cannot fix raise :class:`HangarError`. ``close()`` the iterator (or break) to stop.
        :class:`~hangar_sdk.NodeCache` keeps a local copy from these events."""
        return self._watch(NodeWatchCursor(names.node_filter(**filter_args), start_revision, bookmark_interval, retry),
                           lambda c: c.nodes.WatchNodes)

    def _watch(self, cursor: WatchCursor, open_stream: Callable[[_Controller], Callable]) -> Generator:
        """The one watch loop of both kinds: a stream per ``cursor.request()``, its messages
        decoded by the cursor, and the cursor's decision after each end. A stream that went away
        with its controller is resumed on the next one."""
        current = self._controllers.preferred()
        while True:
            stream = open_stream(self._controllers.items[current])(cursor.request())
            try:
                for message in stream:
                    yield from cursor.decode(message)
                ended = stream_ended()
            except grpc.RpcError as error:
                ended = HangarError.from_rpc_error(error)
            finally:
                stream.cancel()
            reconnect = cursor.ended(ended)
            if rotates(ended):
                current = self._controllers.next(current)
            yield dataclasses.replace(reconnect, controller=self._controllers.urls[current])
            time.sleep(reconnect.delay)

    def watch_nodes_stream(self, send_initial: bool = True, start_revision: int = 0,
                           **filter_args) -> Generator[node_pb2.NodeEvent, None, None]:
        """One WatchNodes stream, as the wire has it (no resume): with ``send_initial``, the
        matching nodes as ADDED events, one SNAPSHOT_END, then live changes. It ends when the
        stream does; a failure raises :class:`HangarError`."""
        request = node_pb2.WatchNodesRequest(filter=names.node_filter(**filter_args),
                                             start_revision=start_revision, send_initial=send_initial)
        return self._one_stream(self._preferred().nodes.WatchNodes, request)

    def _preferred(self) -> _Controller:
        return self._controllers.items[self._controllers.preferred()]

    @staticmethod
    def _one_stream(open_stream: Callable, request) -> Generator:
        stream = open_stream(request)
        try:
            for response in stream:
                yield response.event
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise HangarError.from_rpc_error(error) from None
        finally:
            stream.cancel()

    # Backends.

    def connect(self, key: KeyLike, image: Optional[str] = None, env: Optional[Mapping[str, str]] = None, *,
                wait: bool = True, wait_timeout: Optional[float] = 120.0, command: Sequence[str] = (),
                args: Sequence[str] = (), port: int = 0, **spawn) -> Backend:
        """The backend holding ``key`` (``"docs/doc-1"``, ``"doc-1"``, ``"docs/doc-1@v2"``, a
        :class:`BackendKey`, or ``None`` for a fresh backend no key names), started from ``image``
        when there is none. Without ``image`` only a live backend is returned (NOT_FOUND
        otherwise). ``env``, ``command``, ``args`` and ``port`` say how to start it, as ``hangar
        connect`` does; further keywords: ``pull_policy``, ``cpu_millis``, ``memory_bytes``,
        ``cluster``, ``pool``, ``labels``, ``lifetime_limit``, ``max_idle`` (seconds),
        ``static_token``, ``user``, ``auth``.

        The result carries ``url`` (through the proxy) and its ``token``. With ``wait`` it is
        READY, or :class:`BackendTerminated` is raised if it ended first and ``TimeoutError`` if
        ``wait_timeout`` passed."""
        request = connect_request(key, image, env, command=command, args=args, port=port, **spawn)
        # With a key, Connect is get-or-create and may go to another controller; without one,
        # every Connect a controller received started a backend, so it is made once.
        backend = Backend.from_connect(self._call(lambda c: c.backends.Connect, request,
                                                  idempotent=request.HasField("key")))
        if not wait or backend.state is BackendState.READY:
            return backend
        for status in self.watch_backend(backend.id, timeout=wait_timeout):
            if status.state is BackendState.READY:
                return backend.replace(status=status)
            if status.state.is_terminal:
                raise BackendTerminated(backend.replace(status=status))
        raise BackendTerminated(backend)

    def get_backend(self, backend_id: str) -> Backend:
        return Backend.from_proto(
            self._call(lambda c: c.backends.GetBackend, backend_pb2.GetBackendRequest(id=backend_id)).backend)

    def list_backends_page(self, filter: Optional[backend_pb2.BackendFilter] = None, page_size: int = 0,
                           page_token: str = "") -> backend_pb2.ListBackendsResponse:
        """One page of ListBackends, as the server sent it."""
        return self._call(lambda c: c.backends.ListBackends,
                          backend_pb2.ListBackendsRequest(filter=filter, page_size=page_size, page_token=page_token))

    def list_backends_at(self, page_size: int = 500, **filter_args) -> tuple[list[Backend], int]:
        """Every matching backend and the listing's revision (the first page's; every page
        carries it): ``watch_backends(start_revision=…)`` from it delivers every change after the
        listing."""
        filter = names.backend_filter(**filter_args)
        backends: list[Backend] = []
        token, revision = "", None
        while True:
            page = self.list_backends_page(filter, page_size, token)
            if revision is not None and page.revision != revision:
                raise RuntimeError(f"pages of two listings ({revision} and {page.revision})")
            revision = page.revision
            backends.extend(Backend.from_proto(b) for b in page.backends)
            token = page.next_page_token
            if not token:
                return backends, revision

    def list_backends(self, page_size: int = 500, **filter_args) -> list[Backend]:
        """Every matching backend, across all pages. Filters: ``states=["ready"]``, ``drone_id``,
        ``key_namespace``, ``key_prefix``, ``cluster``, ``pool``, ``labels``."""
        return self.list_backends_at(page_size, **filter_args)[0]

    def watch_backends(self, *, start_revision: Optional[int] = None, bookmark_interval: Optional[float] = None,
                       retry: RetryPolicy = RetryPolicy(),
                       **filter_args) -> Generator[BackendWatchEvent, None, None]:
        """The matching backends, then every status change of every one of them, cluster-wide,
        for as long as you iterate; the same sequence, resume and re-list as :meth:`watch_nodes`
        (``INIT``, ``INIT_APPLY`` per backend, ``INIT_DONE``, then ``ADDED`` / ``MODIFIED`` /
        ``REMOVED`` / ``BOOKMARK``, and ``RECONNECTING`` between streams), with typed
        :class:`Backend` values. A backend whose change takes it out of the filter (e.g. a
        ``states=["ready"]`` watch and a backend that starts terminating) comes as ``REMOVED``
        carrying its new status. With ``start_revision`` (e.g. from :meth:`list_backends_at`) it
        replays the changes after it instead of listing. Filters as :meth:`list_backends`."""
        return self._watch(BackendWatchCursor(names.backend_filter(**filter_args), start_revision, bookmark_interval,
                                              retry), lambda c: c.backends.WatchBackends)

    def watch_backends_stream(self, send_initial: bool = True, start_revision: int = 0,
                              **filter_args) -> Generator[backend_pb2.BackendEvent, None, None]:
        """One WatchBackends stream, as the wire has it (no resume), like :meth:`watch_nodes_stream`."""
        request = backend_pb2.WatchBackendsRequest(filter=names.backend_filter(**filter_args),
                                                   start_revision=start_revision, send_initial=send_initial)
        return self._one_stream(self._preferred().backends.WatchBackends, request)

    def watch_backend(self, backend_id: str, timeout: Optional[float] = None) -> Generator[BackendStatus, None, None]:
        """The backend's statuses, from its first, until TERMINATED (the last item). A dropped
        stream is resumed without repeating a state; ``timeout`` (seconds, overall) raises
        ``TimeoutError`` when it passes first."""
        follower = BackendFollower(backend_id, timeout)
        current = self._controllers.preferred()
        while not follower.done:
            stream = self._controllers.items[current].backends.WatchBackend(follower.request,
                                                                          timeout=follower.remaining())
            try:
                for message in stream:
                    status = follower.accept(message)
                    if status is not None:
                        yield status
                        if follower.done:
                            return
                ended = stream_ended()
            except grpc.RpcError as error:
                ended = HangarError.from_rpc_error(error)
            finally:
                stream.cancel()
            delay = follower.ended(ended)
            if rotates(ended):
                current = self._controllers.next(current)
            time.sleep(delay)

    def terminate(self, backend_id: str, hard: bool = False, *, wait: bool = False,
                  wait_timeout: Optional[float] = 60.0) -> Backend:
        """Soft-terminates the backend (SIGTERM, then a kill after the grace period) or, with
        ``hard``, kills it at once. With ``wait``, returns once it is TERMINATED."""
        backend = Backend.from_proto(self._call(
            lambda c: c.backends.TerminateBackend, backend_pb2.TerminateBackendRequest(id=backend_id, hard=hard)).backend)
        if wait and not backend.state.is_terminal:
            for status in self.watch_backend(backend_id, timeout=wait_timeout):
                backend = backend.replace(status=status)
        return backend
