#!/usr/bin/env python3
"""A reference executor for Hangar in Python: `hangar.executor.v1` on a Unix socket, backends run
as local processes (docs/design/executor-protocol.md#writing-an-executor).

    python executor.py --socket /run/hangar-py/executor.sock

It is what a third-party executor needs and no more: stock grpcio, the generated stubs from
client/python/generated, and the standard library. `hangar-drone conformance --socket PATH
--image $(which hangar-test-backend)` checks it, and a drone runs backends on it with
`hangar-drone run --executor-socket PATH`.

What it promises, as the protocol asks:
- the handshake names the runtime kind `process` and the capabilities PREPARE_IMAGE, STATS and
  EVENTS; a client of another major is refused with PROTOCOL_VERSION_MISMATCH;
- `image` is the path of an executable; `command` replaces it, `args` follow;
- start is idempotent by backend id; stop sends SIGTERM to the backend's process group and
  SIGKILL after the grace; stop and remove of a missing backend are OK;
- events carry sequence numbers that grow by one, a stream starts with SYNC, and STARTED comes
  before EXITED, EXITED before REMOVED;
- every error carries a `google.rpc.ErrorInfo` reason (domain `hangar.dev`), which the drone
  reads back as the same error.

Unlike `hangar-drone executor` it does not check the peer's uid (grpcio does not expose
SO_PEERCRED): the 0700 directory and 0600 socket keep other users out. And grpcio does not say
which connection a call came on, so "handshake first" is tracked per executor process: after a
restart, a client's next call gets HANDSHAKE_REQUIRED and it handshakes again.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "generated"))
from hangar.executor.v1 import executor_pb2 as pb  # noqa: E402
from hangar.executor.v1 import executor_pb2_grpc as pb_grpc  # noqa: E402

PROTOCOL_MAJOR, PROTOCOL_MINOR = 1, 1
ERROR_DOMAIN = "hangar.dev"
BACKEND_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MIN_STATS_INTERVAL = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ExecutorError(Exception):
    """An error as the protocol spells it: a gRPC code, an ErrorInfo reason and its metadata."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str):
        super().__init__(message)
        self.code, self.reason, self.message, self.metadata = code, reason, message, metadata

    def abort(self, context: grpc.ServicerContext):
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        details = [detail]
        if self.code == grpc.StatusCode.INVALID_ARGUMENT:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=self.metadata.get("field", ""), description=self.message)
            bad_request = any_pb2.Any()
            bad_request.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
            details.append(bad_request)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        context.abort_with_status(rpc_status.to_status(status))


def not_found(backend_id: str) -> ExecutorError:
    return ExecutorError(grpc.StatusCode.NOT_FOUND, "BACKEND_NOT_FOUND", f"backend {backend_id} not found",
                         backend_id=backend_id)


def missing_image(image: str, pull_policy: int, detail: str) -> ExecutorError:
    # Nothing can be pulled: under ALWAYS a missing executable is a failed pull.
    if pull_policy == pb.PULL_POLICY_ALWAYS:
        return ExecutorError(grpc.StatusCode.UNAVAILABLE, "IMAGE_PULL_FAILED",
                             f"pulling image {image} failed: {detail}", image=image, detail=detail)
    return ExecutorError(grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND", f"image {image} not found: {detail}",
                         image=image, detail=detail)


def check_backend_id(backend_id: str):
    if not BACKEND_ID.match(backend_id):
        raise ExecutorError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                            "must be 1-128 ASCII letters, digits, '-', '_' or '.'", field="backend_id")


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def guarded(method):
    """Turns an ExecutorError raised by a unary call into its status."""

    def call(self, request, context):
        try:
            return method(self, request, context)
        except ExecutorError as err:
            err.abort(context)

    call.__name__ = method.__name__
    return call


class Backend:
    def __init__(self, backend_id: str, process: subprocess.Popen, address: str):
        self.backend_id, self.process, self.address = backend_id, process, address
        self.started_at = now()
        self.exit_code: int | None = None
        self.finished_at: timestamp_pb2.Timestamp | None = None
        self.exited = threading.Event()

    def info(self) -> pb.BackendInfo:
        info = pb.BackendInfo(backend_id=self.backend_id, runtime_id=str(self.process.pid), address=self.address,
                              created_at=self.started_at, started_at=self.started_at)
        if self.exited.is_set():
            info.state = pb.RUNTIME_STATE_EXITED
            info.exit_code = self.exit_code
            info.finished_at.CopyFrom(self.finished_at)
        else:
            info.state = pb.RUNTIME_STATE_RUNNING
        return info


class EventHub:
    """Numbers events and hands them to every subscriber under one lock, so sequences grow by one
    and each subscriber sees them in order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sequence = 0
        self.subscribers: list[queue.Queue] = []

    def publish(self, kind: int, backend_id: str, exit_code: int | None = None):
        with self.lock:
            self.sequence += 1
            event = pb.RuntimeEvent(sequence=self.sequence, type=kind, backend_id=backend_id, time=now())
            if exit_code is not None:
                event.exit_code = exit_code
            for subscriber in self.subscribers:
                subscriber.put(event)

    def subscribe(self) -> tuple[queue.Queue, pb.RuntimeEvent]:
        with self.lock:
            subscriber: queue.Queue = queue.Queue()
            self.subscribers.append(subscriber)
            return subscriber, pb.RuntimeEvent(sequence=self.sequence, type=pb.EVENT_TYPE_SYNC, time=now())

    def unsubscribe(self, subscriber: queue.Queue):
        with self.lock:
            self.subscribers.remove(subscriber)


class ProcessExecutor(pb_grpc.ExecutorServiceServicer):
    def __init__(self, name: str, stopping: threading.Event):
        self.name = name
        self.stopping = stopping
        self.handshaken = False
        self.backends: dict[str, Backend] = {}
        self.backends_lock = threading.Lock()
        self.start_locks: dict[str, threading.Lock] = {}
        self.hub = EventHub()

    # -- helpers ---------------------------------------------------------------------------------

    def admit(self, context):
        if not self.handshaken:
            ExecutorError(grpc.StatusCode.FAILED_PRECONDITION, "HANDSHAKE_REQUIRED",
                          "call Handshake first").abort(context)

    def lock_for(self, backend_id: str) -> threading.Lock:
        with self.backends_lock:
            return self.start_locks.setdefault(backend_id, threading.Lock())

    def get(self, backend_id: str) -> Backend | None:
        with self.backends_lock:
            return self.backends.get(backend_id)

    def reap(self, backend: Backend):
        returncode = backend.process.wait()
        # Killed by signal N reads 128+N, as Docker reports it.
        backend.exit_code = 128 - returncode if returncode < 0 else returncode
        backend.finished_at = now()
        backend.exited.set()
        self.hub.publish(pb.EVENT_TYPE_EXITED, backend.backend_id, backend.exit_code)

    def terminate(self, backend: Backend, grace: float):
        if backend.exited.is_set():
            return
        if grace > 0:
            self.signal(backend, signal.SIGTERM)
            if backend.exited.wait(grace):
                return
        self.signal(backend, signal.SIGKILL)
        backend.exited.wait(10)

    @staticmethod
    def signal(backend: Backend, sig: int):
        try:
            os.killpg(backend.process.pid, sig)
        except ProcessLookupError:
            pass

    # -- the protocol ----------------------------------------------------------------------------

    @guarded
    def Handshake(self, request, context):
        if request.protocol_major != PROTOCOL_MAJOR:
            raise ExecutorError(grpc.StatusCode.FAILED_PRECONDITION, "PROTOCOL_VERSION_MISMATCH",
                                f"client speaks hangar.executor.v{request.protocol_major}, "
                                f"this executor speaks v{PROTOCOL_MAJOR}")
        self.handshaken = True
        return pb.HandshakeResponse(
            protocol_major=PROTOCOL_MAJOR, protocol_minor=PROTOCOL_MINOR, executor_name=self.name,
            executor_version="0.1.0", runtime_kind="process",
            capabilities=[pb.CAPABILITY_PREPARE_IMAGE, pb.CAPABILITY_STATS, pb.CAPABILITY_EVENTS])

    @guarded
    def Status(self, request, context):
        self.admit(context)
        return pb.StatusResponse(conditions=[pb.Condition(type="RuntimeReachable", status=True),
                                             pb.Condition(type="RuntimeReady", status=True)])

    @guarded
    def PrepareImage(self, request, context):
        self.admit(context)
        path = pathlib.Path(request.image)
        if not (path.is_absolute() and path.is_file() and os.access(path, os.X_OK)):
            raise missing_image(request.image, request.pull_policy, "no such executable")
        return pb.PrepareImageResponse(image_id=str(path.resolve()), pulled=False)

    @guarded
    def StartBackend(self, request, context):
        self.admit(context)
        spec = request.spec
        check_backend_id(spec.backend_id)
        with self.lock_for(spec.backend_id):
            existing = self.get(spec.backend_id)
            if existing:
                return pb.StartBackendResponse(runtime_id=str(existing.process.pid), address=existing.address)
            argv = list(spec.command) or [spec.image]
            argv += list(spec.args)
            port = free_port()
            env = dict(spec.env)
            env["PORT"] = str(port)
            env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
            try:
                # Its own session, so a stop reaches every process the backend forked.
                process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            except FileNotFoundError as err:
                if not spec.command:
                    raise missing_image(spec.image, pb.PULL_POLICY_IF_NOT_PRESENT, "no such executable") from err
                raise ExecutorError(grpc.StatusCode.FAILED_PRECONDITION, "BACKEND_START_FAILED",
                                    f"cannot run {argv[0]}: {err}", backend_id=spec.backend_id,
                                    detail=str(err)) from err
            backend = Backend(spec.backend_id, process, f"127.0.0.1:{port}")
            with self.backends_lock:
                self.backends[spec.backend_id] = backend
            # Published before the reaper exists, so STARTED always precedes EXITED.
            self.hub.publish(pb.EVENT_TYPE_STARTED, spec.backend_id)
            threading.Thread(target=self.reap, args=(backend,), daemon=True).start()
            return pb.StartBackendResponse(runtime_id=str(process.pid), address=backend.address)

    @guarded
    def StopBackend(self, request, context):
        self.admit(context)
        check_backend_id(request.backend_id)
        grace = request.grace.seconds + request.grace.nanos / 1e9
        with self.lock_for(request.backend_id):
            backend = self.get(request.backend_id)
            if backend:
                self.terminate(backend, grace)
        return pb.StopBackendResponse()

    @guarded
    def RemoveBackend(self, request, context):
        self.admit(context)
        check_backend_id(request.backend_id)
        with self.lock_for(request.backend_id):
            backend = self.get(request.backend_id)
            if backend:
                self.terminate(backend, 0)
                with self.backends_lock:
                    del self.backends[request.backend_id]
                self.hub.publish(pb.EVENT_TYPE_REMOVED, request.backend_id)
        return pb.RemoveBackendResponse()

    @guarded
    def InspectBackend(self, request, context):
        self.admit(context)
        check_backend_id(request.backend_id)
        backend = self.get(request.backend_id)
        if not backend:
            raise not_found(request.backend_id)
        return pb.InspectBackendResponse(backend=backend.info())

    @guarded
    def ListBackends(self, request, context):
        self.admit(context)
        with self.backends_lock:
            backends = list(self.backends.values())
        return pb.ListBackendsResponse(backends=[b.info() for b in backends])

    def WatchEvents(self, request, context):
        self.admit(context)
        subscriber, sync = self.hub.subscribe()
        try:
            yield pb.WatchEventsResponse(event=sync)
            while context.is_active() and not self.stopping.is_set():
                try:
                    event = subscriber.get(timeout=0.2)
                except queue.Empty:
                    continue
                yield pb.WatchEventsResponse(event=event)
        finally:
            self.hub.unsubscribe(subscriber)

    def StreamStats(self, request, context):
        self.admit(context)
        try:
            check_backend_id(request.backend_id)
            backend = self.get(request.backend_id)
            if not backend:
                raise not_found(request.backend_id)
        except ExecutorError as err:
            err.abort(context)
        interval = max(MIN_STATS_INTERVAL, request.interval.seconds + request.interval.nanos / 1e9)
        while context.is_active() and not self.stopping.is_set() and not backend.exited.is_set():
            try:
                yield pb.StreamStatsResponse(stats=proc_stats(backend.process.pid))
            except OSError:
                break  # the process ended between the check and the read
            backend.exited.wait(interval)

    def shutdown(self):
        with self.backends_lock:
            backends = list(self.backends.values())
        for backend in backends:
            self.terminate(backend, 0)


def proc_stats(pid: int) -> pb.BackendStats:
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    field = lambda n: int(fields[n - 3])  # noqa: E731  (fields[0] is field 3 of proc(5))
    ticks = field(14) + field(15)
    return pb.BackendStats(time=now(), cpu_total_ns=ticks * 1_000_000_000 // CLOCK_TICKS,
                           memory_used_bytes=field(24) * PAGE_SIZE, pids=field(20))


def bind_path(path: pathlib.Path):
    """The socket's guards: a 0700 directory (created if missing; an existing one must already be
    private), a stale socket replaced, the socket file 0600 once bound."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        sys.exit(f"{directory} must not be accessible to group or others (use a 0700 directory)")
    if path.exists():
        path.unlink()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=pathlib.Path, help="Unix socket to serve on")
    parser.add_argument("--name", default="hangar-python-executor", help="executor name in the handshake")
    args = parser.parse_args()

    bind_path(args.socket)
    stopping = threading.Event()
    executor = ProcessExecutor(args.name, stopping)
    # Every open WatchEvents or StreamStats stream holds a worker thread for its life.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    pb_grpc.add_ExecutorServiceServicer_to_server(executor, server)
    server.add_insecure_port(f"unix:{args.socket}")
    server.start()
    os.chmod(args.socket, 0o600)
    print(f"serving hangar.executor.v1 on {args.socket}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    stopping.set()
    server.stop(grace=5).wait()
    executor.shutdown()
    if args.socket.exists():
        args.socket.unlink()


if __name__ == "__main__":
    main()
