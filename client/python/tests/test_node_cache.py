"""NodeCache against a real `hangar-server dev` behind a TCP relay: it stays in step across a
controller restart by resuming (no re-list), re-lists when its revision was compacted
(OUT_OF_RANGE), and `wait_for` waits for what the caller asks."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster import DevServer, Relay, eventually
from hangar_sdk import aio
from hangar_sdk import Client, HangarError, NodeCache, NodeWatchEventType, RetryPolicy, node_pb2

#: Fast retries, so a test does not wait out the default backoff.
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)


def view(nodes) -> dict[str, tuple[int, int, bool]]:
    return {node.id: (node.revision, node.state, node.draining) for node in nodes}


@pytest.fixture
def relayed(tmp_path):
    """A dev server of its own (these tests restart it) and a relay in front of it."""
    server = DevServer(tmp_path / "dev").start()
    relay = Relay(server.address)
    try:
        yield server, relay
    finally:
        relay.close()
        server.stop()


def test_cache_resumes_across_a_controller_restart_without_relisting(relayed):
    server, relay = relayed
    with Client(relay.url) as client, NodeCache(client, retry=FAST) as cache:
        cache.wait_ready(timeout=15)
        assert sorted(n.name for n in cache.snapshot().values()) == ["dev-drone", "dev-proxy"]
        before = cache.revision

        # The controller stops (its drone and proxy go with it) and comes back on the same data;
        # the relay keeps the address, as a restarted controller behind a stable name would.
        server.restart()
        relay.restore(server.address)
        with Client(server.url) as direct:
            [drone] = direct.list_nodes(kinds=["drone"])
            cache.wait_for(lambda nodes: nodes[drone.id].state == node_pb2.NODE_STATE_READY
                           and nodes[drone.id].revision > before, timeout=30)
            eventually(lambda: view(cache.snapshot().values()) == view(direct.list_nodes())
                       and cache.revision >= direct.list_nodes_at()[1],
                       what="the cache matching a fresh listing")
        assert cache.reconnects >= 1, "the drop was noticed"
        assert cache.relists == 1, "resumed from its revision, not listed again"
        assert cache.revision > before


def test_cache_relists_when_its_revision_was_compacted(relayed):
    server, relay = relayed
    with Client(server.url) as direct, Client(relay.url) as client, \
            NodeCache(client, retry=FAST) as cache:
        cache.wait_ready(timeout=15)
        [drone] = direct.list_nodes(kinds=["drone"])
        relay.cut()
        # While the cache is away: changes, then compaction past its revision.
        direct.drain_node(drone.id)
        undrained = direct.undrain_node(drone.id)
        oldest = server.compact_history()
        assert oldest >= undrained.revision > cache.revision
        relay.restore()

        cache.wait_for(lambda nodes: nodes[drone.id].revision >= undrained.revision, timeout=30)
        assert cache.relists == 2, "OUT_OF_RANGE led to a fresh snapshot"
        assert view(cache.snapshot().values()) == view(direct.list_nodes())
        assert not cache.get(drone.id).draining


def test_the_watch_announces_the_relist_with_a_new_init(relayed):
    server, relay = relayed
    with Client(server.url) as direct, Client(relay.url) as client:
        nodes, revision = direct.list_nodes_at()
        [drone] = [n for n in nodes if n.kind == node_pb2.NODE_KIND_DRONE]
        direct.drain_node(drone.id)
        direct.undrain_node(drone.id)
        server.compact_history()
        events = client.watch_nodes(start_revision=revision, retry=FAST)
        seen = []
        for event in events:
            seen.append(event)
            if event.type is NodeWatchEventType.INIT_DONE:
                break
        events.close()
    reconnect, init, *applied, done = seen
    assert reconnect.type is NodeWatchEventType.RECONNECTING and reconnect.resume_from is None
    assert "OUT_OF_RANGE" in reconnect.cause and "REVISION_COMPACTED" in reconnect.cause
    assert init.type is NodeWatchEventType.INIT
    assert sorted(e.node.name for e in applied) == ["dev-drone", "dev-proxy"]
    assert done.revision >= revision + 2


def test_wait_for_returns_what_the_predicate_found_and_times_out_otherwise(dev):
    with Client(dev.url) as client, NodeCache(client, kinds=["drone"]) as cache:
        [drone] = cache.wait_for(lambda nodes: list(nodes.values()), timeout=15)
        assert drone.name == "dev-drone"

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            cache.wait_for(lambda nodes: nodes[drone.id].draining, timeout=0.5)
        assert time.monotonic() - started >= 0.5

        client.drain_node(drone.id)
        try:
            drained = cache.wait_for(lambda nodes: nodes[drone.id].draining and nodes[drone.id], timeout=15)
            assert drained.state == node_pb2.NODE_STATE_DRAINING
        finally:
            client.undrain_node(drone.id)
        cache.wait_for(lambda nodes: not nodes[drone.id].draining, timeout=15)
        # The filter holds: the dev proxy is not a drone.
        assert [n.name for n in cache.snapshot().values()] == ["dev-drone"]


def test_a_watch_the_server_refuses_stops_the_cache_and_wait_for_raises_it(dev):
    with Client(dev.url) as client:
        # Bookmarks more often than every 100 ms are refused (INVALID_ARGUMENT): no retry helps.
        cache = NodeCache(client, bookmark_interval=0.01)
        try:
            with pytest.raises(HangarError) as caught:
                cache.wait_ready(timeout=15)
        finally:
            cache.stop()
    assert caught.value.code.name == "INVALID_ARGUMENT"




def test_the_asyncio_cache_resumes_across_a_restart_and_waits_for_a_drain(relayed):
    server, relay = relayed

    async def scenario():
        async with aio.Client(relay.url) as client, aio.NodeCache(client, kinds=["drone"], retry=FAST) as cache:
            [drone] = (await cache.wait_ready(timeout=15)).snapshot().values()
            with pytest.raises(TimeoutError):
                await cache.wait_for(lambda nodes: nodes[drone.id].draining, timeout=0.3)
            server.restart()
            relay.restore(server.address)
            await client.drain_node(drone.id)
            drained = await cache.wait_for(lambda nodes: nodes[drone.id].draining and nodes[drone.id], timeout=30)
            await client.undrain_node(drone.id)
            return cache, drained

    cache, drained = asyncio.run(scenario())
    assert drained.state == node_pb2.NODE_STATE_DRAINING
    assert (cache.relists, cache.reconnects >= 1) == (1, True), "resumed, not listed again"
