"""What a discovery source is: something that can be asked for the servers it knows.

A source is asked from the discovery's own thread (never the actor's); it
may block for at most its own deadline, and ``close`` makes a call in
flight return (or raise) at once, so ``serve`` stops within its budget.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias, get_args

from rpcproxy.proxy import Address

__all__ = [
    "DISCOVERY_RESULTS",
    "SOURCE_NAMES",
    "DiscoveryError",
    "DiscoveryResult",
    "DiscoverySource",
    "SourceName",
]

SourceName: TypeAlias = Literal["consul", "dns"]
"""The ``source`` of ``status``'s ``discovery`` and of the metrics' label."""

DiscoveryResult: TypeAlias = Literal["found", "empty", "failed"]
"""How one source's discovery ended (the ``result`` label of ``rpcproxy_discoveries``)."""

SOURCE_NAMES: tuple[SourceName, ...] = get_args(SourceName)
DISCOVERY_RESULTS: tuple[DiscoveryResult, ...] = get_args(DiscoveryResult)


class DiscoveryError(Exception):
    """A discovery that failed (no answer, a refusal, a reply of the wrong shape).

    The message is one line, safe to log: it never holds a token, and what it
    quotes of a peer's reply is cut short.
    """


class DiscoverySource(Protocol):
    """One source of section 10: Consul's catalog or DNS."""

    @property
    def name(self) -> SourceName: ...

    def discover(self) -> tuple[Address, ...]:
        """The servers the source lists now, in its order, without duplicates.

        Empty when it lists none.

        Raises:
            DiscoveryError: the source could not be asked, or its answer
                could not be read.
        """
        ...

    def close(self) -> None:
        """End a ``discover`` in flight at once; later calls raise DiscoveryError."""
        ...
