"""Name resolution for pings, off every shared thread and bounded (docs/protocol.md section 4).

libzmq resolves a DNS name on the I/O thread of the socket's context, so one
name whose lookup hangs would stall every socket sharing that thread. Probers
therefore hand libzmq (and their own TCP sockets) IP literals only, and
resolve names here first, with Python's ``getaddrinfo`` on daemon threads.

A stuck ``getaddrinfo`` cannot be cancelled: a caller stops *waiting* at its
ping's deadline, but the thread runs until the system resolver gives up. A
heartbeat can list thousands of names that all hang, so the number of
lookups running at once is capped for the whole process, and a name asked for
while the cap is reached fails at once instead of queueing behind stuck ones.
A name already being looked up is joined, not looked up again, so the next
rebalance over the same black-hole names starts no new thread.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

from rpcproxy.proxy import Address

__all__ = [
    "DEFAULT_MAX_LOOKUPS",
    "MAX_ADDRESSES_PER_NAME",
    "Endpoint",
    "Lookup",
    "Resolver",
    "numeric_endpoints",
    "shared_resolver",
]

log = logging.getLogger(__name__)

Sockaddr: TypeAlias = tuple[Any, ...]
Endpoint: TypeAlias = tuple[socket.AddressFamily, Sockaddr]
"""A resolved address to connect to: the family and a ``socket.connect`` tuple
(``(ip, port)`` or ``(ip, port, flowinfo, scope_id)``), the IP a literal."""

GetAddrInfo: TypeAlias = Callable[..., list[tuple[Any, ...]]]

DEFAULT_MAX_LOOKUPS = 64
"""Lookups running at once in the process. Each may hold a UDP socket or two
to the name server, which the ping window's descriptor budget accounts for."""

MAX_ADDRESSES_PER_NAME = 4
"""A name is tried on this many of its addresses at once, so ``localhost``
answering on only one of IPv4 or IPv6 still counts, and a name with hundreds
of records costs no more than a few sockets."""


def numeric_endpoints(addr: Address) -> list[Endpoint] | None:
    """Endpoints of an IP literal, without touching DNS; None for a name."""
    try:
        infos = socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except (socket.gaierror, UnicodeError):
        return None
    return _endpoints(infos, addr.port)


def _endpoints(infos: list[tuple[Any, ...]], port: int) -> list[Endpoint]:
    found: list[Endpoint] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        endpoint: Endpoint = (family, (sockaddr[0], port, *sockaddr[2:]))
        if endpoint not in found:
            found.append(endpoint)
        if len(found) == MAX_ADDRESSES_PER_NAME:
            break
    return found


OnResolved: TypeAlias = Callable[[list[Endpoint]], None]
"""Called on the resolver thread with the name's endpoints (empty when the
lookup failed). It must be quick and must not raise: hand the result over."""


class Lookup:
    """One running ``getaddrinfo`` and the callers waiting for it."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.waiters: list[tuple[int, OnResolved]] = []


class Resolver:
    """Resolves names on daemon threads, at most ``max_lookups`` at once.

    Daemon threads, unlike a pool's workers, never hold up interpreter exit
    while stuck on a silent name server, so ``serve`` still exits on time.

    Args:
        max_lookups: cap on ``getaddrinfo`` calls running at once; a new name
            asked for at the cap fails at once.
        getaddrinfo: the lookup function (tests pass one that blocks).
    """

    def __init__(
        self,
        max_lookups: int = DEFAULT_MAX_LOOKUPS,
        *,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    ) -> None:
        if max_lookups < 1:
            raise ValueError("max_lookups must be at least 1")
        self.max_lookups = max_lookups
        self._getaddrinfo = getaddrinfo
        self._lock = threading.Lock()
        self._running: dict[str, Lookup] = {}

    @property
    def running(self) -> int:
        """How many lookups are running now (stuck ones included)."""
        with self._lock:
            return len(self._running)

    @property
    def waiting(self) -> int:
        """How many callers wait for a running lookup (cancelled ones are gone)."""
        with self._lock:
            return sum(len(lookup.waiters) for lookup in self._running.values())

    def resolve(self, addr: Address, on_resolved: OnResolved) -> Lookup | None:
        """Start resolving ``addr`` (or join the lookup of its host already running).

        ``on_resolved`` is called later, on the resolver's thread, unless
        :meth:`cancel` came first.

        Returns:
            The lookup to pass to :meth:`cancel`, or None when the cap is
            reached and the name fails at once (``on_resolved`` is never called).
        """
        with self._lock:
            lookup = self._running.get(addr.host)
            if lookup is None:
                if len(self._running) >= self.max_lookups:
                    return None
                lookup = Lookup(addr.host)
                thread = threading.Thread(
                    target=self._run, args=(lookup,), name="ping-resolve", daemon=True
                )
                try:
                    # Under the lock, so nobody joins a lookup whose thread
                    # could not start; the thread takes the lock only at its end.
                    thread.start()
                except RuntimeError:
                    # No thread to be had (a process limit): the name fails now.
                    return None
                self._running[addr.host] = lookup
            lookup.waiters.append((addr.port, on_resolved))
        return lookup

    def cancel(self, lookup: Lookup, on_resolved: OnResolved) -> None:
        """Stop waiting for ``lookup``; the thread itself runs to its end."""
        with self._lock:
            lookup.waiters = [w for w in lookup.waiters if w[1] != on_resolved]

    def _run(self, lookup: Lookup) -> None:
        try:
            # The port is filled in per waiter, so one lookup serves every port.
            infos = self._getaddrinfo(lookup.host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        except Exception:
            log.exception("resolving %r failed", lookup.host)
            infos = []
        with self._lock:
            del self._running[lookup.host]
            waiters, lookup.waiters = lookup.waiters, []
        for port, on_resolved in waiters:
            on_resolved(_endpoints(infos, port))


_shared = Resolver()


def shared_resolver() -> Resolver:
    """The process's resolver: its cap holds across every prober and every call."""
    return _shared
