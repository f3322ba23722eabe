"""Python SDK for Hangar.

The generated modules (``hangar.v1.node_pb2`` and friends, built from ``proto/`` with
grpcio-tools) are the whole API; :class:`Client` adds what every caller would otherwise write:
target parsing, listing across pages from one snapshot, watch streams as iterators, and errors
that carry Hangar's stable reason strings and field violations.

    from hangar_sdk import Client, enum_name, node_pb2
    client = Client("http://127.0.0.1:7070")
    for node in client.list_nodes(kinds=["DRONE"], states=["READY"]):
        print(node.name, enum_name(node_pb2.NodeState, node.state), node.resources.cpu_cores)
"""

from __future__ import annotations

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


def _target(url: str) -> str:
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    if url.startswith("https://"):
        raise ValueError("TLS is not supported by this SDK version; use http://HOST:PORT")
    return url


def _enum_values(enum, names: Iterable[str], prefix: str) -> list[int]:
    return [enum.Value(prefix + name.upper()) for name in names]


class Client:
    """A connection to one controller."""

    def __init__(self, url: str, timeout: float = 10.0):
        self._channel = grpc.insecure_channel(_target(url))
        self._nodes = node_pb2_grpc.NodeServiceStub(self._channel)
        self._timeout = timeout

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
