"""What only the asyncio client has: many coroutines on one socket, cancellation, ``async with``.

The behaviour both clients share is tested on both, in test_client.py and
test_client_behaviour.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from rpcproxy import AsyncProxyClient, ProxyTimeoutError, Server
from rpcproxy.testing import AsyncMockTransport, InMemoryProxy
from tests.helpers import free_port
from tests.unit._clients import WAIT_S, FakeHandler, FakeProxy, Received, ok

CONCURRENT = 64


@pytest.fixture
def fake(ctx: zmq.Context[Any]) -> Iterator[list[FakeProxy]]:
    started: list[FakeProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def start(
    ctx: zmq.Context[Any],
    fake: list[FakeProxy],
    handler: FakeHandler,
    bind: str = "tcp://127.0.0.1:*",
) -> FakeProxy:
    proxy = FakeProxy(ctx, handler, bind)
    proxy.start()
    fake.append(proxy)
    return proxy


def test_concurrent_coroutines_pipeline_on_one_socket(
    ctx: zmq.Context[Any], fake: list[FakeProxy]
) -> None:
    """Every request is in flight before any reply; replies come back in reverse order."""
    held: list[Received] = []

    def hold_then_answer_backwards(proxy: FakeProxy, received: Received) -> None:
        held.append(received)
        if len(held) == CONCURRENT:
            for each in reversed(held):
                proxy.send(each.envelope, ok(each, server={"addr": f"s{each.request['id']}:1"}))

    proxy = start(ctx, fake, hold_then_answer_backwards)

    async def main() -> list[Server | None]:
        async with AsyncProxyClient(proxy.endpoint, context=ctx, timeout_s=WAIT_S) as client:
            return await asyncio.gather(*(client.find_server() for _ in range(CONCURRENT)))

    found = asyncio.run(main())
    received = proxy.wait_for(CONCURRENT)
    # Coroutine i sent request id i, and got the reply to it, not to another.
    assert found == [Server(f"s{i}:1") for i in range(1, CONCURRENT + 1)]
    assert len({r.identity for r in received}) == 1, "one socket for every coroutine"


def test_a_silent_request_times_out_while_the_others_are_answered(
    ctx: zmq.Context[Any], fake: list[FakeProxy]
) -> None:
    def all_but_remove(_proxy: FakeProxy, received: Received) -> Any:
        if received.request["op"] == "remove_server":
            return None
        return ok(received, pong=True)

    proxy = start(ctx, fake, all_but_remove)

    async def main() -> list[Any]:
        async with AsyncProxyClient(
            proxy.endpoint, context=ctx, timeout_s=0.2, retries=2
        ) as client:
            # The silent call times out after its 2 short tries; the pings must
            # be answered, so they wait long (per call).
            answers = await asyncio.gather(
                client.remove_server("10.0.0.1"),
                *(client.ping(timeout_s=WAIT_S) for _ in range(10)),
                return_exceptions=True,
            )
            return list(answers)

    silent, *pongs = asyncio.run(main())
    assert isinstance(silent, ProxyTimeoutError)
    assert pongs == [True] * 10


def test_a_cancelled_call_loses_no_reply_of_the_next(
    ctx: zmq.Context[Any], fake: list[FakeProxy]
) -> None:
    """Cancelling a waiting call drops only its own reply, which may come later."""
    first_seen = threading.Event()

    def answer_the_first_late(proxy: FakeProxy, received: Received) -> Any:
        if len(proxy.received) == 1:
            first_seen.set()
            return None
        first = proxy.received[0]
        proxy.send(first.envelope, ok(first, server={"addr": "stale:1"}))
        return ok(received, server={"addr": "fresh:1"})

    proxy = start(ctx, fake, answer_the_first_late)

    async def main() -> Server | None:
        async with AsyncProxyClient(proxy.endpoint, context=ctx, timeout_s=WAIT_S) as client:
            waiting = asyncio.ensure_future(client.find_server())
            assert await asyncio.to_thread(first_seen.wait, WAIT_S)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return await client.find_server()

    assert asyncio.run(main()) == Server("fresh:1")


def test_a_request_made_before_the_proxy_listens_is_sent_once_it_does(
    ctx: zmq.Context[Any], fake: list[FakeProxy]
) -> None:
    """With no connection up the send waits (IMMEDIATE), and goes out when one comes up."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    async def main() -> bool:
        async with AsyncProxyClient(endpoint, context=ctx, timeout_s=WAIT_S, retries=1) as client:
            waiting = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0)  # one turn: the client has tried to send and found no peer
            assert not waiting.done()
            start(ctx, fake, lambda _p, r: ok(r, pong=True), bind=endpoint)
            return await waiting

    assert asyncio.run(main()) is True
    assert len(fake[0].received) == 1


def test_aclose_fails_the_calls_still_waiting(ctx: zmq.Context[Any], fake: list[FakeProxy]) -> None:
    arrived = threading.Event()

    def never(_proxy: FakeProxy, _received: Received) -> None:
        arrived.set()

    proxy = start(ctx, fake, never)

    async def main() -> None:
        client = AsyncProxyClient(proxy.endpoint, context=ctx, timeout_s=WAIT_S)
        waiting = asyncio.ensure_future(client.ping())
        assert await asyncio.to_thread(arrived.wait, WAIT_S)
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
        with pytest.raises(RuntimeError, match="closed"):
            await client.ping()
        await client.aclose()  # idempotent

    asyncio.run(main())


def test_async_with_closes_the_client() -> None:
    proxy = InMemoryProxy(["10.0.0.1"])

    async def main() -> AsyncProxyClient:
        async with proxy.async_client() as client:
            assert await client.find_server() == Server("10.0.0.1:4647")
        return client

    client = asyncio.run(main())
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(client.ping())


def test_a_slow_async_handler_is_a_silent_try() -> None:
    """An async handler slower than the try is not cancelled; its reply is dropped."""
    release = asyncio.Event()
    finished: list[int] = []

    async def slow_first(request: dict[str, Any]) -> dict[str, Any]:
        if request["id"] == 1:
            await release.wait()
            finished.append(request["id"])
            return {"server": {"addr": "stale:1"}}
        return {"server": {"addr": "fresh:1"}}

    async def main() -> tuple[BaseException | None, Server | None]:
        client = AsyncProxyClient(
            transport=AsyncMockTransport(slow_first), timeout_s=0.05, retries=1
        )
        try:
            await client.find_server()
        except ProxyTimeoutError as exc:
            timed_out: BaseException | None = exc
        release.set()
        fresh = await client.find_server()
        return timed_out, fresh

    timed_out, fresh = asyncio.run(main())
    assert isinstance(timed_out, ProxyTimeoutError)
    assert fresh == Server("fresh:1")
    assert finished == [1]
