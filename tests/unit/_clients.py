"""Run one test against both clients: :class:`ProxyClient` and :class:`AsyncProxyClient`.

A :class:`Driver` runs an op given as ``lambda c: c.find_server()`` on either
client: called directly on the blocking one, awaited on the asyncio one in an
event loop that runs in a thread of its own (so the loop keeps reading while
the test's thread waits on something else). Both give the same results and
raise the same exceptions, which is what the suites check.

:class:`FakeProxy` is a scripted ROUTER in raw pyzmq + msgpack, so the wire
tests check the clients against docs/protocol.md, not against our own codec.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import zmq

from rpcproxy import AsyncProxyClient, ProxyClient
from rpcproxy.testing import AsyncMockTransport, Handler, MockTransport

WAIT_S = 10.0
"""Upper bound for anything the tests wait on, and the timeout of calls that must
succeed; only reached when a test fails."""

Kind = Literal["sync", "async"]
KINDS: tuple[Kind, ...] = ("sync", "async")

_T = TypeVar("_T")


class AsyncLoop:
    """An event loop running in its own thread; ``run`` waits for a coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()
        self.loop.close()


class Driver:
    """One client of either kind, and a way to run its ops the same way."""

    def __init__(self, kind: Kind, client: Any, loop: AsyncLoop | None) -> None:
        self.kind = kind
        self.client = client
        self._loop = loop

    def __call__(self, op: Callable[[Any], Any]) -> Any:
        """``op(client)``, awaited when the client is the asyncio one."""
        if self._loop is None:
            return op(self.client)

        async def run() -> Any:
            result = op(self.client)
            return await result if inspect.isawaitable(result) else result

        return self._loop.run(run())

    def close(self) -> None:
        if self._loop is None:
            self.client.close()
        else:
            self._loop.run(self.client.aclose())


@contextmanager
def drivers(kind: Kind, context: zmq.Context[Any] | None) -> Iterator[Callable[..., Driver]]:
    """A factory of drivers of ``kind``: ``make(endpoint, **options)`` or ``make(handler=...)``.

    ``handler`` gives the client a mock transport with that handler instead of ZeroMQ.
    Every driver is closed at the end, before ``context`` is terminated.
    """
    loop = AsyncLoop() if kind == "async" else None
    made: list[Driver] = []

    def make(endpoint: str = "", *, handler: Handler | None = None, **options: Any) -> Driver:
        if handler is not None:
            transport: Any = MockTransport(handler) if loop is None else AsyncMockTransport(handler)
            options["transport"] = transport
        elif context is not None:
            options.setdefault("context", context)
        cls: Any = ProxyClient if loop is None else AsyncProxyClient
        driver = Driver(kind, cls(endpoint or "tcp://127.0.0.1:1", **options), loop)
        made.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in made:
            driver.close()
        if loop is not None:
            loop.close()


# --------------------------------------------------------------------------
# A scripted proxy on a real socket.


@dataclass(frozen=True)
class Received:
    """One request as the fake proxy saw it."""

    envelope: list[bytes]
    request: Any

    @property
    def identity(self) -> bytes:
        return self.envelope[0]


FakeHandler = Callable[["FakeProxy", Received], Any]
"""Returns the reply (bytes are sent raw, anything else is msgpack-packed), or None to drop."""


class FakeProxy:
    """A ROUTER owned by one thread that answers with a scripted handler."""

    def __init__(
        self, context: zmq.Context[Any], handler: FakeHandler, bind: str = "tcp://127.0.0.1:*"
    ) -> None:
        self._bind = bind
        self._context = context
        self._handler = handler
        self._started = threading.Event()
        self._stop = threading.Event()
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fake-proxy", daemon=True)
        self._socket: zmq.Socket[bytes] | None = None
        self.received: list[Received] = []
        self.endpoint = ""

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(WAIT_S), "fake proxy did not start"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()

    def send(self, envelope: list[bytes], reply: Any) -> None:
        """Send a reply; only call from the handler (the socket's own thread)."""
        assert self._socket is not None
        body = reply if isinstance(reply, bytes) else msgpack.packb(reply)
        self._socket.send_multipart([*envelope, body])

    def wait_for(self, count: int) -> list[Received]:
        """Wait until ``count`` requests have arrived."""
        with self._seen:
            assert self._seen.wait_for(lambda: len(self.received) >= count, WAIT_S)
            return list(self.received)

    def _run(self) -> None:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(self._bind)
        self._socket = socket
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._started.set()
        try:
            while not self._stop.is_set():
                if socket.poll(20, zmq.POLLIN):
                    self._serve_one(socket.recv_multipart())
        finally:
            socket.close(linger=0)

    def _serve_one(self, frames: list[bytes]) -> None:
        envelope, body = frames[:-1], frames[-1]
        received = Received(envelope, msgpack.unpackb(body, strict_map_key=False))
        with self._seen:
            self.received.append(received)
            self._seen.notify_all()
        reply = self._handler(self, received)
        if reply is not None:
            self.send(envelope, reply)


def ok(received: Received, **fields: Any) -> dict[str, Any]:
    """A success reply echoing the request's id."""
    return {"ok": True, "id": received.request["id"], **fields}


def err(received: Received, code: str, message: str = "nope") -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}, "id": received.request["id"]}


def silent(_proxy: FakeProxy, _received: Received) -> None:
    return None


def replying(**fields: Any) -> FakeHandler:
    """A handler that answers every request ``ok`` with ``fields``."""
    return lambda _proxy, received: ok(received, **fields)


def keys_of(received: Received) -> dict[str, Any]:
    """The request's op keys, without the envelope keys the client adds."""
    return {k: v for k, v in received.request.items() if k not in ("v", "id")}
