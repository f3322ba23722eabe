"""``watch_backends`` against a real `hangar-server dev` (process runtime, the demo backend):
the snapshot, SNAPSHOT_END and a backend's whole life in order; a resume across a controller
restart that neither repeats nor loses a change; a filter that reports a backend leaving it as
REMOVED; and the listing revision that list-then-watch starts from."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Callable, Iterator

import pytest

from cluster import DevServer, Relay
from hangar_sdk import (Backend, BackendState, BackendWatchEvent, BackendWatchEventType, Client, RetryPolicy,
                        WatchEventType, aio)

T = BackendWatchEventType
#: Fast retries, so a test does not wait out the default backoff.
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
ORDER = list(BackendState)
LIVE = (T.ADDED, T.MODIFIED, T.REMOVED)


class Events:
    """A blocking watch read by a thread into a queue, so a test can wait for the next event with
    a timeout instead of hanging on a watch that delivers nothing."""

    def __init__(self, events: Iterator[BackendWatchEvent]):
        self._queue: queue.Queue = queue.Queue()
        self.seen: list[BackendWatchEvent] = []
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: Iterator[BackendWatchEvent]) -> None:
        try:
            for event in events:
                self._queue.put(event)
        except BaseException as error:  # noqa: BLE001 - the closed client ends it at teardown
            self._queue.put(error)

    def next(self, timeout: float = 30.0) -> BackendWatchEvent:
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch event within {timeout} s; seen: {self.seen}") from None
        if isinstance(event, BaseException):
            raise event
        self.seen.append(event)
        return event

    def until(self, condition: Callable[[BackendWatchEvent], bool], timeout: float = 60.0) -> BackendWatchEvent:
        while True:
            event = self.next(timeout)
            if condition(event):
                return event


def of(backend_id: str, *states: BackendState) -> Callable[[BackendWatchEvent], bool]:
    return lambda e: e.type in LIVE and e.backend.id == backend_id and (not states or e.backend.state in states)


def assert_no_repeat(events: list[BackendWatchEvent]) -> None:
    revisions = [e.revision for e in events if e.type in LIVE]
    assert revisions == sorted(set(revisions)), f"revisions repeat or go back: {revisions}"


def life(events: list[BackendWatchEvent], backend_id: str) -> list[BackendState]:
    return [e.backend.state for e in events if e.type in LIVE and e.backend.id == backend_id]


def history(client: Client, backend_id: str) -> list[BackendState]:
    """The backend's states as its own history (WatchBackend) has them."""
    return [status.state for status in client.watch_backend(backend_id, timeout=30)]


def test_a_watch_sees_the_snapshot_then_every_state_of_a_backends_life_in_order(dev):
    with Client(dev.url) as client, Client(dev.url) as watcher:
        before = client.connect("wb-life/before", image="hangar-demo")
        events = Events(watcher.watch_backends(key_namespace="wb-life", retry=FAST))
        init, applied, done = events.next(), events.next(), events.next()
        assert (init.type, applied.type, done.type) == (T.INIT, T.INIT_APPLY, T.INIT_DONE)
        assert isinstance(applied.backend, Backend) and applied.backend.id == before.id
        assert applied.backend.state is BackendState.READY and str(applied.backend.key) == "wb-life/before"
        assert done.revision > 0

        backend = client.connect("wb-life/during", image="hangar-demo", wait=False)
        events.until(of(backend.id, BackendState.READY))
        client.terminate(backend.id)
        events.until(of(backend.id, BackendState.TERMINATED))
        client.terminate(before.id, hard=True, wait=True)
        events.until(of(before.id, BackendState.TERMINATED))

        seen = events.seen[3:]
        first = next(e for e in seen if e.backend.id == backend.id)
        assert first.type is T.ADDED and first.revision > done.revision
        assert {e.type for e in seen if e.backend.id == backend.id} - {T.ADDED} == {T.MODIFIED}
        states = life(seen, backend.id)
        assert states == history(client, backend.id), "every state of its life, no gap, none twice"
        assert states == sorted(states, key=ORDER.index) and states[-1] is BackendState.TERMINATED
        assert life(seen, before.id)[-1] is BackendState.TERMINATED
        assert_no_repeat(seen)


def test_list_backends_at_gives_the_revision_a_watch_continues_from(dev):
    with Client(dev.url) as client, Client(dev.url) as watcher:
        listed = client.connect("wb-list/listed", image="hangar-demo")
        backends, revision = client.list_backends_at(page_size=1, key_namespace="wb-list")
        assert [b.id for b in backends] == [listed.id] and revision > 0
        client.terminate(listed.id, hard=True, wait=True)
        events = Events(watcher.watch_backends(start_revision=revision, key_namespace="wb-list", retry=FAST))
        # No snapshot: the changes after the listing, from the first one on.
        events.until(of(listed.id, BackendState.TERMINATED))
        assert all(e.type is T.MODIFIED for e in events.seen), events.seen
        states = history(client, listed.id)
        assert life(events.seen, listed.id) == states[states.index(BackendState.READY) + 1:]


@pytest.fixture
def relayed(tmp_path):
    """A dev server of its own (this test restarts it) and a relay in front of it."""
    server = DevServer(tmp_path / "dev").start()
    relay = Relay(server.address)
    try:
        yield server, relay
    finally:
        relay.close()
        server.stop()


def test_a_watch_resumes_across_a_controller_restart_without_a_duplicate(relayed):
    server, relay = relayed
    client = Client(relay.url)
    try:
        with Client(server.url) as direct:
            backend = direct.connect("wb-restart/a", image="hangar-demo")
            events = Events(client.watch_backends(key_namespace="wb-restart", retry=FAST))
            events.until(lambda e: e.type is T.INIT_DONE)
            # Changes the watch misses while it is cut off: a second backend's whole life.
            relay.cut()
            missed = direct.connect("wb-restart/missed", image="hangar-demo")
            direct.terminate(missed.id, wait=True)
            missed_states = history(direct, missed.id)
            last_seen = events.seen[-1].revision
        # Then the controller restarts on the same data (its drone with it: `a` is LOST) and the
        # relay points at it again, as a restarted controller behind a stable name would be.
        server.restart()
        relay.restore(server.address)
        with Client(server.url) as direct:
            events.until(of(backend.id, BackendState.TERMINATED))
            after = direct.connect("wb-restart/after", image="hangar-demo", wait=False)
            events.until(of(after.id, BackendState.READY))
            a_states = history(direct, backend.id)
            direct.terminate(after.id, hard=True, wait=True)
    finally:
        client.close()

    reconnects = [e for e in events.seen if e.type is T.RECONNECTING]
    assert reconnects and reconnects[0].resume_from == last_seen, "resumed from where it was"
    assert [e.type for e in events.seen].count(T.INIT) == 1, "resumed, not listed again"
    live = [e for e in events.seen if e.type in LIVE]
    assert_no_repeat(live)
    assert life(live, missed.id) == missed_states, "what happened while away is replayed, once"
    assert life(live, backend.id) == a_states[a_states.index(BackendState.READY) + 1:], \
        "after READY (in the snapshot), each state once"
    assert a_states[-1] is BackendState.TERMINATED


def test_a_state_and_namespace_filter_reports_a_backend_leaving_it_as_removed(dev):
    async def scenario() -> list[BackendWatchEvent]:
        async with aio.Client(dev.url) as client, aio.Client(dev.url) as watcher:
            events = watcher.watch_backends(states=["ready"], key_namespace="wb-filter", retry=FAST)

            async def until(condition) -> list[BackendWatchEvent]:
                seen = []
                while not seen or not condition(seen[-1]):
                    seen.append(await asyncio.wait_for(events.__anext__(), 60))
                return seen

            seen = await until(lambda e: e.type is WatchEventType.INIT_DONE)
            other = await client.connect("wb-other/outside", image="hangar-demo")
            inside = await client.connect("wb-filter/inside", image="hangar-demo")
            seen += await until(of(inside.id))
            await client.terminate(inside.id)
            seen += await until(of(inside.id))
            await client.terminate(other.id, hard=True, wait=True)
            await client.terminate(inside.id, wait=True)
            await events.aclose()
            return seen, inside, other

    seen, inside, other = asyncio.run(scenario())
    assert [e.type for e in seen] == [T.INIT, T.INIT_DONE, T.ADDED, T.REMOVED], seen
    added, removed = seen[2], seen[3]
    assert added.backend.id == removed.backend.id == inside.id
    assert added.backend.state is BackendState.READY, "it entered the filter when it became READY"
    assert removed.backend.state in (BackendState.TERMINATING, BackendState.TERMINATED), \
        "REMOVED carries the status that took it out of the filter"
    assert removed.revision > added.revision
    assert other.id not in {e.backend.id for e in seen if e.backend}
