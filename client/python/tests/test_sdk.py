"""The Python SDK against a real `hangar-server dev` (built binary, port 0, temp data dir)."""

from __future__ import annotations

import filecmp
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

from hangar_sdk import Client, HangarError, enum_name, node_pb2

REPO = pathlib.Path(__file__).resolve().parents[3]


def binary(name: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get("HANGAR_BIN_DIR", REPO / "target" / "debug")) / name
    if not path.exists():
        pytest.fail(f"{path} is not built; run `cargo build --workspace --bins` first (scripts/test does)")
    return path


@pytest.fixture(scope="module")
def controller_url():
    with tempfile.TemporaryDirectory() as data:
        process = subprocess.Popen(
            [binary("hangar-server"), "dev", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0",
             "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            url = None
            deadline = time.monotonic() + 60
            for line in process.stdout:
                words = line.split()
                if words[:1] == ["controller"]:
                    url = words[1]
                if "Stop with Ctrl-C" in line or time.monotonic() > deadline:
                    break
            assert url, "hangar-server dev printed no controller URL"
            yield url
        finally:
            process.terminate()
            process.wait(timeout=15)


def test_list_nodes_shows_the_dev_drone_ready(controller_url):
    with Client(controller_url) as client:
        nodes = client.list_nodes(kinds=["drone"], states=["ready"])
        assert [n.name for n in nodes] == ["dev-drone"]
        assert nodes[0].resources.memory_total_bytes > 0
        assert client.get_node(nodes[0].id).name == "dev-drone"


def test_unknown_node_raises_not_found_with_its_reason(controller_url):
    with Client(controller_url) as client:
        with pytest.raises(HangarError) as caught:
            client.get_node("no-such-node")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "NODE_NOT_FOUND"
    assert caught.value.metadata["id"] == "no-such-node"


def test_page_size_over_the_limit_names_the_field(controller_url):
    with Client(controller_url) as client:
        with pytest.raises(HangarError) as caught:
            client.list_nodes_page(page_size=5000)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in caught.value.violations] == ["page_size"]


def test_watch_sends_the_snapshot_then_snapshot_end(controller_url):
    with Client(controller_url) as client:
        events = client.watch_nodes(send_initial=True)
        added = []
        for event in events:
            if event.type != node_pb2.NODE_EVENT_TYPE_ADDED:
                break
            added.append(event)
        assert event.type == node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END
        assert sorted(e.node.name for e in added) == ["dev-drone", "dev-proxy"]
        assert event.revision >= max(e.revision for e in added)
        events.close()


def test_undrain_makes_the_drained_dev_drone_ready_again(controller_url):
    with Client(controller_url) as client:
        [drone] = client.list_nodes(kinds=["drone"])
        drained = client.drain_node(drone.id)
        assert (enum_name(node_pb2.NodeState, drained.state), drained.draining) == ("DRAINING", True)
        undrained = client.undrain_node(drone.id)
        assert (enum_name(node_pb2.NodeState, undrained.state), undrained.draining) == ("READY", False)
        assert not undrained.HasField("drain_deadline")
        assert undrained.revision > drained.revision
        # Again: a success that changes nothing.
        assert client.undrain_node(drone.id).revision == undrained.revision
        with pytest.raises(HangarError) as caught:
            client.undrain_node("no-such-node")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "NODE_NOT_FOUND"


def test_enum_names_are_the_short_names_the_cli_prints():
    assert enum_name(node_pb2.NodeState, node_pb2.NODE_STATE_DRAINING) == "DRAINING"
    assert enum_name(node_pb2.NodeKind, node_pb2.NODE_KIND_PROXY) == "PROXY"
    assert enum_name(node_pb2.NodeEventType, node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END) == "SNAPSHOT_END"
    assert enum_name(node_pb2.NodeState, 42) == "42"


def test_generated_code_matches_the_protos(tmp_path):
    """The committed stubs are what scripts/gen-python makes from proto/ today."""
    out = tmp_path / "generated"
    subprocess.run([REPO / "scripts" / "gen-python", out], check=True, cwd=REPO,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)
    committed = REPO / "client" / "python" / "generated"
    mismatches = []
    for path in sorted(out.rglob("*")):
        if path.is_file():
            twin = committed / path.relative_to(out)
            if not twin.exists() or not filecmp.cmp(path, twin, shallow=False):
                mismatches.append(str(path.relative_to(out)))
    assert not mismatches, f"regenerate with scripts/gen-python: {mismatches}"
