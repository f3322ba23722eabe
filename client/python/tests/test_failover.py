"""Both clients given several controllers, against a real `hangar-server dev`: a dead address
(a port nothing listens on) or a hung one (a TCP listener that accepts and never speaks
HTTP/2) before the live controller. Idempotent calls go past it, a call with effects is not
repeated, and watches and the node cache resume on the next controller when their stream
breaks. The exact order of attempts and the cooldowns are in test_failover_rules.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import pytest

from cluster import Relay, eventually
from hangar_sdk import BackendState, Client, HangarError, NodeCache, NodeWatchEventType, RetryPolicy, aio

FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
#: The per-call deadline of the hung-controller tests.
DEADLINE = 1.0


def dead_url() -> str:
    """A loopback port with nothing listening on it (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def address(url: str) -> str:
    return url.removeprefix("http://")


class Hung:
    """A controller that hangs: TCP connections are accepted and held, and never answered."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self._listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hung():
    controller = Hung()
    yield controller
    controller.close()


def test_list_get_and_keyed_connect_go_past_a_dead_first_controller(dev):
    with Client([dead_url(), dev.url]) as client:
        [drone] = client.list_nodes(kinds=["drone"])
        assert client.address == address(dev.url), "the dead one cools down, the live one is preferred"
        assert client.get_node(drone.id).name == "dev-drone"
        backend = client.connect("failover/keyed", image="hangar-demo")
        assert backend.state is BackendState.READY
        assert client.get_backend(backend.id).id == backend.id
        assert client.terminate(backend.id, hard=True, wait=True).state is BackendState.TERMINATED


def test_the_same_through_the_asyncio_client(dev):
    async def scenario():
        async with aio.Client(f"{dead_url()},{dev.url}") as client:
            [drone] = await client.list_nodes(kinds=["drone"])
            assert client.address == address(dev.url)
            assert (await client.get_node(drone.id)).name == "dev-drone"
            backend = await client.connect("failover/keyed-aio", image="hangar-demo")
            assert backend.state is BackendState.READY
            assert (await client.get_backend(backend.id)).id == backend.id
            ended = await client.terminate(backend.id, hard=True, wait=True)
            assert ended.state is BackendState.TERMINATED
    asyncio.run(scenario())


def test_a_keyless_connect_to_a_dead_controller_raises_and_the_next_call_goes_to_the_live_one(dev):
    labels = {"test": "failover-keyless"}
    with Client(f"{dead_url()},{dev.url}") as client:
        with pytest.raises(HangarError) as caught:
            client.connect(None, image="hangar-demo", wait=False, labels=labels)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        # Not repeated on the live controller: no backend was started.
        assert client.list_backends(labels=labels) == []
        assert client.address == address(dev.url)
        backend = client.connect(None, image="hangar-demo", wait=False, labels=labels)
        assert [b.id for b in client.list_backends(labels=labels)] == [backend.id]
        client.terminate(backend.id, hard=True)


def test_a_keyless_connect_in_asyncio_likewise(dev):
    labels = {"test": "failover-keyless-aio"}

    async def scenario():
        async with aio.Client([dead_url(), dev.url]) as client:
            with pytest.raises(HangarError) as caught:
                await client.connect(None, image="hangar-demo", wait=False, labels=labels)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert await client.list_backends(labels=labels) == []
            assert client.address == address(dev.url)
            backend = await client.connect(None, image="hangar-demo", wait=False, labels=labels)
            assert [b.id for b in await client.list_backends(labels=labels)] == [backend.id]
            await client.terminate(backend.id, hard=True)
    asyncio.run(scenario())


def test_an_idempotent_call_to_a_hung_controller_fails_over_at_its_deadline(dev, hung):
    with Client([hung.url, dev.url], timeout=DEADLINE) as client:
        started = time.monotonic()
        [drone] = client.list_nodes(kinds=["drone"])
        took = time.monotonic() - started
        assert drone.name == "dev-drone"
        assert hung.held, "the hung controller was asked first"
        assert DEADLINE * 0.9 <= took < DEADLINE + 5, f"failed over after {took:.2f} s"
        # It cools down: the next call goes to the live controller at once.
        started = time.monotonic()
        client.list_nodes(kinds=["drone"])
        assert time.monotonic() - started < DEADLINE * 0.9
        # Once its cooldown is over it is asked first again, and a call with effects to it is not
        # repeated elsewhere: the deadline reaches the caller.
        eventually(lambda: client.address == address(hung.url), timeout=5, what="the hung one's cooldown to end")
        with pytest.raises(HangarError) as caught:
            client.drain_node(drone.id)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not client.get_node(drone.id).draining


def test_an_idempotent_asyncio_call_to_a_hung_controller_fails_over_at_its_deadline(dev, hung):
    async def scenario():
        async with aio.Client(f"{hung.url},{dev.url}", timeout=DEADLINE) as client:
            started = time.monotonic()
            assert [n.name for n in await client.list_nodes(kinds=["drone"])] == ["dev-drone"]
            took = time.monotonic() - started
            assert hung.held, "the hung controller was asked first"
            assert DEADLINE * 0.9 <= took < DEADLINE + 5, f"failed over after {took:.2f} s"
            started = time.monotonic()
            await client.list_nodes(kinds=["drone"])
            assert time.monotonic() - started < DEADLINE * 0.9
    asyncio.run(scenario())


def test_the_node_cache_fills_from_the_live_controller_behind_a_dead_one(dev):
    with Client([dead_url(), dev.url]) as client, NodeCache(client, kinds=["drone"], retry=FAST) as cache:
        cache.wait_for(lambda nodes: [n for n in nodes.values() if n.name == "dev-drone"], timeout=15)
        assert cache.reconnects >= 1, "its first stream went to the dead controller"

    async def scenario():
        async with aio.Client([dead_url(), dev.url]) as client:
            async with aio.NodeCache(client, kinds=["drone"], retry=FAST) as cache:
                await cache.wait_for(lambda nodes: [n for n in nodes.values() if n.name == "dev-drone"], timeout=15)
                assert cache.reconnects >= 1
    asyncio.run(scenario())


def next_event(events, types, deadline: float):
    """The next event of one of ``types`` (bookmarks keep the loop turning); fails after the
    deadline."""
    for event in events:
        if event.type in types:
            return event
        assert time.monotonic() < deadline, f"no {types} event in time"
    raise AssertionError("the watch ended")


def test_a_node_watch_resumes_on_the_next_controller_from_the_last_revision(dev):
    """Kept last in this module: it drains the dev drone (and undrains it)."""
    relay = Relay(dev.address)
    try:
        with Client([relay.url, dev.url]) as client, Client(dev.url) as direct:
            events = client.watch_nodes(kinds=["drone"], bookmark_interval=0.5, retry=FAST)
            deadline = time.monotonic() + 30
            done = next_event(events, {NodeWatchEventType.INIT_DONE}, deadline)
            relay.cut()
            reconnect = next_event(events, {NodeWatchEventType.RECONNECTING}, deadline)
            assert reconnect.controller == address(dev.url)
            assert reconnect.resume_from is not None and reconnect.resume_from >= done.revision
            [drone] = direct.list_nodes(kinds=["drone"])
            direct.drain_node(drone.id)
            try:
                changed = next_event(events, {NodeWatchEventType.MODIFIED, NodeWatchEventType.INIT}, deadline)
                assert changed.type is NodeWatchEventType.MODIFIED, "resumed, not listed again"
                assert changed.node.id == drone.id and changed.node.draining
                assert changed.revision > reconnect.resume_from
            finally:
                events.close()
                direct.undrain_node(drone.id)
    finally:
        relay.close()


def test_an_asyncio_backend_watch_resumes_on_the_next_controller(dev):
    relay = Relay(dev.address)

    async def scenario():
        async with aio.Client([relay.url, dev.url]) as client, aio.Client(dev.url) as direct:
            events = client.watch_backends(key_namespace="failover-watch", bookmark_interval=0.5, retry=FAST)
            try:
                async def next_of(types):
                    async for event in events:
                        if event.type in types:
                            return event
                done = await asyncio.wait_for(next_of({NodeWatchEventType.INIT_DONE}), 30)
                relay.cut()
                reconnect = await asyncio.wait_for(next_of({NodeWatchEventType.RECONNECTING}), 30)
                assert reconnect.controller == address(dev.url)
                assert reconnect.resume_from is not None and reconnect.resume_from >= done.revision
                backend = await direct.connect("failover-watch/one", image="hangar-demo", wait=False)
                added = await asyncio.wait_for(next_of({NodeWatchEventType.ADDED, NodeWatchEventType.INIT}), 30)
                assert added.type is NodeWatchEventType.ADDED, "resumed, not listed again"
                assert added.backend.id == backend.id and added.revision > reconnect.resume_from
                await direct.terminate(backend.id, hard=True)
            finally:
                await events.aclose()
    try:
        asyncio.run(scenario())
    finally:
        relay.close()
