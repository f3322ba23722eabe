"""The Python SDK's credentials: TLS and mTLS against a real `hangar-server controller` with a
real `hangar-drone run` attached, the bearer token on every call, and mistakes named clearly.

The certificates are made by the script in docs/security.md, run as written, so the guide's
commands are tested too."""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import time
from concurrent import futures

import grpc
import pytest

from hangar.v1 import node_pb2_grpc
from hangar_sdk import Client, HangarError, aio, enum_name, node_pb2

from test_sdk import REPO, binary

GUIDE = REPO / "docs" / "security.md"
MARKER = "<!-- docs/security.md:make-certificates"


def guide_script() -> str:
    """The guide's certificate script: the sh block right after its marker."""
    text = GUIDE.read_text()
    after = text[text.index(MARKER):]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, "the marker in docs/security.md is followed by an sh block"
    return match.group(1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("guide")
    subprocess.run(["sh", "-c", guide_script()], cwd=work, check=True, capture_output=True)
    return work / "hangar-pki"


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("other-ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=Other CA", "-keyout", "ca.key", "-out", "ca.pem"],
                   cwd=work, check=True, capture_output=True)
    return work / "ca.pem"


@pytest.fixture(scope="module")
def mtls_url(pki, tmp_path_factory):
    """A controller requiring client certificates from the guide's CA, and drone-a attached to
    it with its own."""
    data = tmp_path_factory.mktemp("controller")
    controller = subprocess.Popen(
        [binary("hangar-server"), "controller", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--data-dir", data,
         "--tls-cert", pki / "controller.pem", "--tls-key", pki / "controller.key",
         "--tls-client-ca", pki / "ca.pem"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    drone = None
    try:
        line = controller.stdout.readline()
        prefix = "hangar-server controller listening on "
        assert line.startswith(prefix), f"unexpected first line: {line!r}"
        url = line[len(prefix):].strip()
        drone = subprocess.Popen(
            [binary("hangar-drone"), "run", "--controller", url, "--name", "drone-a", "--data-dir", data / "drone",
             "--tls-ca", pki / "ca.pem", "--tls-cert", pki / "drone-a.pem", "--tls-key", pki / "drone-a.key"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        yield url
    finally:
        for process in (drone, controller):
            if process is not None:
                process.terminate()
                process.wait(timeout=15)


def ready_drones(client: Client, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(n.name for n in client.list_nodes(kinds=["drone"], states=["ready"]))
        if names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def test_the_sdk_lists_nodes_over_mtls(mtls_url, pki):
    assert mtls_url.startswith("https://")
    with Client(mtls_url, tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "alice.pem"),
                tls_key=str(pki / "alice.key")) as client:
        assert ready_drones(client) == ["drone-a"]


def test_the_asyncio_client_lists_nodes_over_mtls(mtls_url, pki):
    async def drones():
        async with aio.Client(mtls_url, tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "alice.pem"),
                              tls_key=str(pki / "alice.key")) as client:
            cache = aio.NodeCache(client, kinds=["drone"], states=["ready"])
            async with cache:
                nodes = await cache.wait_for(lambda nodes: list(nodes.values()), timeout=30)
            return [node.name for node in nodes]

    assert asyncio.run(drones()) == ["drone-a"]


def test_without_a_client_certificate_the_asyncio_client_is_refused(mtls_url, pki):
    async def attempt():
        async with aio.Client(mtls_url, timeout=5, tls_ca=str(pki / "ca.pem")) as client:
            await client.list_nodes()

    with pytest.raises(HangarError) as caught:
        asyncio.run(attempt())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_from_env_reads_the_same_variables_as_the_cli(mtls_url, pki, monkeypatch):
    monkeypatch.setenv("HANGAR_CONTROLLER", mtls_url)
    monkeypatch.setenv("HANGAR_TLS_CA", str(pki / "ca.pem"))
    monkeypatch.setenv("HANGAR_TLS_CERT", str(pki / "alice.pem"))
    monkeypatch.setenv("HANGAR_TLS_KEY", str(pki / "alice.key"))
    monkeypatch.setenv("HANGAR_TOKEN", "")  # empty: unset
    with Client.from_env() as client:
        [drone] = client.list_nodes(kinds=["drone"])
        assert enum_name(node_pb2.NodeKind, drone.kind) == "DRONE"


def test_without_a_client_certificate_the_controller_refuses(mtls_url, pki):
    with Client(mtls_url, tls_ca=str(pki / "ca.pem"), timeout=5) as client:
        with pytest.raises(HangarError) as caught:
            client.list_nodes()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_controller_certificate_from_an_unknown_ca_is_refused(mtls_url, pki, other_ca):
    with Client(mtls_url, tls_ca=str(other_ca), tls_cert=str(pki / "alice.pem"), tls_key=str(pki / "alice.key"),
                timeout=5) as client:
        with pytest.raises(HangarError) as caught:
            client.list_nodes()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


class RecordingNodes(node_pb2_grpc.NodeServiceServicer):
    """A NodeService that notes the authorization header of every call."""

    def __init__(self):
        self.seen = []

    def _note(self, context):
        self.seen.append(dict(context.invocation_metadata()).get("authorization"))

    def ListNodes(self, request, context):
        self._note(context)
        return node_pb2.ListNodesResponse()

    def WatchNodes(self, request, context):
        self._note(context)
        yield node_pb2.WatchNodesResponse(event=node_pb2.NodeEvent(type=node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END))


@pytest.fixture
def recording_server():
    nodes = RecordingNodes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    node_pb2_grpc.add_NodeServiceServicer_to_server(nodes, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", nodes
    server.stop(grace=None)


def test_the_token_goes_with_every_call_on_a_plain_channel(recording_server, tmp_path):
    url, nodes = recording_server
    with Client(url, token="s3cret-token-value") as client:
        client.list_nodes()
        events = client.watch_nodes()
        assert [next(events).type, next(events).type] == ["INIT", "INIT_DONE"]
        events.close()
    token_file = tmp_path / "token"
    token_file.write_text("  from-a-file\n")
    with Client(url, token_file=str(token_file)) as client:
        client.list_nodes()
    with Client(url) as client:
        client.list_nodes()
    assert nodes.seen == ["Bearer s3cret-token-value", "Bearer s3cret-token-value", "Bearer from-a-file", None]


def test_the_asyncio_client_sends_the_token_on_unary_calls_and_streams(recording_server):
    url, nodes = recording_server

    async def scenario():
        async with aio.Client(url, token="s3cret-token-value") as client:
            await client.list_nodes()
            events = client.watch_nodes()
            assert [(await events.__anext__()).type, (await events.__anext__()).type] == ["INIT", "INIT_DONE"]
            await events.aclose()
        async with aio.Client(url) as client:
            await client.list_nodes()

    asyncio.run(scenario())
    assert nodes.seen == ["Bearer s3cret-token-value", "Bearer s3cret-token-value", None]


def test_mistakes_are_named(tmp_path, pki):
    with pytest.raises(ValueError, match="use an https:// URL"):
        Client("http://127.0.0.1:7070", tls_ca=str(pki / "ca.pem"))
    with pytest.raises(ValueError, match="cannot read the CA certificate /no/such/ca.pem"):
        Client("https://127.0.0.1:7070", tls_ca="/no/such/ca.pem")
    with pytest.raises(ValueError, match="tls_cert is set without tls_key"):
        Client("https://127.0.0.1:7070", tls_cert=str(pki / "alice.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ValueError, match=f"{garbage} is not PEM"):
        Client("https://127.0.0.1:7070", tls_ca=str(garbage))
    with pytest.raises(ValueError, match="not both"):
        Client("http://127.0.0.1:7070", token="a", token_file=str(garbage))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"the token in {empty} is empty"):
        Client("http://127.0.0.1:7070", token_file=str(empty))
