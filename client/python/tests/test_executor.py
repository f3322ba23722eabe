"""The executor protocol with stock gRPC in Python (docs/design/executor-protocol.md): grpcio with
default channel options against the Rust executor, the Python reference executor
(examples/executor.py) through `hangar-drone conformance`, and a real drone driving it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "client" / "python" / "examples" / "executor.py"
sys.path.insert(0, str(REPO / "client" / "python" / "generated"))
from hangar.executor.v1 import executor_pb2 as pb  # noqa: E402
from hangar.executor.v1 import executor_pb2_grpc as pb_grpc  # noqa: E402

WAIT = 30


def binary(name: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get("HANGAR_BIN_DIR", REPO / "target" / "debug")) / name
    if not path.exists():
        pytest.fail(f"{path} is not built; run `cargo build --workspace --bins` first (scripts/test does)")
    return path


def eventually(what: str, condition, within: float = WAIT):
    """Checks `condition` until it returns something truthy; fails naming `what` after `within`."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as err:  # noqa: BLE001 (a server not up yet)
            last = err
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}; last saw {last!r}")


class Process:
    """A child process that is stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, *args, **kwargs):
        self.process = subprocess.Popen([str(a) for a in args], **kwargs)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def workdir():
    # Short: a Unix socket path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="hx") as directory:
        yield pathlib.Path(directory)


def serve(socket: pathlib.Path, *command) -> Process:
    executor = Process(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually(f"an executor serving on {socket}", socket.exists)
    return executor


@pytest.fixture
def rust_executor(workdir):
    socket = workdir / "run" / "executor.sock"
    executor = serve(socket, binary("hangar-drone"), "executor", "--runtime", "process", "--socket", socket)
    yield socket
    executor.stop()


@pytest.fixture
def python_executor(workdir):
    socket = workdir / "py" / "executor.sock"
    executor = serve(socket, sys.executable, EXAMPLE, "--socket", socket)
    yield socket
    executor.stop()


def test_stock_grpc_python_client_with_default_options_handshakes_starts_and_watches(rust_executor):
    # Default options: grpc-core sends the percent-encoded socket path as :authority
    # ("tmp%2F...%2Fexecutor.sock"), which HTTP/2 servers that check authorities refuse.
    for target in (f"unix://{rust_executor}", f"unix:{rust_executor}"):
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ExecutorServiceStub(channel)
            hello = stub.Handshake(pb.HandshakeRequest(protocol_major=1, client_name="stock-python"), timeout=10)
            assert (hello.protocol_major, hello.runtime_kind) == (1, "process")
            assert pb.CAPABILITY_EVENTS in hello.capabilities

            events = stub.WatchEvents(pb.WatchEventsRequest(), timeout=20)
            assert next(events).event.type == pb.EVENT_TYPE_SYNC
            backend_id = f"stock-{os.getpid()}-{len(target)}"
            spec = pb.BackendSpec(backend_id=backend_id, image=str(binary("hangar-test-backend")))
            started = stub.StartBackend(pb.StartBackendRequest(spec=spec), timeout=10)
            assert started.address.startswith("127.0.0.1:")
            event = next(events).event
            assert (event.type, event.backend_id) == (pb.EVENT_TYPE_STARTED, backend_id)
            stub.RemoveBackend(pb.RemoveBackendRequest(backend_id=backend_id), timeout=10)
            kinds = [next(events).event.type for _ in range(2)]
            assert kinds == [pb.EVENT_TYPE_EXITED, pb.EVENT_TYPE_REMOVED]
            events.cancel()


def test_stock_client_errors_carry_the_protocols_reasons(rust_executor):
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    with grpc.insecure_channel(f"unix://{rust_executor}") as channel:
        stub = pb_grpc.ExecutorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Handshake(pb.HandshakeRequest(protocol_major=2), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_details_pb2.ErrorInfo()
        rpc_status.from_call(refused.value).details[0].Unpack(info)
        assert info.reason == "PROTOCOL_VERSION_MISMATCH"


def conformance(socket: pathlib.Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary("hangar-drone")), "conformance", "--socket", str(socket),
         "--image", str(binary("hangar-test-backend")), *extra],
        capture_output=True, text=True, timeout=600,
    )


def test_python_reference_executor_passes_hangar_drone_conformance(python_executor):
    result = conformance(python_executor)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert '"hangar-python-executor"' in lines[0], lines[0]
    verdicts = [line.split()[0] for line in lines[1:-1]]
    assert len(verdicts) == 13 and set(verdicts) <= {"PASS", "SKIP"}, result.stdout
    # The process kind lacks cgroups: exactly the OOM and resource-limit cases are skipped.
    assert [line.split()[1] for line in lines if line.startswith("SKIP")] == [
        "oom_kill_is_reported_where_supported:", "resource_limits_are_applied_where_supported:"]
    assert lines[-1] == "11 passed, 0 failed, 2 skipped"


def test_conformance_reports_a_broken_promise_and_an_unreachable_executor(python_executor, workdir):
    # An image that does exist, passed as the missing one: the executor rightly prepares it, so
    # the case expecting IMAGE_NOT_FOUND must fail, and the run with it.
    broken = conformance(python_executor, "--run", "missing_image", "--missing-image",
                         str(binary("hangar-test-backend")))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stdout.splitlines()[1].startswith("FAIL  missing_image_fails_with_image_not_found"), broken.stdout
    assert broken.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 skipped"

    unreachable = conformance(workdir / "nobody.sock")
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "did not handshake" in unreachable.stderr


def test_drone_runs_a_backend_on_the_python_executor(python_executor, workdir):
    controller = Process(binary("hangar-server"), "controller", "--listen", "127.0.0.1:0",
                         "--admin-listen", "127.0.0.1:0", "--data-dir", workdir / "controller", stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    drone = None
    try:
        url = None
        for line in controller.process.stdout:
            if "listening on" in line:
                url = line.split()[-1]
                break
        assert url, "the controller printed no URL"
        drone = Process(binary("hangar-drone"), "run", "--controller", url, "--name", "py-exec-drone",
                        "--executor-socket", python_executor, "--data-dir", workdir / "drone",
                        "--admin-listen", "127.0.0.1:0",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def hangar(*args) -> dict:
            out = subprocess.run([str(binary("hangar")), "--controller", url, "-o", "json", *map(str, args)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        def node_ready():
            nodes = hangar("nodes", "list", "--kind", "drone")["nodes"]
            return [n for n in nodes if n["name"] == "py-exec-drone" and n["state"] == "READY"]

        node = eventually("the drone READY", node_ready)[0]
        assert node["labels"]["hangar.dev/runtime"] == "process", node

        connected = hangar("connect", "--no-key", "--image", binary("hangar-test-backend"), "--wait")
        backend_id = connected["backend_id"]
        assert connected["state"] == "READY", connected

        # The backend runs on the Python executor: it lists it, and it answers HTTP at the address
        # the executor reports (this test has no proxy).
        with grpc.insecure_channel(f"unix://{python_executor}") as channel:
            stub = pb_grpc.ExecutorServiceStub(channel)
            stub.Handshake(pb.HandshakeRequest(protocol_major=1, client_name="test"), timeout=10)
            listed = stub.ListBackends(pb.ListBackendsRequest(), timeout=10).backends
            assert [(b.backend_id, b.state) for b in listed] == [(backend_id, pb.RUNTIME_STATE_RUNNING)]
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
            with direct.open(f"http://{listed[0].address}/", timeout=10) as response:
                assert (response.status, response.read().decode()) == (200, f"hangar-test-backend {backend_id}\n")

            hangar("backends", "terminate", backend_id)
            eventually("the backend TERMINATED", lambda: hangar("backends", "get", backend_id)["state"]
                       == "TERMINATED")
            eventually("the executor to have removed it",
                       lambda: not stub.ListBackends(pb.ListBackendsRequest(), timeout=10).backends)
    finally:
        if drone:
            drone.stop()
        controller.stop()
