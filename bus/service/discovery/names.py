"""What ``discover_dns`` and ``discover_dns_nameservers`` name (docs/protocol.md section 10).

Parsed once, when the configuration is read, so a typo is a start-up error
naming the key and the resolver only ever sees well-formed values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_DNS_PORT", "DnsName", "Nameserver", "parse_dns_name", "parse_nameserver"]

DEFAULT_DNS_PORT = 4647
"""The port of the servers an A or AAAA name lists when it names none: Nomad's RPC port."""

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class DnsName:
    """A name to discover servers under.

    ``srv`` when the name starts with ``_`` (``_nomad._rpc.service.consul``):
    its SRV records name the targets and their ports, and ``port`` is unused.
    """

    name: str
    port: int = DEFAULT_DNS_PORT

    @property
    def srv(self) -> bool:
        return self.name.startswith("_")

    def __str__(self) -> str:
        return self.name if self.srv else f"{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class Nameserver:
    """A DNS server to ask: an IP address and a port (53 by default)."""

    ip: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


def _port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise ValueError(f"port must be 1-65535, got {whole!r}")
    return int(text)


def parse_dns_name(text: str) -> DnsName:
    """``name`` or ``name:port``; a trailing dot is kept off; an SRV name takes no port.

    Raises:
        ValueError: not a DNS name (labels of letters, digits, ``-`` and
            ``_``, at most 63 characters each, 253 in all) or a bad port.
    """
    name, sep, port = text.strip().partition(":")
    name = name.rstrip(".")
    if not name or len(name) > _MAX_NAME or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(f"expected a DNS name or name:port, got {text!r}")
    if not sep:
        return DnsName(name.lower())
    if name.startswith("_"):
        raise ValueError(f"an SRV name takes its ports from its records, got {text!r}")
    return DnsName(name.lower(), _port(port, text))


def parse_nameserver(text: str) -> Nameserver:
    """``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``.

    Raises:
        ValueError: not an IP address (a name server is asked by address,
            or resolving it would need the very DNS it configures), or a bad port.
    """
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected ip, ip:port or [v6]:port, got {text!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected ip, ip:port or [v6]:port, got {text!r}") from None
    return Nameserver(str(ip), _port(port, text) if port else 53)
