"""The Python SDK against a real `hangar-server dev` (built binary, port 0, temp data dir)."""

from __future__ import annotations

import filecmp
import re
import os
import subprocess
import sys

import grpc
import pytest

from hangar_sdk import Client, HangarError, enum_name, node_pb2

from cluster import REPO, binary  # noqa: F401 - re-exported for the other test modules


@pytest.fixture(scope="module")
def controller_url(dev):
    return dev.url


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
        events = client.watch_nodes_stream(send_initial=True)
        added = []
        for event in events:
            if event.type != node_pb2.NODE_EVENT_TYPE_ADDED:
                break
            added.append(event)
        assert event.type == node_pb2.NODE_EVENT_TYPE_SNAPSHOT_END
        assert sorted(e.node.name for e in added) == ["dev-drone", "dev-proxy"]
        assert event.revision >= max(e.revision for e in added)
        events.close()


def test_the_resumable_watch_starts_with_a_whole_snapshot_then_live_changes(controller_url):
    with Client(controller_url) as client:
        [drone] = client.list_nodes(kinds=["drone"])
        events = client.watch_nodes(kinds=["drone"])
        init, applied, done = next(events), next(events), next(events)
        assert (init.type, applied.type, done.type) == ("INIT", "INIT_APPLY", "INIT_DONE")
        assert applied.node.id == drone.id and done.revision >= applied.node.revision
        drained = client.drain_node(drone.id)
        client.undrain_node(drone.id)
        modified = next(events)
        assert (modified.type, modified.revision, modified.node.draining) == ("MODIFIED", drained.revision, True)
        assert next(events).node.draining is False
        events.close()


def test_list_nodes_at_gives_the_revision_a_watch_can_start_from(controller_url):
    with Client(controller_url) as client:
        nodes, revision = client.list_nodes_at(page_size=1)
        assert sorted(n.name for n in nodes) == ["dev-drone", "dev-proxy"]
        drone = next(n for n in nodes if n.name == "dev-drone")
        events = client.watch_nodes(start_revision=revision)
        drained = client.drain_node(drone.id)
        client.undrain_node(drone.id)
        first = next(events)
        assert (first.type, first.revision) == ("MODIFIED", drained.revision), "no snapshot, no gap"
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


def test_declared_dependencies_cover_what_the_generated_code_needs():
    """The stubs refuse a protobuf or grpcio older than the ones that generated them, so
    pyproject.toml must ask for at least those (a fresh `pip install` otherwise breaks on import)."""
    generated = REPO / "client" / "python" / "generated" / "hangar"
    pyproject = (REPO / "client" / "python" / "pyproject.toml").read_text()

    def declared(package: str) -> tuple[int, ...]:
        match = re.search(rf'"{package}>=([0-9.]+)"', pyproject)
        assert match, f"pyproject.toml declares no minimum for {package}"
        return tuple(int(part) for part in match.group(1).split("."))

    for stub in generated.rglob("*_pb2.py"):
        found = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", stub.read_text())
        assert found, stub
        assert declared("protobuf") >= tuple(map(int, found.groups())), stub
    for stub in generated.rglob("*_pb2_grpc.py"):
        found = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", stub.read_text())
        assert found, stub
        assert declared("grpcio") >= tuple(map(int, found.group(1).split("."))), stub
