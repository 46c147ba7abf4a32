"""Discovery's part of ``serve``, built from the configuration (docs/protocol.md section 10)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka

from rpcproxy.actors import SnapshotBox
from rpcproxy.bus.service.counts import ServiceCounts
from rpcproxy.bus.service.discovery import DiscoverySource
from rpcproxy.bus.service.discovery.consul import ConsulSettings, ConsulSource
from rpcproxy.bus.service.discovery.dns import DnsSource
from rpcproxy.bus.service.discovery.part import Discoverer
from rpcproxy.bus.service.http_fetch import fetch_deadline
from rpcproxy.cli.config import Config, ConfigError

__all__ = ["discoverer_from", "sources_from"]


def sources_from(config: Config) -> list[DiscoverySource]:
    """The configured sources, Consul's catalog first (it knows which servers pass
    their checks; a DNS record says only that a name was once given an address).

    Raises:
        ConfigError: Consul's TLS variables name files that cannot be used,
            or an unreadable ``CONSUL_HTTP_SSL_VERIFY``, or more DNS names
            than a discovery asks; ``serve`` exits 2.
    """
    # Each discovery as a whole ends within the deadline a poller of this
    # interval has (2 to 10 s), so a stalled source delays nothing for long.
    deadline_s = fetch_deadline(config.discover_interval_s)
    sources: list[DiscoverySource] = []
    if config.consul_addr:
        try:
            settings = ConsulSettings.from_env(
                config.consul_addr, service=config.consul_service, tag=config.consul_tag
            )
            sources.append(
                ConsulSource(settings, max_servers=config.max_servers, deadline_s=deadline_s)
            )
        except (OSError, ValueError) as exc:
            raise ConfigError("consul_addr", f"Consul API: {exc}") from None
    if config.discover_dns:
        try:
            dns = DnsSource(
                config.discover_dns,
                config.discover_dns_nameservers,
                config.ping_timeout_s,
                config.max_servers,
                deadline_s=deadline_s,
            )
        except ValueError as exc:  # more names than a discovery asks
            raise ConfigError("discover_dns", str(exc)) from None
        sources.append(dns)
    return sources


def discoverer_from(
    config: Config,
    sources: Sequence[DiscoverySource],
    box: SnapshotBox,
    proxy: pykka.ActorRef[Any],
    metrics: ServiceCounts,
) -> Discoverer | None:
    """The discovery part over ``sources`` (:func:`sources_from`); None when there are none."""
    if not sources:
        return None
    return Discoverer(
        sources,
        box,
        proxy,
        interval_s=config.discover_interval_s,
        stale_s=config.heartbeat_stale_s,
        metrics=metrics,
    )
