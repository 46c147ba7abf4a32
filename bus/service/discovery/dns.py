"""DNS discovery (docs/protocol.md section 10): servers from A, AAAA and SRV records.

Asked with dnspython, not getaddrinfo: discovery must ask the name servers
``discover_dns_nameservers`` lists, at their ports, read SRV records, and
give each query a time limit, and getaddrinfo can do none of these.

Everything a name server sends is bounded (section 8): each query ends
within ``timeout_s`` (dnspython's lifetime, which covers the retry over TCP
after a truncated reply and every name server asked); a reply is at most a
DNS message (64 KiB); at most ``max_servers`` servers are kept per name and
per discovery, and at most ``max_servers`` SRV targets are followed per
name; a CNAME chain ends after dnspython's 16 links; and the warnings are
one line per discovery and kind, rate-limited by :class:`PeerLog`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from rpcproxy.bus.service.discovery.names import DnsName, Nameserver
from rpcproxy.bus.service.discovery.source import DiscoveryError, SourceName
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import Address

__all__ = ["MAX_NAMES", "DnsSource", "SrvTarget", "keep", "order_srv"]

MAX_NAMES = 64
"""The most names one source asks (section 10's bound)."""

_MAX_TEXT = 200
"""How much of a cause, or of the list of names, a line quotes."""
_MAX_SERVERS_PER_TRY = 3
"""The name servers a query's time is shared among (resolv.conf's own limit)."""

_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """One SRV record: a target name (lower case, no final dot), its port and rank."""

    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Iterable[SrvTarget]) -> list[SrvTarget]:
    """The order targets are followed in: priority ascending, weight descending, then name.

    RFC 2782 has clients pick among equal priorities at random, by weight;
    here the heaviest comes first and ties go by name, so an unchanged zone
    gives an unchanged list (and the proxy spreads its clients itself).
    """
    return sorted(records, key=lambda r: (r.priority, -r.weight, r.target, r.port))


def keep(groups: Iterable[Iterable[Address]], limit: int) -> tuple[Address, ...]:
    """The addresses in order, each once (its first place kept), at most ``limit``.

    Stops reading at ``limit``, so a huge group costs no more than a small one.
    """
    kept: dict[Address, None] = {}
    for group in groups:
        for address in group:
            if len(kept) >= limit:
                return tuple(kept)
            kept.setdefault(address, None)
    return tuple(kept)


class DnsSource:
    """The DNS source of section 10 (see the module's docstring for the bounds).

    Args:
        names: what ``discover_dns`` lists, asked in order (at most
            :data:`MAX_NAMES`). A name's A and AAAA records are servers at its
            port; an SRV name's records name targets whose A and AAAA records
            are servers at the record's port.
        nameservers: ``discover_dns_nameservers``; empty: the system's
            resolvers, read from /etc/resolv.conf at each discovery (so an
            edited file is seen without a restart).
        timeout_s: the most one query may take (``serve`` passes
            ``ping_timeout_s``).
        max_servers: the most servers kept per name and per discovery, and
            the most SRV targets followed per name.
        deadline_s: if given, the most one discovery may take; the queries it
            leaves unasked count as failed. Without it a discovery is bounded
            by its count of queries (at most 2 per A name, 1 + 2 *
            ``max_servers`` per SRV name), each within ``timeout_s``.
        log: where warnings go (rate-limited per kind).

    Raises:
        ValueError: no names, more than :data:`MAX_NAMES`, a name dnspython
            cannot read, or a bound that is not positive.
    """

    def __init__(
        self,
        names: Sequence[DnsName],
        nameservers: Sequence[Nameserver],
        timeout_s: float,
        max_servers: int,
        *,
        deadline_s: float | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if not names or len(names) > MAX_NAMES:
            raise ValueError(f"DNS discovery asks 1 to {MAX_NAMES} names, got {len(names)}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_servers < 1:
            raise ValueError(f"max_servers must be at least 1, got {max_servers}")
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self._names = tuple(names)
        # Read once here, so a name built without parse_dns_name fails now.
        try:
            self._qnames = tuple(dns.name.from_text(name.name) for name in names)
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"not a DNS name: {_line(exc)}") from None
        self._nameservers = tuple(nameservers)
        self._timeout_s = timeout_s
        self._max_servers = max_servers
        self._deadline_s = deadline_s
        self._closed = threading.Event()
        self._peer_log = PeerLog(log or logging.getLogger(__name__))

    @property
    def name(self) -> SourceName:
        return "dns"

    def close(self) -> None:
        """Make a discovery in flight end, and every later one raise DiscoveryError.

        A query already sent cannot be interrupted (dnspython's blocking API
        has no way to), so ``discover`` sees the flag when that query ends,
        before it sends the next: within ``timeout_s``, which is the bound
        ``serve``'s stop budget can count on.
        """
        self._closed.set()

    def discover(self) -> tuple[Address, ...]:
        """The servers the names list now (see :class:`DnsSource`).

        A name that does not exist or has no records gives nothing. Raises
        only when no name answered at all, so one broken name among good
        ones costs a warning, not the discovery.

        Raises:
            DiscoveryError: closed, no resolver configured, or every name
                failed (timeout, SERVFAIL, REFUSED, garbage); one line.
        """
        _check_open(self._closed)
        run = _Run(self._resolver(), self._closed, self._timeout_s, self._max_servers)
        if self._deadline_s is not None:
            run.deadline = time.monotonic() + self._deadline_s
        outcomes: list[tuple[DnsName, _Outcome]] = []
        found: dict[Address, None] = {}
        for name, qname in zip(self._names, self._qnames, strict=True):
            if len(found) >= self._max_servers:
                break  # enough: the remaining names are not asked
            outcome = run.srv_servers(qname) if name.srv else run.host_servers(qname, name.port)
            outcomes.append((name, outcome))
            found.update(dict.fromkeys(outcome.servers))
        _check_open(self._closed)
        failed = [(str(name), o.cause) for name, o in outcomes if o.cause and not o.servers]
        if len(failed) == len(outcomes):
            raise DiscoveryError(f"dns: {_summary(failed, len(outcomes))}")
        self._warn(outcomes)
        return tuple(found)[: self._max_servers]

    def _resolver(self) -> dns.resolver.Resolver:
        """A resolver for one discovery: no cache, no search list, our time limits."""
        try:
            resolver = dns.resolver.Resolver(configure=not self._nameservers)
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise DiscoveryError(f"dns: no system resolver: {_line(exc)}") from None
        if self._nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.ip, ns.port) for ns in self._nameservers
            ]
        resolver.cache = None
        resolver.search = []
        resolver.use_search_by_default = False
        resolver.lifetime = self._timeout_s
        # Each try gets a share, so a dead first server leaves time to ask the next.
        shared = max(1, min(len(resolver.nameservers), _MAX_SERVERS_PER_TRY))
        resolver.timeout = self._timeout_s / shared
        return resolver

    def _warn(self, outcomes: list[tuple[DnsName, _Outcome]]) -> None:
        """At most one line per kind for the whole discovery, rate-limited."""
        failed = [(str(name), o.cause) for name, o in outcomes if o.cause]
        if failed:
            summary = _summary(failed, len(outcomes))
            self._peer_log.warning("dns_failed", "DNS discovery: %s", summary)
        over = [str(name) for name, o in outcomes if o.over]
        if over:
            self._peer_log.warning(
                "dns_bound",
                "DNS discovery: kept the first %d servers of %s",
                self._max_servers,
                _cut(", ".join(over)),
            )


@dataclass(slots=True)
class _Outcome:
    """What one name gave: its servers, the error that ended it, whether it listed too many."""

    servers: list[Address]
    cause: str = ""
    over: bool = False


class _NoSuchNameError(Exception):
    """NXDOMAIN: the name has no records of any type."""


class _QueryError(Exception):
    """A query that got no usable answer; its text is one line, cut short."""


class _Run:
    """One discovery's queries: its resolver, its deadline, the source's closed flag."""

    def __init__(
        self,
        resolver: dns.resolver.Resolver,
        closed: threading.Event,
        timeout_s: float,
        max_servers: int,
    ) -> None:
        self.resolver = resolver
        self.closed = closed
        self.timeout_s = timeout_s
        self.max_servers = max_servers
        self.deadline: float | None = None

    def answer(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        """One query, within ``timeout_s`` (and the discovery's deadline).

        Raises:
            DiscoveryError: closed (checked before the query is sent).
            _NoSuchNameError: NXDOMAIN.
            _QueryError: no usable answer.
        """
        _check_open(self.closed)
        lifetime = self.timeout_s
        if self.deadline is not None:
            lifetime = min(lifetime, self.deadline - time.monotonic())
            if lifetime <= 0:
                raise _QueryError("the discovery's deadline passed")
        try:
            return self.resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=lifetime
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
            raise _NoSuchNameError from None
        except dns.exception.DNSException as exc:
            raise _QueryError(_line(exc)) from None
        except Exception as exc:
            # dnspython turns the failures it foresees into DNSException; a
            # reply that trips anything else is still only a bad reply, and
            # must not end the discovery's thread.
            raise _QueryError(f"unreadable reply: {_line(exc)}") from None

    def ips(self, qname: dns.name.Name, extra: dns.message.Message | None) -> tuple[list[_IP], str]:
        """``qname``'s A then AAAA addresses, and why the lookup ended early ("" if it did not).

        Each type's addresses are sorted, so an unchanged zone gives an
        unchanged list. ``extra``: an SRV reply whose additional section may
        already hold them.

        Raises:
            DiscoveryError: closed.
        """
        ips: list[_IP] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rrset = None
            if extra is not None:
                rrset = extra.get_rrset(extra.additional, qname, dns.rdataclass.IN, rdtype)
            if rrset is None:
                try:
                    rrset = self.answer(qname, rdtype).rrset
                except _NoSuchNameError:
                    break  # no AAAA either
                except _QueryError as exc:
                    return ips, str(exc)
            if rrset is not None:
                ips += sorted(_usable_ips(rrset), key=int)
        return ips, ""

    def host_servers(self, qname: dns.name.Name, port: int) -> _Outcome:
        """A name's A and AAAA records, servers at ``port``."""
        ips, cause = self.ips(qname, None)
        servers = keep([(Address(ip.compressed, port) for ip in ips)], self.max_servers)
        return _Outcome(list(servers), cause, over=len(ips) > self.max_servers)

    def srv_servers(self, qname: dns.name.Name) -> _Outcome:
        """An SRV name's targets in :func:`order_srv`'s order, each at its record's port."""
        try:
            answer = self.answer(qname, dns.rdatatype.SRV)
        except _NoSuchNameError:
            return _Outcome([])
        except _QueryError as exc:
            return _Outcome([], str(exc))
        targets: dict[str, dns.name.Name] = {}
        records: list[SrvTarget] = []
        for rd in answer.rrset or ():
            # Target "." says the service is not offered there (RFC 2782).
            if isinstance(rd, SRV) and rd.port > 0 and rd.target != dns.name.root:
                text = rd.target.to_text(omit_final_dot=True).lower()
                targets.setdefault(text, rd.target)
                records.append(SrvTarget(rd.priority, rd.weight, rd.port, text))
        outcome = _Outcome([], over=len(records) > self.max_servers)
        servers: dict[Address, None] = {}
        looked_up: dict[str, list[_IP]] = {}
        for record in order_srv(records)[: self.max_servers]:
            target = record.target
            if target not in looked_up:
                ips, cause = self.ips(targets[target], answer.response)
                looked_up[target] = ips
                if cause:
                    outcome.cause = f"{_cut(target)}: {cause}"
            for ip in looked_up[target]:
                servers.setdefault(Address(ip.compressed, record.port), None)
            if outcome.cause:
                # A target that fails ends the name: a slow server costs one
                # query's time per name, not one per target.
                break
            if len(servers) >= self.max_servers:
                outcome.over = outcome.over or len(servers) > self.max_servers
                break
        outcome.servers = list(servers)[: self.max_servers]
        return outcome


def _check_open(closed: threading.Event) -> None:
    if closed.is_set():
        raise DiscoveryError("closed")


def _usable_ips(rrset: dns.rrset.RRset) -> set[_IP]:
    """The addresses of an A or AAAA RRset that can be a server's (not 0.0.0.0, not multicast)."""
    ips: set[_IP] = set()
    for rd in rrset:
        if isinstance(rd, A | AAAA):
            ip = ipaddress.ip_address(rd.address)
            if not (ip.is_unspecified or ip.is_multicast):
                ips.add(ip)
    return ips


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _line(exc: BaseException) -> str:
    """An exception as one printable line, cut short (it may quote a peer's reply)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _cut("".join(c if c.isprintable() else "?" for c in text))


def _summary(failed: list[tuple[str, str]], asked: int) -> str:
    """``2 of 3 names failed (a.example:4647, _x._tcp.example): <the first cause>``."""
    names = _cut(", ".join(name for name, _ in failed))
    return f"{len(failed)} of {asked} names failed ({names}): {failed[0][1]}"
