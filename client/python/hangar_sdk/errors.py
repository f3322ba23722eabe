"""Errors the SDK raises: :class:`HangarError` for a failed call, :class:`BackendTerminated` for a
backend that ended while the caller was waiting for it to become READY."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from .types import Backend


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
    #: Seconds to wait before trying again, when the server said (``google.rpc.RetryInfo``, e.g.
    #: with reason ``RATE_LIMITED``).
    retry_after: Optional[float] = None
    #: Whether the status carried a ``google.rpc.ErrorInfo``: every answer of a controller does,
    #: so a failure without one came from the transport (a broken connection, the client's own
    #: deadline), not from a controller.
    has_error_info: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code.name}: {self.message}{reason}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "HangarError":
        """The error of a failed blocking call (a ``grpc.RpcError`` that is also a ``grpc.Call``)."""
        return cls._from_parts(error.code(), error.details() or "", rpc_status.from_call(error))

    @classmethod
    def from_aio_error(cls, error: Any) -> "HangarError":
        """The error of a failed ``grpc.aio`` call (a ``grpc.aio.AioRpcError``)."""
        status = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
        return cls._from_parts(error.code(), error.details() or "", status)

    @classmethod
    def _from_parts(cls, code: grpc.StatusCode, message: str, status: Any) -> "HangarError":
        reason, metadata, violations, retry_after = "", {}, [], None
        has_error_info = False
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
                    has_error_info = True
                elif detail.Unpack(bad):
                    violations = [(v.field, v.description) for v in bad.field_violations]
                elif detail.Unpack(retry):
                    retry_after = retry.retry_delay.ToNanoseconds() / 1e9
        if retry_after is None and "retry_after_ms" in metadata:
            try:
                retry_after = int(metadata["retry_after_ms"]) / 1000
            except ValueError:
                pass
        return cls(code, message, reason, metadata, tuple(violations), retry_after, has_error_info)


class BackendTerminated(Exception):
    """The backend reached TERMINATED before READY (``connect(..., wait=True)``): its image could
    not be prepared, it exited, it did not answer in time… ``backend.status`` says which."""

    def __init__(self, backend: "Backend"):
        self.backend = backend
        status = backend.status
        why = status.termination_reason or "UNSPECIFIED"
        detail = f": {status.message}" if status.message else ""
        super().__init__(f"backend {backend.id} terminated before it was ready ({why}){detail}")
