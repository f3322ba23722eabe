"""Failover between several controllers, without a server: both clients with fake stubs in
place of their channels' (recording which controller each call reached), so the order of
attempts, the cooldowns and what counts as "did not answer" are seen exactly. The same scenarios
against a real `hangar-server dev` are in test_failover.py."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from cluster import eventually
from hangar_sdk import Client, HangarError, aio, node_pb2
from hangar_sdk._failover import FIRST_COOLDOWN, MAX_COOLDOWN, Health, not_answered, try_order

URLS = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3"
A, B, C = 0, 1, 2


def status_bin(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="hangar"))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail]).SerializeToString()


class FakeRpcError(grpc.RpcError):
    """What a blocking stub raises: a ``grpc.RpcError`` that is also a call."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = ""):
        self._code, self._message = code, message
        self._trailing = (("grpc-status-details-bin", status_bin(code, message, reason)),) if reason else ()

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailing


class World:
    """Three controllers, each answering as ``behaviour[i]`` says: ``"ok"``, or an error
    ``(code, reason)``; ``calls`` records which controller each attempt reached."""

    def __init__(self):
        self.behaviour = ["ok", "ok", "ok"]
        self.calls: list[int] = []

    def attempt(self, index: int, method: str):
        self.calls.append(index)
        behaviour = self.behaviour[index]
        if behaviour == "ok":
            return node_pb2.ListNodesResponse(revision=index) if method == "ListNodes" else \
                node_pb2.DrainNodeResponse(node=node_pb2.Node(id=str(index)))
        return behaviour

    def take(self) -> list[int]:
        calls, self.calls = self.calls, []
        return calls


DEAD = (grpc.StatusCode.UNAVAILABLE, "")


class BlockingStub:
    def __init__(self, world: World, index: int):
        self.world, self.index = world, index

    def _call(self, method):
        def call(request, timeout=None, metadata=None):
            result = self.world.attempt(self.index, method)
            if isinstance(result, tuple):
                raise FakeRpcError(result[0], f"controller {self.index}: {result[0].name}", result[1])
            return result
        return call

    def __getattr__(self, method):
        return self._call(method)


class AioStub(BlockingStub):
    def _call(self, method):
        async def call(request, timeout=None, metadata=None):
            result = self.world.attempt(self.index, method)
            if isinstance(result, tuple):
                code, reason = result
                message = f"controller {self.index}: {code.name}"
                trailing = grpc.aio.Metadata(
                    *((("grpc-status-details-bin", status_bin(code, message, reason)),) if reason else ()))
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message)
            return result
        return call


def faked(client, stub) -> World:
    world = World()
    for index, controller in enumerate(client._controllers.items):
        controller.nodes = stub(world, index)
    return world


class Blocking:
    """The scenario's calls on the blocking client, as coroutines, so one scenario drives both."""

    def __init__(self):
        self.client = Client(URLS, timeout=1)
        self.world = faked(self.client, BlockingStub)

    async def list(self):
        return self.client.list_nodes_page()

    async def drain(self):
        return self.client.drain_node("drone")

    async def close(self):
        self.client.close()


class Asyncio(Blocking):
    def __init__(self):
        self.client = aio.Client(URLS, timeout=1)
        self.world = faked(self.client, AioStub)

    async def list(self):
        return await self.client.list_nodes_page()

    async def drain(self):
        return await self.client.drain_node("drone")

    async def close(self):
        await self.client.close()


KINDS = pytest.mark.parametrize("kind", [Blocking, Asyncio], ids=["blocking", "asyncio"])


def run(kind, scenario):
    async def main():
        sides = kind()
        try:
            return await scenario(sides, sides.world)
        finally:
            await sides.close()
    return asyncio.run(main())


@KINDS
def test_an_idempotent_call_goes_to_the_next_controller_at_once_and_the_failed_one_is_tried_last(kind):
    async def scenario(client, world):
        world.behaviour[A] = DEAD
        started = time.monotonic()
        assert (await client.list()).revision == B
        assert world.take() == [A, B], "A failed, B answered, with no backoff between"
        assert time.monotonic() - started < FIRST_COOLDOWN
        # A is cooling down: tried after the others, even once it is back.
        world.behaviour[A] = "ok"
        assert (await client.list()).revision == B
        assert world.take() == [B]
        assert client.client.address == "127.0.0.1:2"
        # Every other controller failing: A, cooling, is still tried, last.
        world.behaviour[B] = world.behaviour[C] = DEAD
        assert (await client.list()).revision == A
        assert world.take() == [B, C, A]
        # Its answer ended its cooldown; B and C now cool down.
        assert client.client.address == "127.0.0.1:1"
        world.behaviour[B] = world.behaviour[C] = "ok"
        assert (await client.list()).revision == A
        assert world.take() == [A]
    run(kind, scenario)


@KINDS
def test_the_cooldown_ends_by_itself_and_the_first_controller_is_preferred_again(kind):
    async def scenario(client, world):
        world.behaviour[A] = DEAD
        await client.list()
        world.behaviour[A] = "ok"
        assert client.client.address == "127.0.0.1:2"
        eventually(lambda: client.client.address == "127.0.0.1:1", timeout=5 * FIRST_COOLDOWN,
                   what="A's first cooldown to end")
        world.take()
        assert (await client.list()).revision == A
        assert world.take() == [A]
    run(kind, scenario)


@KINDS
def test_a_call_with_effects_is_never_repeated_and_the_next_call_goes_elsewhere(kind):
    async def scenario(client, world):
        world.behaviour[A] = DEAD
        with pytest.raises(HangarError) as caught:
            await client.drain()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert world.take() == [A], "DrainNode went to A only"
        assert (await client.drain()).id == str(B)
        assert world.take() == [B]
    run(kind, scenario)


@KINDS
@pytest.mark.parametrize("answer", [
    (grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND"),
    (grpc.StatusCode.UNAVAILABLE, "NO_DRONE_AVAILABLE"),
    (grpc.StatusCode.INTERNAL, "INTERNAL"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
], ids=lambda answer: f"{answer[0].name}-{answer[1]}")
def test_an_error_answer_is_raised_at_once_and_ends_the_cooldown(kind, answer):
    async def scenario(client, world):
        world.behaviour[A] = DEAD
        await client.list()
        world.take()
        world.behaviour[B] = answer
        with pytest.raises(HangarError) as caught:
            await client.list()
        assert (caught.value.code, caught.value.reason) == answer
        assert world.take() == [B], "an answer is not a reason to ask another controller"
        assert client.client._controllers.healths[B].failures == 0
        assert client.client.address == "127.0.0.1:2", "A still cools down"
    run(kind, scenario)


@KINDS
@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_transport_failure_without_error_info_fails_over(kind, code):
    async def scenario(client, world):
        world.behaviour[A] = (code, "")
        assert (await client.list()).revision == B
        assert world.take() == [A, B]
    run(kind, scenario)


def test_not_answered_is_what_the_rust_sdk_says_plus_the_clients_own_deadline():
    def error(code, reason=""):
        return HangarError(code, "x", reason, has_error_info=bool(reason))
    assert not_answered(error(grpc.StatusCode.UNAVAILABLE))
    assert not_answered(error(grpc.StatusCode.UNAVAILABLE, "CONTROLLER_SHUTTING_DOWN"))
    assert not not_answered(error(grpc.StatusCode.UNAVAILABLE, "NO_DRONE_AVAILABLE"))
    for code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.DEADLINE_EXCEEDED):
        assert not_answered(error(code)), code
        assert not not_answered(error(code, "SOMETHING")), code
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
        assert not not_answered(error(code)), code


def test_a_cooldown_doubles_with_each_failure_in_a_row_up_to_15_s_and_an_answer_resets_it():
    now = [100.0]
    health = Health(clock=lambda: now[0])
    assert not health.is_cooling()
    assert [health.failed() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert FIRST_COOLDOWN == 0.5 and MAX_COOLDOWN == 15.0
    assert health.is_cooling()
    now[0] += 14.9
    assert health.is_cooling()
    now[0] += 0.2
    assert not health.is_cooling()
    assert health.answered() and not health.answered()
    assert health.failed() == 0.5, "an answer resets the doubling"


def test_controllers_cooling_down_are_tried_last_and_never_dropped():
    healths = [Health() for _ in range(3)]
    assert try_order(healths) == [0, 1, 2]
    healths[1].failed()
    assert try_order(healths) == [0, 2, 1]
    healths[0].failed()
    healths[2].failed()
    assert try_order(healths) == [0, 1, 2], "all cooling: all still tried"


@pytest.mark.parametrize("urls", ["http://a:7070, http://b:7070,", ["http://a:7070", " http://b:7070 "]],
                         ids=["string", "list"])
def test_several_controllers_as_a_comma_separated_string_or_a_list(urls):
    with Client(urls, token="t0k3n") as client:
        assert client.addresses == ("a:7070", "b:7070")
        assert client.address == "a:7070"

    async def scenario():
        async with aio.Client(urls) as client:
            return client.addresses
    assert asyncio.run(scenario()) == ("a:7070", "b:7070")
    with pytest.raises(ValueError, match="no controller URL"):
        Client(" , ")
    with pytest.raises(ValueError, match="no controller URL"):
        Client([])
