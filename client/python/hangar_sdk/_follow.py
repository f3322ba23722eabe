"""Following one backend's statuses across dropped streams, for both clients: WatchBackend
replays the backend's history on every call, and states only move forward, so a resumed stream's
repeats are the statuses whose state is not past the last one seen."""

from __future__ import annotations

import time
from typing import Optional

import grpc

from hangar.v1 import backend_pb2

from .errors import HangarError
from .types import BackendState, BackendStatus
from .watch import RetryPolicy

_RETRY = RetryPolicy(initial_backoff=0.1, max_backoff=2.0)
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class BackendFollower:
    def __init__(self, backend_id: str, timeout: Optional[float]):
        self.request = backend_pb2.WatchBackendRequest(id=backend_id)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._last = -1
        self._failures = 0
        self.done = False

    def remaining(self) -> Optional[float]:
        """Seconds left for the next stream; raises ``TimeoutError`` when none are."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"backend {self.request.id} did not reach the state waited for in time")
        return left

    def accept(self, message: backend_pb2.WatchBackendResponse) -> Optional[BackendStatus]:
        """The status to yield, or ``None`` for a repeat."""
        self._failures = 0
        if message.status.state <= self._last:
            return None
        self._last = message.status.state
        status = BackendStatus.from_proto(message.status)
        self.done = status.state is BackendState.TERMINATED
        return status

    def ended(self, error: HangarError) -> float:
        """Seconds to wait before the next stream; raises when retrying cannot help."""
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and self._deadline is not None:
            raise TimeoutError(f"backend {self.request.id} did not reach the state waited for in time")
        if error.code not in _TRANSIENT:
            raise error
        self._failures += 1
        delay = max(_RETRY.backoff(self._failures), error.retry_after or 0.0)
        left = self.remaining()
        return delay if left is None else min(delay, left)
