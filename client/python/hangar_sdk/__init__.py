"""Python SDK for Hangar.

The generated modules (``hangar.v1.node_pb2`` and friends, built from ``proto/`` with
grpcio-tools) are the whole API; :class:`Client` adds what every caller would otherwise write:
target parsing, listing across pages from one snapshot, watch streams as iterators, and errors
that carry Hangar's stable reason strings and field violations.

    from hangar_sdk import Client, enum_name, node_pb2
    client = Client("http://127.0.0.1:7070")
    for node in client.list_nodes(kinds=["DRONE"], states=["READY"]):
        print(node.name, enum_name(node_pb2.NodeState, node.state), node.resources.cpu_cores)

A controller with TLS and client certificates, and a bearer token (docs/security.md):

    client = Client("https://ctl.example.com:7070", tls_ca="ca.pem", tls_cert="alice.pem",
                    tls_key="alice.key", token_file="/run/secrets/hangar-token")
    client = Client.from_env()  # HANGAR_CONTROLLER, HANGAR_TOKEN[_FILE], HANGAR_TLS_CA/CERT/KEY
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hangar.v1 import node_pb2, node_pb2_grpc

__all__ = ["Client", "HangarError", "enum_name", "node_pb2"]


@dataclass
class HangarError(Exception):
    """A failed call: the gRPC code, the message, and Hangar's error details."""

    code: grpc.StatusCode
    message: str
    #: Stable ``ErrorInfo.reason`` (e.g. ``NODE_NOT_FOUND``); empty when the server sent none.
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: ``(field, description)`` pairs of an INVALID_ARGUMENT.
    violations: Sequence[tuple[str, str]] = ()

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code.name}: {self.message}{reason}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "HangarError":
        reason, metadata, violations = "", {}, []
        status = rpc_status.from_call(error)
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Unpack(bad):
                    violations = [(v.field, v.description) for v in bad.field_violations]
        return cls(error.code(), error.details() or "", reason, metadata, tuple(violations))


def enum_name(enum, value: int) -> str:
    """The short name of a value of a Hangar enum, as the CLI and the JSON output print it:
    ``enum_name(node_pb2.NodeState, node.state)`` is ``"READY"``, ``enum_name(node_pb2.NodeEventType,
    event.type)`` is ``"ADDED"``. A value this SDK does not know comes back as its number."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name[len(prefix):] if name.startswith(prefix) else name


def _target(url: str, tls_options: bool) -> tuple[str, bool]:
    """``(host:port, secure)``: https:// is TLS, http:// (or grpc://) is plain, and a bare
    ``host:port`` is TLS when TLS options are given."""
    url = url.strip()
    if url.startswith("https://"):
        return url[len("https://"):].rstrip("/"), True
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            if tls_options:
                raise ValueError(f"{url} is plain http://, but TLS options are set (tls_ca, tls_cert, tls_key or "
                                 "tls_server_name); use an https:// URL")
            return url[len(scheme):].rstrip("/"), False
    if "://" in url:
        raise ValueError(f"{url}: expected a URL like http://127.0.0.1:7070 or https://ctl.example:7070")
    return url.rstrip("/"), tls_options


def _read_pem(path: str, what: str, marker: bytes) -> bytes:
    """The file's bytes; a missing file or one without a PEM block is an error that names it."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(f"the {what} {path} is not PEM: it holds no -----BEGIN {marker.decode()}----- block")
    return data


def _read_token(token: Optional[str], token_file: Optional[str]) -> Optional[str]:
    if token is not None and token_file is not None:
        raise ValueError("give a token or a token file, not both")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as error:
            raise ValueError(f"cannot read the token file {token_file}: {error.strerror}") from None
        if not token:
            raise ValueError(f"the token in {token_file} is empty")
    if token is not None and (not token or not all(33 <= ord(c) < 127 for c in token)):
        raise ValueError("the token must be non-empty visible ASCII")
    return token


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer …`` to every call, on plain and TLS channels alike."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerToken(<redacted>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = list(details.metadata or [])
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self._header)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


def _enum_values(enum, names: Iterable[str], prefix: str) -> list[int]:
    return [enum.Value(prefix + name.upper()) for name in names]


class Client:
    """A connection to one controller.

    ``https://`` URLs use TLS: ``tls_ca`` is the PEM file of the CA that signed the controller's
    certificate (the system's roots without it), ``tls_cert`` and ``tls_key`` a client
    certificate for a controller that requires one (mTLS; both or neither), and
    ``tls_server_name`` the name to expect in the controller's certificate when it is not the
    URL's host. ``token`` (or ``token_file``, read now and stripped) is sent as
    ``authorization: Bearer …`` on every call, over TLS or plain http://. Files that are missing
    or not PEM raise ``ValueError`` naming them."""

    def __init__(self, url: str, timeout: float = 10.0, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None):
        tls_options = any(option is not None for option in (tls_ca, tls_cert, tls_key, tls_server_name))
        target, secure = _target(url, tls_options)
        if (tls_cert is None) != (tls_key is None):
            given, missing = ("tls_cert", "tls_key") if tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(f"{given} is set without {missing}; give both the client certificate and its key, "
                             "or neither")
        token = _read_token(token, token_file)
        if secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(tls_ca, "CA certificate", b"CERTIFICATE") if tls_ca else None,
                private_key=_read_pem(tls_key, "client key", b"PRIVATE KEY") if tls_key else None,
                certificate_chain=_read_pem(tls_cert, "client certificate", b"CERTIFICATE") if tls_cert else None,
            )
            options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
            channel = grpc.secure_channel(target, credentials, options)
        else:
            channel = grpc.insecure_channel(target)
        self._channel = channel
        if token is not None:
            channel = grpc.intercept_channel(channel, _BearerToken(token))
        self._nodes = node_pb2_grpc.NodeServiceStub(channel)
        self._timeout = timeout

    @classmethod
    def from_env(cls, url: Optional[str] = None, timeout: float = 10.0) -> "Client":
        """A client configured as the ``hangar`` CLI is from the environment: ``HANGAR_CONTROLLER``
        (unless ``url`` is given; default http://127.0.0.1:7070), ``HANGAR_TOKEN`` or
        ``HANGAR_TOKEN_FILE``, ``HANGAR_TLS_CA``, ``HANGAR_TLS_CERT``, ``HANGAR_TLS_KEY``,
        ``HANGAR_TLS_SERVER_NAME``. An empty variable counts as unset."""
        def env(name: str) -> Optional[str]:
            return os.environ.get(name) or None

        return cls(url or env("HANGAR_CONTROLLER") or "http://127.0.0.1:7070", timeout,
                   token=env("HANGAR_TOKEN"), token_file=env("HANGAR_TOKEN_FILE"), tls_ca=env("HANGAR_TLS_CA"),
                   tls_cert=env("HANGAR_TLS_CERT"), tls_key=env("HANGAR_TLS_KEY"),
                   tls_server_name=env("HANGAR_TLS_SERVER_NAME"))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def node_filter(
        kinds: Sequence[str] = (),
        states: Sequence[str] = (),
        cluster: str = "",
        pool: str = "",
        labels: Optional[Mapping[str, str]] = None,
    ) -> node_pb2.NodeFilter:
        """A filter from plain names: kinds like ``"DRONE"``, states like ``"READY"``."""
        return node_pb2.NodeFilter(
            kinds=_enum_values(node_pb2.NodeKind, kinds, "NODE_KIND_"),
            states=_enum_values(node_pb2.NodeState, states, "NODE_STATE_"),
            cluster=cluster,
            pool=pool,
            labels=dict(labels or {}),
        )

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise HangarError.from_rpc_error(error) from None

    def list_nodes_page(self, filter: Optional[node_pb2.NodeFilter] = None, page_size: int = 0,
                        page_token: str = "") -> node_pb2.ListNodesResponse:
        return self._call(self._nodes.ListNodes,
                          node_pb2.ListNodesRequest(filter=filter, page_size=page_size, page_token=page_token))

    def list_nodes(self, page_size: int = 500, **filter_args) -> list[node_pb2.Node]:
        """Every matching node, across pages of one snapshot (the revision is checked)."""
        filter = self.node_filter(**filter_args)
        nodes, token, revision = [], "", None
        while True:
            page = self.list_nodes_page(filter, page_size, token)
            if revision is not None and page.revision != revision:
                raise RuntimeError(f"pages from two snapshots ({revision} and {page.revision})")
            revision = page.revision
            nodes.extend(page.nodes)
            token = page.next_page_token
            if not token:
                return nodes

    def get_node(self, node_id: str) -> node_pb2.Node:
        return self._call(self._nodes.GetNode, node_pb2.GetNodeRequest(id=node_id)).node

    def drain_node(self, node_id: str, deadline_seconds: Optional[float] = None) -> node_pb2.Node:
        deadline = None
        if deadline_seconds is not None:
            deadline = duration_pb2.Duration()
            deadline.FromNanoseconds(int(deadline_seconds * 1e9))
        return self._call(self._nodes.DrainNode, node_pb2.DrainNodeRequest(id=node_id, deadline=deadline)).node

    def undrain_node(self, node_id: str) -> node_pb2.Node:
        """Undoes a drain: the drone takes new backends again (READY once attached and healthy),
        and a drain deadline that has not passed terminates nothing. Undraining a drone that is not
        draining changes nothing."""
        return self._call(self._nodes.UndrainNode, node_pb2.UndrainNodeRequest(id=node_id)).node

    def watch_nodes(self, send_initial: bool = True, start_revision: int = 0,
                    **filter_args) -> Iterator[node_pb2.NodeEvent]:
        """Node events as they happen: with ``send_initial``, the matching nodes as ADDED events,
        one SNAPSHOT_END, then live changes. Iterate; close the iterator to stop."""
        request = node_pb2.WatchNodesRequest(filter=self.node_filter(**filter_args),
                                             start_revision=start_revision, send_initial=send_initial)
        stream = self._nodes.WatchNodes(request)
        try:
            for response in stream:
                yield response.event
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise HangarError.from_rpc_error(error) from None
        finally:
            stream.cancel()
