"""Backends through the SDK, blocking and asyncio, against a real `hangar-server dev` running the
demo backend on the process runtime: the whole lifecycle by key, through the real proxy."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest

from cluster import Relay
from hangar_sdk import Backend, BackendKey, BackendState, BackendTerminated, Client, HangarError, aio

ORDER = list(BackendState)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def assert_forward_only(states: list[BackendState]) -> None:
    assert states == sorted(states, key=ORDER.index) and len(set(states)) == len(states), states


def test_a_backend_by_key_from_connect_to_terminated(dev):
    with Client(dev.url) as client:
        backend = client.connect("sdk/lifecycle", image="hangar-demo", env={"MODE": "test"})
        assert isinstance(backend, Backend)
        assert backend.state is BackendState.READY and backend.state == "READY"
        assert backend.spawned and backend.token and backend.url.startswith(dev.proxy_url)
        assert backend.key == BackendKey(namespace="sdk", name="lifecycle")
        assert "MODE" in backend.proto.spawn_config.executable.env  # its value is never shown

        again = client.connect("sdk/lifecycle")
        assert (again.id, again.spawned, again.fencing_token) == (backend.id, False, backend.fencing_token)

        page = fetch(again.url)
        assert backend.id in page and "sdk/lifecycle" in page

        got = client.get_backend(backend.id)
        assert (got.id, got.state, got.url, got.token) == (backend.id, BackendState.READY, "", "")
        assert got.drone_id and got.address and got.created_at is not None
        assert backend.id in [b.id for b in client.list_backends(states=["ready"], key_namespace="sdk")]

        ended = client.terminate(backend.id, wait=True)
        assert ended.state is BackendState.TERMINATED
        assert ended.status.termination_reason == "EXTERNAL"
        states = [status.state for status in client.watch_backend(backend.id, timeout=10)]
        assert states[-1] is BackendState.TERMINATED and BackendState.READY in states
        assert_forward_only(states)


def test_the_same_lifecycle_in_asyncio(dev):
    async def scenario():
        async with aio.Client(dev.url) as client:
            nodes = await client.list_nodes(kinds=["drone"])
            assert [n.name for n in nodes] == ["dev-drone"]
            backend = await client.connect(BackendKey(namespace="sdk", name="aio"), image="hangar-demo")
            assert backend.state is BackendState.READY and backend.spawned
            again = await client.connect("sdk/aio")
            assert (again.id, again.spawned) == (backend.id, False)
            page = await asyncio.get_running_loop().run_in_executor(None, fetch, again.url)
            assert backend.id in page
            assert (await client.get_backend(backend.id)).state is BackendState.READY
            ended = await client.terminate(backend.id, hard=True, wait=True)
            assert ended.state is BackendState.TERMINATED and ended.status.termination_kind == "HARD"
            states = [status.state async for status in client.watch_backend(backend.id, timeout=10)]
            assert states[-1] is BackendState.TERMINATED
            assert_forward_only(states)
            with pytest.raises(HangarError) as caught:
                await client.get_backend("no-such-backend")
            return caught.value

    error = asyncio.run(scenario())
    assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "BACKEND_NOT_FOUND"


def test_watch_backend_resumes_after_a_dropped_stream_without_repeating_a_state(dev):
    relay = Relay(dev.address)
    try:
        with Client(dev.url) as direct, Client(relay.url) as client:
            backend = direct.connect("sdk/resume", image="hangar-demo")
            statuses = client.watch_backend(backend.id, timeout=60)
            states = []
            while not states or states[-1] is not BackendState.READY:
                states.append(next(statuses).state)
            relay.cut()
            direct.terminate(backend.id)
            relay.restore()
            states += [status.state for status in statuses]
    finally:
        relay.close()
    assert relay.connections >= 2, "the watch reconnected"
    assert states[-1] is BackendState.TERMINATED
    assert_forward_only(states)


def test_list_backends_reads_every_page(dev):
    with Client(dev.url) as client:
        ids = {client.connect(None, image="hangar-demo", wait=False, labels={"test": "pages"}).id for _ in range(3)}
        listed = client.list_backends(page_size=1, key_namespace="")
        assert ids <= {b.id for b in listed}
        assert len(client.list_backends_page(page_size=1).backends) == 1
        for backend_id in ids:
            client.terminate(backend_id, hard=True, wait=True)


def test_connect_without_an_image_finds_only_a_live_backend(dev):
    with Client(dev.url) as client:
        with pytest.raises(HangarError) as caught:
            client.connect("sdk/nobody-started-this")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "BACKEND_NOT_FOUND"


def test_a_backend_that_cannot_start_raises_backend_terminated(dev):
    with Client(dev.url) as client:
        # A program that exits at once: it never answers HTTP, so it ends before READY.
        with pytest.raises(BackendTerminated) as caught:
            client.connect("sdk/exits", image="/bin/false", wait_timeout=60)
    status = caught.value.backend.status
    assert status.state is BackendState.TERMINATED and status.termination_reason, status


def test_keys_are_read_as_the_cli_reads_them():
    assert BackendKey.parse("docs/doc-1@v2") == BackendKey(name="doc-1", namespace="docs", tag="v2")
    assert str(BackendKey.parse("doc-1")) == "default/doc-1"
    for bad in ("a/b/c", "/x", "x@", "a b", ""):
        with pytest.raises(ValueError):
            BackendKey.parse(bad)
