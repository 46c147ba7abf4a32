"""Parallel server pings for rebalancing (PROTOCOL.md section 4).

The reference pinged candidates one after another, so k dead servers at the
head of the list cost k timeouts. Here every candidate is pinged at once and
the call returns as soon as the *first candidate in order* that answers is
known, or when the single shared deadline passes. A pinger runs on its own
thread (the pinger actor's), which may block for about one timeout.

Both pingers honour the same return contract (see ``Pinger``), decided by
``prefix_decided`` and built by ``prefix_results``.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import msgspec
import zmq

from proxy.address import Address

__all__ = [
    "Pinger",
    "TcpPinger",
    "ZmqPinger",
    "prefix_decided",
    "prefix_results",
]

Pinger: TypeAlias = Callable[[Sequence[Address]], dict[Address, bool]]
"""Pings candidates in parallel and reports, in candidate order, every result
up to and including the first ``True`` (all ``False`` when none answered). A
candidate missing from the result counts as failed."""


def prefix_decided(results: Sequence[bool | None]) -> bool:
    """Whether the first success in candidate order is already known.

    ``results[i]`` is ``None`` while candidate ``i`` is still pending. The
    prefix is decided once some candidate answered and every earlier one
    failed, or once every candidate failed: later answers cannot change which
    server a rebalance picks, so there is no reason to keep waiting.
    """
    for result in results:
        if result is None:
            return False
        if result:
            return True
    return True


def prefix_results(
    candidates: Sequence[Address], results: Sequence[bool | None]
) -> dict[Address, bool]:
    """The ``Pinger`` return value: results up to the first success.

    Pending candidates count as failed, which is what they are once the
    deadline has passed.
    """
    out: dict[Address, bool] = {}
    for addr, result in zip(candidates, results, strict=True):
        out[addr] = bool(result)
        if result:
            break
    return out


class _Reply(msgspec.Struct):
    """Only ``ok`` matters; typed decoding skips other keys without building
    them, so a hostile reply cannot make us allocate deep structures."""

    ok: bool = False


_REPLY_DECODER = msgspec.msgpack.Decoder(_Reply)


def _is_ok_reply(frame: bytes) -> bool:
    try:
        return _REPLY_DECODER.decode(frame).ok
    except (msgspec.MsgspecError, RecursionError):
        return False


class ZmqPinger:
    """Pings servers with the ZeroMQ ``ping`` op, one DEALER per candidate.

    Sockets are created and closed inside ``__call__``, so they belong to the
    calling thread only. A fresh DEALER per call costs little next to a
    rebalance interval of minutes, and avoids a stale reply from an earlier
    round being taken for a fresh answer.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        region: str,
        rpc_major_version: int,
        timeout_s: float,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self._context = context
        self._timeout_s = timeout_s
        self._max_message_bytes = max_message_bytes
        self._payload = msgspec.msgpack.encode(
            {"op": "ping", "region": region, "rpc_major_version": rpc_major_version}
        )

    def __call__(self, candidates: Sequence[Address]) -> dict[Address, bool]:
        # A server listed twice is pinged once; the result is the same.
        unique = list(dict.fromkeys(candidates))
        results: list[bool | None] = [None] * len(unique)
        deadline = time.monotonic() + self._timeout_s
        poller = zmq.Poller()
        sockets: dict[zmq.Socket[bytes], int] = {}
        try:
            for index, addr in enumerate(unique):
                sock = self._open(addr)
                if sock is None:
                    results[index] = False
                    continue
                sockets[sock] = index
                poller.register(sock, zmq.POLLIN)
            while not prefix_decided(results):
                remaining_ms = (deadline - time.monotonic()) * 1000
                if remaining_ms <= 0:
                    break
                for sock, _ in poller.poll(max(1, int(remaining_ms))):
                    poller.unregister(sock)
                    results[sockets[sock]] = self._read(sock)
        finally:
            for sock in sockets:
                sock.close(linger=0)
        return prefix_results(unique, results)

    def _open(self, addr: Address) -> zmq.Socket[bytes] | None:
        """A DEALER with the ping already queued, or None if that failed."""
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IPV6, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            sock.connect(f"tcp://{addr.canonical}")
            # DEALER queues before the connection is up, so this never
            # waits; NOBLOCK guards against a change of that default.
            sock.send_multipart([b"", self._payload], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            sock.close(linger=0)
            return None
        return sock

    @staticmethod
    def _read(sock: zmq.Socket[bytes]) -> bool:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        return _is_ok_reply(frames[-1])


_Sockaddr: TypeAlias = tuple[Any, ...]
_AddrInfo: TypeAlias = tuple[socket.AddressFamily, _Sockaddr]
_MAX_ADDRESSES_PER_NAME = 4
_IN_PROGRESS = {0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}


class TcpPinger:
    """Pings servers by opening a TCP connection (``ping_method = "tcp"``).

    Connections are non-blocking and watched by one ``selectors`` selector, so
    no thread is spent on IP literals, which is what servers advertise in
    practice, and every socket is closed before returning. DNS names are the
    exception: ``getaddrinfo`` blocks and cannot be cancelled, so each name is
    resolved on a daemon thread (a daemon, unlike a pool worker, never delays
    interpreter exit while stuck on a slow resolver). Its answer is handed back
    through a queue and a socketpair that wakes the selector, and connects
    then start under the same deadline. A name that resolves to several
    addresses is tried on a few of them at once, so ``localhost`` answering on
    only one of IPv4 or IPv6 still counts.
    """

    def __init__(self, *, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def __call__(self, candidates: Sequence[Address]) -> dict[Address, bool]:
        unique = list(dict.fromkeys(candidates))
        run = _TcpRun(len(unique))
        deadline = time.monotonic() + self._timeout_s
        try:
            for index, addr in enumerate(unique):
                infos = _numeric_addrinfo(addr)
                if infos is None:
                    run.resolve_in_background(index, addr)
                else:
                    run.connect(index, infos)
            while not prefix_decided(run.results):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                run.wait(remaining)
        finally:
            run.close()
        return prefix_results(unique, run.results)


def _numeric_addrinfo(addr: Address) -> list[_AddrInfo] | None:
    """Addrinfo for an IP literal without touching DNS, or None for a name."""
    try:
        infos = socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        return None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


class _TcpRun:
    """The sockets and per-candidate state of one ``TcpPinger`` call."""

    def __init__(self, count: int) -> None:
        self.results: list[bool | None] = [None] * count
        # Connect attempts plus pending resolutions per candidate: a candidate
        # fails only when all of them have.
        self._outstanding = [0] * count
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Resolver threads may outlive the call; the lock keeps one from
        # writing to the wake socket while (or after) it is being closed.
        self._wake_lock = threading.Lock()
        self._closed = False
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._resolved: queue.SimpleQueue[tuple[int, list[_AddrInfo]]] = queue.SimpleQueue()

    def resolve_in_background(self, index: int, addr: Address) -> None:
        self._outstanding[index] += 1
        threading.Thread(
            target=self._resolve,
            args=(index, addr),
            name=f"tcp-ping-resolve-{addr.host}",
            daemon=True,
        ).start()

    def _resolve(self, index: int, addr: Address) -> None:
        found: list[_AddrInfo]
        try:
            infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
            found = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        except (OSError, UnicodeError):
            found = []
        self._resolved.put((index, found[:_MAX_ADDRESSES_PER_NAME]))
        with self._wake_lock:
            if self._closed:
                return
            # A full buffer already holds wake-ups, so the selector will wake.
            with contextlib.suppress(BlockingIOError):
                self._wake_w.send(b"\0")

    def connect(self, index: int, infos: list[_AddrInfo]) -> None:
        for family, sockaddr in infos:
            self._outstanding[index] += 1
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                self._attempt_failed(index)
                continue
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err not in _IN_PROGRESS:
                sock.close()
                self._attempt_failed(index)
            else:
                self._selector.register(sock, selectors.EVENT_WRITE, index)

    def wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_resolved()
                continue
            index: int = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            self._selector.unregister(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sock.close()
            if err == 0:
                self.results[index] = True
            else:
                self._attempt_failed(index)

    def _drain_resolved(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while not self._resolved.empty():
            index, infos = self._resolved.get_nowait()
            self.connect(index, infos)
            self._attempt_failed(index)  # The resolution itself is done.

    def _attempt_failed(self, index: int) -> None:
        self._outstanding[index] -= 1
        if self._outstanding[index] == 0 and self.results[index] is None:
            self.results[index] = False

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            if key.data is not None:
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        with self._wake_lock:
            self._closed = True
            self._wake_r.close()
            self._wake_w.close()
