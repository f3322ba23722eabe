"""Choosing among several controllers of one cluster, for both clients: which to ask first, how
long one that did not answer is left for last, and which failures mean "did not answer". The
same rules as the Rust SDK (client/src/failover.rs, ``call_each`` and ``not_answered`` in
client/src/client.rs).

A controller that does not answer a call is put in a cooldown: for that long it is tried only
after the others. The cooldown starts at :data:`FIRST_COOLDOWN` and doubles with each failure
in a row, up to :data:`MAX_COOLDOWN`; any answer (an error answer too) ends it. A controller in
its cooldown is never skipped outright: when every controller is cooling down, they are all
still tried, so a cluster that comes back is found at once."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generic, Optional, Sequence, TypeVar

import grpc

from .errors import HangarError

#: The cooldown after a first failure, in seconds.
FIRST_COOLDOWN = 0.5
#: The longest cooldown, reached after a few failures in a row.
MAX_COOLDOWN = 15.0

#: ErrorInfo reason of the scheduler's "no drone can take this backend now": an answer.
NO_DRONE_AVAILABLE = "NO_DRONE_AVAILABLE"

# Codes the transport gives a call whose connection broke or that ran into the client's own
# deadline; a controller's own answer with one of these carries an ErrorInfo.
_TRANSPORT = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.DEADLINE_EXCEEDED}

# Codes after which a watch moves on to the next controller (the Rust SDK's ``Next::Rotate``):
# the stream went away with its controller. RESOURCE_EXHAUSTED (cut off as too slow) resumes on
# the same one, OUT_OF_RANGE lists again there.
_ROTATE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
           grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}

log = logging.getLogger("hangar_sdk")

C = TypeVar("C")


def not_answered(error: HangarError) -> bool:
    """Whether the controller did not answer the call (so another one may): UNAVAILABLE
    (unreachable, refused, shutting down) except NO_DRONE_AVAILABLE, which is the scheduler's
    answer; or UNKNOWN, CANCELLED, INTERNAL or DEADLINE_EXCEEDED without the ``ErrorInfo``
    every answer of a controller carries (a connection broken mid-call, or a hung controller
    that let the client's deadline pass)."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return error.reason != NO_DRONE_AVAILABLE
    return error.code in _TRANSPORT and not error.has_error_info


def rotates(error: HangarError) -> bool:
    """Whether a watch whose stream ended with ``error`` resumes on the next controller."""
    return error.code in _ROTATE


class Health:
    """How one controller has been answering. Thread-safe (the blocking client may be shared)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        #: Calls in a row it did not answer.
        self.failures = 0
        self._cooling_until: Optional[float] = None

    def is_cooling(self, now: Optional[float] = None) -> bool:
        """Whether it failed lately and is to be tried after the others."""
        now = self._clock() if now is None else now
        with self._lock:
            return self._cooling_until is not None and now < self._cooling_until

    def answered(self) -> bool:
        """It answered: its cooldown ends. Returns whether it had been failing."""
        with self._lock:
            was_failing = self.failures > 0
            self.failures, self._cooling_until = 0, None
            return was_failing

    def failed(self) -> float:
        """It did not answer: it cools down for :data:`FIRST_COOLDOWN` doubled per failure in a
        row, at most :data:`MAX_COOLDOWN`. Returns the cooldown in seconds."""
        with self._lock:
            cooldown = min(MAX_COOLDOWN, FIRST_COOLDOWN * 2 ** min(self.failures, 8))
            self.failures += 1
            self._cooling_until = self._clock() + cooldown
            return cooldown


def try_order(healths: Sequence[Health], start: int = 0) -> list[int]:
    """The order in which to try ``healths``: from ``start`` round, those not cooling down
    first, then those cooling down (in the same rotation)."""
    n = len(healths)
    rotation = [(start + i) % n for i in range(n)]
    cooling = [healths[i].is_cooling() for i in range(n)]
    return [i for i in rotation if not cooling[i]] + [i for i in rotation if cooling[i]]


class Controllers(Generic[C]):
    """A client's controllers (whatever it keeps per controller: channel, stubs), in the order
    given, each with its :class:`Health`."""

    def __init__(self, urls: Sequence[str], items: Sequence[C], clock: Callable[[], float] = time.monotonic):
        if not items:
            raise ValueError("no controller URL given; expected a URL like http://127.0.0.1:7070, or several")
        self.urls = tuple(urls)
        self.items = list(items)
        self.healths = [Health(clock) for _ in items]

    def __len__(self) -> int:
        return len(self.items)

    def order(self) -> list[int]:
        """The indexes in the order a call tries them."""
        return try_order(self.healths)

    def preferred(self) -> int:
        return self.order()[0]

    def next(self, current: int) -> int:
        """The controller after ``current`` (a watch rotating)."""
        return (current + 1) % len(self.items)

    def answered(self, index: int) -> None:
        if self.healths[index].answered() and len(self.items) > 1:
            log.info("controller %s answers again", self.urls[index])

    def failed(self, index: int, error: HangarError) -> bool:
        """Records how controller ``index`` failed a call; returns whether it did not answer
        (its cooldown has started then) rather than answer with an error."""
        if not not_answered(error):
            self.answered(index)
            return False
        cooldown = self.healths[index].failed()
        if len(self.items) > 1:
            log.warning("controller %s did not answer (%s); tried after the others for %.1f s",
                        self.urls[index], error, cooldown)
        return True
