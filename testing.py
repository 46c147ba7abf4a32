"""Test a program that uses rpcproxy without running a proxy.

Both clients talk to the proxy through a transport
(:class:`rpcproxy.Transport`, :class:`rpcproxy.AsyncTransport`); this module
has in-memory ones, in the manner of ``httpx.MockTransport``: a *handler*
takes each decoded request map and returns the reply map::

    from rpcproxy import ProxyClient, Server
    from rpcproxy.testing import MockTransport

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "find_server"
        return {"server": {"addr": "10.0.0.1:4647"}}

    client = ProxyClient(transport=MockTransport(handler))
    assert client.find_server() == Server("10.0.0.1:4647")

The transport fills in ``ok: true``, the request's ``id`` and default
``epoch``/``instance`` when the handler leaves them out. A handler may raise
a :class:`~rpcproxy.ProxyError` subclass (``ProxyInvalidAddressError("...")``)
to answer with that error, raise :class:`~rpcproxy.ProxyTimeoutError` to
leave a try unanswered (the client retries, then raises it; nothing sleeps),
return a whole error map (``{"ok": False, "error": {...}}``), or return bytes
to send a raw, possibly malformed, frame.

:class:`InMemoryProxy` is a handler that behaves like ``rpcproxy serve``: its
lists change by the service's own rules (the functions of
:mod:`rpcproxy.proxy`), with epochs, so a program's failover logic can be
tested against the real semantics::

    proxy = InMemoryProxy(primaries=["10.0.0.1", "10.0.0.2"])
    with proxy.client() as client:
        client.notify_failed_server("10.0.0.1:4647")
        assert client.find_server() == Server("10.0.0.2:4647")

Nothing here is imported by ``import rpcproxy``: a service's own process
never loads it.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgspec

from rpcproxy.actors import (
    ActiveServerChanged,
    ProbeCandidates,
    ProbeResults,
    ProxyCore,
    ProxySettings,
    Refused,
    SnapshotBox,
)
from rpcproxy.bus.client import (
    AsyncProxyClient,
    BadRequestError,
    ProxyClient,
    ProxyError,
    ProxyTimeoutError,
    UnavailableError,
)
from rpcproxy.bus.service.codec import Decoder, RequestError, new_instance_id
from rpcproxy.bus.service.ops import AnyWriteOp, ReadOp, decode_request, plan
from rpcproxy.bus.wire import Event, OpReply, Server
from rpcproxy.proxy import (
    DEFAULT_MAX_SERVERS,
    LocalIdentity,
    ProxyState,
    RebalanceTiming,
    add_primary,
    parse_address,
    set_backups,
)

__all__ = [
    "DEFAULT_INSTANCE",
    "AsyncHandler",
    "AsyncMockTransport",
    "Handler",
    "InMemoryProxy",
    "MockTransport",
]

Reply: TypeAlias = Mapping[str, Any] | bytes
Handler: TypeAlias = Callable[[dict[str, Any]], Reply]
"""Takes the decoded request map, returns the reply map (or a raw frame)."""

AsyncHandler: TypeAlias = Callable[[dict[str, Any]], Reply | Awaitable[Reply]]
"""A :data:`Handler`, or a coroutine function like one."""

DEFAULT_INSTANCE: Final = "0000000000000000"
"""The ``instance`` a mock transport puts in success replies that name none."""


def _decode(frame: bytes) -> dict[str, Any]:
    request = msgspec.msgpack.decode(frame)
    if not isinstance(request, dict):
        raise TypeError(f"a request frame must be a map, got {type(request).__name__}")
    return request


def _error(exc: ProxyError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": exc.code, "message": exc.message}}


def _frame(reply: Reply, request: Mapping[str, Any], epoch: int, instance: str) -> bytes:
    """The reply frame: ``ok``, ``id`` and (on success) ``epoch``/``instance`` filled in."""
    if isinstance(reply, bytes):
        return reply
    full = {"ok": True, **reply}
    if "id" in request:
        full.setdefault("id", request["id"])
    if full["ok"] is True:
        full.setdefault("epoch", epoch)
        full.setdefault("instance", instance)
    return msgspec.msgpack.encode(full)


class MockTransport:
    """A :class:`rpcproxy.Transport` that answers every request with ``handler``.

    Safe to share between threads; the handler itself is called from the
    calling thread.

    Attributes:
        requests: every request map seen, in order (retries included).
    """

    def __init__(
        self, handler: Handler, *, epoch: int = 0, instance: str = DEFAULT_INSTANCE
    ) -> None:
        self.handler = handler
        self.epoch = epoch
        self.instance = instance
        self.requests: list[dict[str, Any]] = []
        self.closed = False
        self._lock = threading.Lock()

    def exchange(self, frame: bytes, timeout_s: float) -> bytes:
        if self.closed:
            raise RuntimeError("the transport is closed")
        request = _decode(frame)
        with self._lock:
            self.requests.append(request)
        try:
            reply = self.handler(request)
        except ProxyTimeoutError:
            raise ProxyTimeoutError(f"the handler did not answer within {timeout_s:g} s") from None
        except ProxyError as exc:
            reply = _error(exc)
        return _frame(reply, request, self.epoch, self.instance)

    def close(self) -> None:
        self.closed = True


class AsyncMockTransport:
    """A :class:`rpcproxy.AsyncTransport` that answers every request with ``handler``.

    The handler may be a coroutine function. One that takes longer than the
    try's ``timeout_s`` makes the try silent; it is not cancelled (a proxy
    does not stop working on a request its client stopped waiting for), and
    its late reply is dropped.

    Attributes:
        requests: every request map seen, in order (retries included).
    """

    def __init__(
        self, handler: AsyncHandler, *, epoch: int = 0, instance: str = DEFAULT_INSTANCE
    ) -> None:
        self.handler = handler
        self.epoch = epoch
        self.instance = instance
        self.requests: list[dict[str, Any]] = []
        self.closed = False

    async def exchange(self, frame: bytes, timeout_s: float) -> bytes:
        if self.closed:
            raise RuntimeError("the transport is closed")
        request = _decode(frame)
        self.requests.append(request)
        try:
            reply = self.handler(request)
            if inspect.isawaitable(reply):
                reply = await self._within(reply, timeout_s)
        except ProxyTimeoutError:
            raise ProxyTimeoutError(f"the handler did not answer within {timeout_s:g} s") from None
        except ProxyError as exc:
            reply = _error(exc)
        return _frame(reply, request, self.epoch, self.instance)

    def close(self) -> None:
        self.closed = True

    @staticmethod
    async def _within(pending: Awaitable[Reply], timeout_s: float) -> Reply:
        task = asyncio.ensure_future(pending)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            # Retrieve whatever it ends with, so asyncio logs no "never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise ProxyTimeoutError("silent")
        return task.result()


def _map(body: OpReply | Event) -> dict[str, Any]:
    """A wire struct as the map a handler returns (and the events list holds)."""
    keys: dict[str, Any] = msgspec.to_builtins(body)
    return keys


def _raised(code: str, message: str) -> ProxyError:
    """The client's exception for an error reply with ``code`` (as the client would raise it)."""
    kinds = [kind for kind in ProxyError.__subclasses__() if kind.default_code == code]
    return (kinds[0] if kinds else ProxyError)(message, code)


@dataclass(frozen=True, slots=True)
class _StillTimer(RebalanceTiming):
    """Every rebalance interval is ``seconds``: an in-memory proxy's timer never fires."""

    seconds: float = 600.0

    def rebalance_interval(self, num_nodes: int, num_servers: int, u: float) -> float:
        return self.seconds

    def first_interval(self, u: float) -> float:
        return self.seconds

    def reset_interval(self) -> float:
        return self.seconds


class InMemoryProxy:
    """A tiny proxy in memory, for :class:`MockTransport` and :class:`AsyncMockTransport`.

    It runs the service's own code in the caller's thread: each request is
    read and checked by the query socket's decoder, answered from a snapshot
    or applied by the same :class:`~rpcproxy.actors.ProxyCore` that
    ``rpcproxy serve`` runs in its actor, so every op of docs/protocol.md
    section 1, its errors (``invalid_address``, ``bad_request``,
    ``unknown_op``, ``unsupported_version``) and its epochs and events are
    the service's, by construction. Success replies carry ``epoch`` (one
    more for every change of the active server) and ``instance``.

    A rebalance probes nobody: ``healthy`` says which servers would answer
    (all, by default), and the shuffle uses ``seed``. The rebalance timer
    never fires, and the clock stands still unless one is given: ``status``
    reports ``next_rebalance_s`` as given, and ages of 0.

    Args:
        primaries: the servers it starts with, as ``primary_servers`` would add them.
        backups: likewise ``backup_servers``.
        healthy: whether a server (its canonical address) answers a rebalance's probe.
        seed: seeds the rebalance shuffle.
        instance: the ``instance`` of its replies; a random one by default,
            like each start of ``serve``.
        datacenter: the local datacenter, for heartbeats.
        max_servers: the bound on primaries and backups together.
        next_rebalance_s: what ``status`` and ``reset_rebalance_timer`` report.
        clock: monotonic seconds, for ``status``'s ages and timer.

    Attributes:
        state: the lists (a :class:`rpcproxy.proxy.ProxyState`); read it, or
            replace it to set up a test (which announces nothing).
        epoch: changes of the active server so far.
        events: every change as the events socket would publish it
            (docs/protocol.md section 5), oldest first.
        offline: whether the last rebalance that probed found nobody answering.
        requests: how many requests it has answered.
    """

    def __init__(
        self,
        primaries: Iterable[str] = (),
        backups: Iterable[str] = (),
        *,
        healthy: Callable[[str], bool] | None = None,
        seed: int = 0,
        instance: str | None = None,
        datacenter: str = "dc1",
        max_servers: int = DEFAULT_MAX_SERVERS,
        next_rebalance_s: float = 600.0,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.healthy: Callable[[str], bool] = healthy if healthy is not None else lambda _: True
        self.instance = instance if instance is not None else new_instance_id()
        self.max_servers = max_servers
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self._clock = clock
        self._decoder = Decoder(max_servers)
        self._lock = threading.RLock()
        self._box = SnapshotBox()
        settings = ProxySettings(
            local=LocalIdentity(datacenter=datacenter),
            timing=_StillTimer(seconds=next_rebalance_s),
            max_servers=max_servers,
        )
        self._core = ProxyCore(
            settings,
            self._box,
            probe=self._probe,
            schedule=lambda _delay_s: None,
            announce=self._announce,
            rng=random.Random(seed),
            clock=clock,
        )
        self._core.start()
        state = ProxyState()
        for text in primaries:
            state, _ = add_primary(state, parse_address(text), max_servers=max_servers)
        backup_list = [parse_address(text) for text in backups]
        if backup_list:
            state = set_backups(state, backup_list, max_servers=max_servers)
        self._core.replace_state(state)

    @property
    def state(self) -> ProxyState:
        return self._core.state

    @state.setter
    def state(self, state: ProxyState) -> None:
        with self._lock:
            self._core.replace_state(state)

    @property
    def epoch(self) -> int:
        return self._core.epoch

    @property
    def offline(self) -> bool:
        return self._core.offline

    # -- clients ------------------------------------------------------------

    def client(self, **options: Any) -> ProxyClient:
        """A :class:`rpcproxy.ProxyClient` of this proxy (``options`` as its constructor's)."""
        return ProxyClient(transport=MockTransport(self), **options)

    def async_client(self, **options: Any) -> AsyncProxyClient:
        """An :class:`rpcproxy.AsyncProxyClient` of this proxy."""
        return AsyncProxyClient(transport=AsyncMockTransport(self), **options)

    # -- the handler --------------------------------------------------------

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request map (a :data:`Handler`); errors are raised as ProxyError."""
        with self._lock:
            self.requests += 1
            try:
                frame = msgspec.msgpack.encode(request)
            except (TypeError, msgspec.EncodeError) as exc:
                raise BadRequestError(f"not MessagePack: {exc}") from None
            try:
                step = plan(decode_request(frame, self._decoder))
            except RequestError as exc:
                raise _raised(exc.code, exc.message) from None
            if isinstance(step, ReadOp):
                body = step.answer(self._box.current, self._clock())
            else:
                body = self._write(step)
            return {**_map(body), "epoch": self._core.epoch, "instance": self.instance}

    def _write(self, step: AnyWriteOp) -> OpReply:
        """Apply a write's message to the core, which answers before it returns."""
        answers: list[Refused | Callable[[], OpReply]] = []
        self._core.handle(step.message(answers.append))
        if not answers:  # every message of a query op is answered at once here
            raise UnavailableError("the write was not answered")
        answer = answers[0]
        if isinstance(answer, Refused):
            raise _raised(answer.kind, answer.reason)
        return answer()

    # -- the core's effects -------------------------------------------------

    def _probe(self, probe: ProbeCandidates) -> None:
        answered = {addr: self.healthy(addr.canonical) for addr in probe.candidates}
        self._core.handle(ProbeResults(probe.token, answered))

    def _announce(self, change: ActiveServerChanged) -> None:
        server = None if change.server is None else Server(change.server.canonical)
        event = Event(
            server=server, reason=change.reason, epoch=change.epoch, instance=self.instance
        )
        self.events.append(_map(event))
