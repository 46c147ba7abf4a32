"""Server addresses: syntactic parsing and the canonical form.

Two addresses name the same server when their canonical forms are equal, so
``10.0.0.1`` and ``10.0.0.1:4647`` are one server (the reference compared raw
strings and counted them twice). Parsing never touches DNS: accepting an
address must not block the proxy's only writer.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORT = 4647
"""Nomad's RPC port, used when an address names no port."""

_MAX_ADDRESS_LEN = 300
_ZONE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Used with fullmatch: a "$" anchor would also accept a label ending in "\n".
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class InvalidAddressError(ValueError):
    """An address that does not parse; the message says why."""


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A server's RPC address in canonical form.

    ``host`` is a lower-case DNS name, a normalised IPv4 literal, or a
    compressed IPv6 literal (without brackets). Equality and hashing follow the
    canonical form, so an ``Address`` can key dicts and sets directly.
    """

    host: str
    port: int

    @property
    def canonical(self) -> str:
        """``host:port``, or ``[v6]:port`` for IPv6 literals."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.canonical


def parse_address(text: str) -> Address:
    """Parse ``host:port``, ``host``, ``[v6]:port`` or ``[v6]``.

    Raises:
        InvalidAddressError: the text is not one of those forms, the host is
            neither a DNS name nor an IP literal, or the port is not 1-65535.
    """
    if not isinstance(text, str):
        raise InvalidAddressError(f"address must be a string, got {type(text).__name__}")
    return _parse_text(text)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Address:
    """The parse itself, memoised: every heartbeat repeats the same few addresses.

    Parsing is a pure function of the text, so caching cannot change a result;
    errors are not cached, and the cache is bounded.
    """
    if not text or len(text) > _MAX_ADDRESS_LEN:
        raise InvalidAddressError(f"address {text[:40]!r} is empty or too long")
    if text.startswith("["):
        host_text, port_text = _split_bracketed(text)
        host = _parse_ipv6(host_text, text)
    else:
        if text.count(":") > 1:
            raise InvalidAddressError(
                f"address {text!r}: IPv6 literals must be written in brackets, e.g. [::1]:4647"
            )
        host_text, sep, port_text_raw = text.partition(":")
        port_text = port_text_raw if sep else None
        if sep and not port_text_raw:
            raise InvalidAddressError(f"address {text!r}: empty port")
        host = _parse_host(host_text, text)
    port = DEFAULT_PORT if port_text is None else _parse_port(port_text, text)
    return Address(host, port)


def _split_bracketed(text: str) -> tuple[str, str | None]:
    close = text.find("]")
    if close < 0:
        raise InvalidAddressError(f"address {text!r}: missing ']'")
    rest = text[close + 1 :]
    if not rest:
        return text[1:close], None
    if not rest.startswith(":") or len(rest) == 1:
        raise InvalidAddressError(f"address {text!r}: expected ':port' after ']'")
    return text[1:close], rest[1:]


def _parse_ipv6(host_text: str, text: str) -> str:
    _, percent, zone = host_text.partition("%")
    if percent and not _ZONE_ID.fullmatch(zone):
        # ipaddress accepts any zone text, newlines and spaces included.
        raise InvalidAddressError(f"address {text!r}: bad IPv6 zone {zone!r}")
    try:
        return ipaddress.IPv6Address(host_text).compressed
    except ValueError:
        raise InvalidAddressError(
            f"address {text!r}: {host_text!r} is not an IPv6 literal"
        ) from None


def _parse_host(host_text: str, text: str) -> str:
    if not host_text:
        raise InvalidAddressError(f"address {text!r}: empty host")
    if not host_text.isascii():
        # Checked before lower(): "\u212a" (Kelvin sign) lower-cases to "k".
        raise InvalidAddressError(f"address {text!r}: {host_text!r} is not a valid host name")
    name = host_text.lower().removesuffix(".")
    if all(part.isdigit() for part in name.split(".")):
        # All-numeric dotted text is meant as IPv4 (also with a trailing dot);
        # reject 300.1.1.1 rather than treating it as a DNS name.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise InvalidAddressError(
                f"address {text!r}: {host_text!r} is not an IPv4 literal"
            ) from None
    labels = name.split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddressError(f"address {text!r}: {host_text!r} is not a valid host name")
    return name


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise InvalidAddressError(f"address {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidAddressError(f"address {text!r}: port {port} is outside 1-65535")
    return port
