"""The threaded watcher (bus/client/_watch.py) against a scripted events PUB and a mock transport.

The events are published by hand, the re-sync is answered by
:class:`rpcproxy.testing.MockTransport`, so each case is one message and its
effect: adopted, a gap, a restart, garbage, silence, and a prompt close.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq

from rpcproxy import ProxyTimeoutError
from rpcproxy.bus.client._watch import Watcher, WatchStats
from rpcproxy.bus.wire import EVENT_TOPIC
from rpcproxy.testing import MockTransport
from tests.waiting import poll_until


@dataclass
class State:
    addr: str = "a:1"
    epoch: int = 0
    instance: str = "0123456789abcdef"


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def pub(context: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[bytes], str]]:
    sock: zmq.Socket[bytes] = context.socket(zmq.PUB)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def publish(sock: zmq.Socket[bytes], state: State, payload: bytes | None = None) -> None:
    body = payload
    if body is None:
        event = {"server": {"addr": state.addr}, "reason": "failed"}
        body = msgpack.packb({**event, "epoch": state.epoch, "instance": state.instance})
    sock.send_multipart([EVENT_TOPIC, body])


def watcher_for(
    state: State, endpoint: str, context: zmq.Context[Any], refresh_s: float = 10.0
) -> tuple[Watcher, MockTransport]:
    def handler(request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "find_server"
        server = {"addr": state.addr}
        return {"server": server, "epoch": state.epoch, "instance": state.instance}

    transport = MockTransport(handler)
    watcher = Watcher(endpoint, refresh_s=refresh_s, transport=transport, context=context)
    watcher.start()
    return watcher, transport


def until(watcher: Watcher, what: str, check: Any) -> WatchStats:
    def met() -> WatchStats | None:
        stats = watcher.stats()
        return stats if check(stats) else None

    return poll_until(met, 5, what=what)


def test_events_are_followed_and_gaps_restarts_and_garbage_noticed(
    pub: tuple[zmq.Socket[bytes], str], context: zmq.Context[Any]
) -> None:
    sock, endpoint = pub
    state = State()
    watcher, _ = watcher_for(state, endpoint, context)
    try:
        until(watcher, "the first re-sync", lambda s: s.resyncs == 1)

        # PUB drops what it sends before the subscription arrives: repeat a
        # liveness-only event until one is read.
        def heard() -> int:
            publish(sock, state)
            return watcher.stats().events

        poll_until(heard, 5, what="an event")
        state.addr, state.epoch = "b:1", 1
        publish(sock, state)
        poll_until(lambda: (v := watcher.fresh()) and v.epoch == 1, 5, what="epoch 1")
        view = watcher.fresh()
        assert view is not None and view.server is not None and view.server.addr == "b:1"

        state.addr, state.epoch = "d:1", 3  # epoch 2 was lost
        publish(sock, state)
        stats = until(watcher, "the gap's re-sync", lambda s: s.resyncs == 2)
        assert stats.gaps == 1
        poll_until(lambda: (v := watcher.fresh()) and v.epoch == 3, 5, what="epoch 3")

        state.addr, state.epoch, state.instance = "n:1", 0, "fedcba9876543210"
        publish(sock, state)
        stats = until(watcher, "the restart's re-sync", lambda s: s.resyncs == 3)
        assert stats.restarts == 1
        view = poll_until(watcher.fresh, 5)
        assert (view.epoch, view.instance) == (0, "fedcba9876543210")

        publish(sock, state, b"\xc1 not msgpack")
        publish(sock, state, msgpack.packb({"server": None}))
        stats = until(watcher, "garbage counted", lambda s: s.malformed == 2)
        assert stats.resyncs == 3  # garbage is ignored, not a reason to ask
    finally:
        watcher.close()


def test_silence_replaces_the_socket_and_resyncs(
    pub: tuple[zmq.Socket[bytes], str], context: zmq.Context[Any]
) -> None:
    _, endpoint = pub
    watcher, _ = watcher_for(State(), endpoint, context, refresh_s=0.05)
    try:
        stats = until(watcher, "two silences", lambda s: s.silences >= 2)
        assert stats.resyncs >= 2
    finally:
        watcher.close()


def test_close_is_prompt_while_nobody_answers(context: zmq.Context[Any]) -> None:
    def silent(request: dict[str, Any]) -> dict[str, Any]:
        raise ProxyTimeoutError("nobody")

    transport = MockTransport(silent)
    watcher = Watcher("tcp://127.0.0.1:1", refresh_s=10.0, transport=transport, context=context)
    watcher.start()
    until(watcher, "a failed re-sync", lambda s: s.failed_resyncs >= 1)
    assert watcher.fresh() is None
    watcher.close()
    assert not watcher._thread.is_alive()
    assert transport.closed
    watcher.close()  # idempotent
