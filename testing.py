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
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeAlias

import msgspec

from rpcproxy.bus.client import (
    AsyncProxyClient,
    BadRequestError,
    ProxyClient,
    ProxyError,
    ProxyInvalidAddressError,
    ProxyTimeoutError,
    UnknownOpError,
    UnsupportedVersionError,
)
from rpcproxy.bus.wire import (
    PROTOCOL_VERSION,
    AddPrimaryServerReply,
    ChangeReason,
    Event,
    FindServerReply,
    HeartbeatPayload,
    HeartbeatReply,
    NotifyFailedServerReply,
    Op,
    OpReply,
    PingReply,
    RebalanceReply,
    RemoveServerReply,
    ResetRebalanceTimerReply,
    Server,
    ServersReply,
    SetBackupServersReply,
    Status,
)
from rpcproxy.proxy import (
    DEFAULT_MAX_SERVERS,
    Address,
    Heartbeat,
    HeartbeatServer,
    InvalidAddressError,
    LocalIdentity,
    ProxyState,
    TooManyServersError,
    add_primary,
    apply_heartbeat,
    choose_head,
    notify_failed,
    parse_address,
    plan_rebalance,
    reconcile,
    remove_server,
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


def _server(addr: Address | None) -> Server | None:
    return None if addr is None else Server(addr.canonical)


def _servers(addrs: Iterable[Address]) -> list[Server]:
    return [Server(a.canonical) for a in addrs]


def _map(body: OpReply | Event) -> dict[str, Any]:
    """A wire struct as the map a handler returns (and the events list holds)."""
    keys: dict[str, Any] = msgspec.to_builtins(body)
    return keys


def _address(request: Mapping[str, Any], key: str = "addr") -> Address:
    text = _key(request, key, str)
    try:
        return parse_address(text)
    except InvalidAddressError as exc:
        raise ProxyInvalidAddressError(str(exc)) from None


def _key(request: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    if key not in request:
        raise BadRequestError(f"missing key {key!r}")
    value = request[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequestError(f"{key!r} must be {kind.__name__}")
    return value


class InMemoryProxy:
    """A tiny proxy in memory, for :class:`MockTransport` and :class:`AsyncMockTransport`.

    It answers the ops of docs/protocol.md section 1 (``ping``,
    ``find_server``, ``servers``, ``status``, ``notify_failed_server``,
    ``add_primary_server``, ``set_backup_servers``, ``remove_server``,
    ``heartbeat``, ``rebalance``, ``reset_rebalance_timer``) by the
    service's own rules, and errors as the service does (``invalid_address``,
    ``bad_request``, ``unknown_op``, ``unsupported_version``). Success replies
    carry ``epoch`` (one more for every change of the active server) and
    ``instance``.

    A rebalance pings nobody: ``healthy`` says which servers would answer
    (all, by default), and the shuffle uses ``seed``. There is no rebalance
    timer: ``next_rebalance_s`` is reported as given.

    Args:
        primaries: the servers it starts with, as ``primary_servers`` would add them.
        backups: likewise ``backup_servers``.
        healthy: whether a server (its canonical address) answers a rebalance's ping.
        seed: seeds the rebalance shuffle.
        instance: the ``instance`` of its replies; a random one by default,
            like each start of ``serve``.
        datacenter: the local datacenter, for heartbeats.
        max_servers: the bound on primaries and backups together.
        next_rebalance_s: what ``status`` and ``reset_rebalance_timer`` report.

    Attributes:
        state: the lists (a :class:`rpcproxy.proxy.ProxyState`); read it, or
            replace it to set up a test.
        epoch: changes of the active server so far.
        events: every change as the events socket would publish it
            (docs/protocol.md section 5), oldest first.
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
    ) -> None:
        self.healthy: Callable[[str], bool] = healthy if healthy is not None else lambda _: True
        self.instance = instance if instance is not None else secrets.token_hex(8)
        self.max_servers = max_servers
        self.next_rebalance_s = next_rebalance_s
        self.local = LocalIdentity(datacenter=datacenter)
        self.epoch = 0
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.offline = False
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        state = ProxyState()
        for text in primaries:
            state, _ = add_primary(state, parse_address(text), max_servers=max_servers)
        backup_list = [parse_address(text) for text in backups]
        if backup_list:
            state = set_backups(state, backup_list, max_servers=max_servers)
        self.state = state

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
            if "v" in request and not (
                type(request["v"]) is int and request["v"] == PROTOCOL_VERSION
            ):
                raise UnsupportedVersionError(f"unsupported version {request['v']!r}")
            op = request.get("op")
            if not isinstance(op, str):
                raise BadRequestError("'op' must be a string")
            answer = self._ops().get(op)
            if answer is None:
                raise UnknownOpError(f"unknown op {op[:80]!r}")
            reply = _map(answer(request))
            return {**reply, "epoch": self.epoch, "instance": self.instance}

    def _ops(self) -> dict[str, Callable[[dict[str, Any]], OpReply]]:
        return {
            Op.PING: lambda _: PingReply(pong=True),
            Op.FIND_SERVER: lambda _: FindServerReply(_server(self.state.head)),
            Op.SERVERS: lambda _: ServersReply(_servers(self.state.active)),
            Op.STATUS: self._status,
            Op.NOTIFY_FAILED_SERVER: self._notify_failed,
            Op.ADD_PRIMARY_SERVER: self._add_primary,
            Op.SET_BACKUP_SERVERS: self._set_backups,
            Op.REMOVE_SERVER: self._remove,
            Op.HEARTBEAT: self._heartbeat,
            Op.REBALANCE: self._rebalance,
            Op.RESET_REBALANCE_TIMER: lambda _: ResetRebalanceTimerReply(self.next_rebalance_s),
        }

    def _commit(self, state: ProxyState, reason: ChangeReason) -> None:
        """Take ``state``; a new active server is one more epoch and one event."""
        changed = state.head != self.state.head
        self.state = state
        if changed:
            self.epoch += 1
            event = Event(
                server=_server(state.head), reason=reason, epoch=self.epoch, instance=self.instance
            )
            self.events.append(_map(event))

    def _status(self, _: dict[str, Any]) -> Status:
        state = self.state
        return Status(
            servers=_servers(state.active),
            primary=_servers(state.primaries),
            backup=_servers(state.backups),
            leader_addr=state.leader_addr,
            num_nodes=state.num_nodes,
            num_servers=len(state.active),
            next_rebalance_s=self.next_rebalance_s,
            heartbeat_age_s=None,
            publishers=[],
            offline=self.offline,
        )

    def _notify_failed(self, request: dict[str, Any]) -> NotifyFailedServerReply:
        state, rotated = notify_failed(self.state, _address(request))
        self._commit(state, "failed")
        return NotifyFailedServerReply(rotated, _server(state.head))

    def _add_primary(self, request: dict[str, Any]) -> AddPrimaryServerReply:
        addr = _address(request)
        try:
            state, added = add_primary(self.state, addr, max_servers=self.max_servers)
        except TooManyServersError as exc:
            raise BadRequestError(str(exc)) from None
        self._commit(state, "added")
        return AddPrimaryServerReply(Server(addr.canonical), added)

    def _set_backups(self, request: dict[str, Any]) -> SetBackupServersReply:
        texts = _key(request, "addrs", list)
        addrs = [_address({"addr": text}) for text in texts]
        try:
            state = set_backups(self.state, addrs, max_servers=self.max_servers)
        except TooManyServersError as exc:
            raise BadRequestError(str(exc)) from None
        self._commit(state, "backup")
        return SetBackupServersReply(_servers(state.backups))

    def _remove(self, request: dict[str, Any]) -> RemoveServerReply:
        state, removed = remove_server(self.state, _address(request))
        self._commit(state, "removed")
        return RemoveServerReply(removed)

    def _heartbeat(self, request: dict[str, Any]) -> HeartbeatReply:
        keys = {k: v for k, v in request.items() if k not in ("op", "v", "id")}
        try:
            payload = msgspec.convert(keys, HeartbeatPayload)
        except msgspec.ValidationError as exc:
            raise BadRequestError(str(exc)) from None
        heartbeat = Heartbeat(
            tuple(
                HeartbeatServer(
                    s.rpc_advertise_addr, s.rpc_major_version, s.rpc_minor_version, s.datacenter
                )
                for s in payload.servers
            ),
            payload.num_nodes,
            payload.leader_rpc_addr,
            payload.publisher,
            payload.seq,
        )
        outcome = apply_heartbeat(self.state, heartbeat, self.local)
        self._commit(outcome.state, "heartbeat")
        return HeartbeatReply(outcome.changed, outcome.stale)

    def _rebalance(self, _: dict[str, Any]) -> RebalanceReply:
        plan = plan_rebalance(self.state, self._rng)
        if plan is None:
            return RebalanceReply(_server(self.state.head), None)
        answered = {addr: self.healthy(addr.canonical) for addr in plan.candidates}
        head = choose_head(plan.candidates, answered)
        self.offline = head is None
        if head is not None:
            self._commit(reconcile(self.state, plan, head).state, "rebalance")
        return RebalanceReply(_server(self.state.head), head is not None)
