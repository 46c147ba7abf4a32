"""What the demo tells besides its script and the events: the proxy's own words.

Two sources, each for what the other cannot show:

- :class:`DiscoveryNews` reads each status the demo takes and yields the
  status's discovery line when a discovery brings news (the proxy publishes
  no event for a discovery that does not move the active server);
- :class:`ProxyLogLines` turns the proxy's warnings (a rebalance that found
  nobody, going offline) and discovery's one line per new answer (which
  says why it asked) into demo lines. Without it the warnings would go to
  stderr unformatted, into the middle of the live view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rpcproxy.bus.client import Status
from rpcproxy.cli.status import render_status

__all__ = ["DiscoveryNews", "ProxyLogLines"]


class DiscoveryNews:
    """The status's ``discovery:`` line, once for each discovery that found something new.

    A discovery repeats every ``discover_interval_s`` while the heartbeats
    are stale; one that finds what the last one found is no news.
    """

    def __init__(self) -> None:
        self._age_s: float | None = None
        self._told: tuple[object, ...] | None = None

    def news(self, status: Status, label: Callable[[str], str] = str) -> str | None:
        """The discovery line of ``status`` if it is news, else None."""
        found = status.discovery
        if found is None:
            return None
        # The age only grows between two discoveries: a smaller one is a new one.
        fresh = self._age_s is None or found.age_s < self._age_s
        self._age_s = found.age_s
        what = (found.source, found.found, tuple(s.addr for s in status.backup))
        if not fresh or what == self._told:
            return None
        self._told = what
        # The very line `rpcproxy status` prints, not a paraphrase of it.
        lines = render_status(status, label).splitlines()
        return next(line for line in lines if line.startswith("discovery: "))


DISCOVERY_LOGGER = "rpcproxy.bus.service.discovery"
"""Its only info line is one per new answer: "discovery (consul, because offline): ..."."""


class ProxyLogLines(logging.Handler):
    """Hands the proxy's warnings, and discovery's info, to ``say``.

    A context manager: it attaches to the ``rpcproxy`` logger, and lets the
    discovery loggers' info through, for the run only.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._say = say
        self._logger = logging.getLogger("rpcproxy")
        self._discovery = logging.getLogger(DISCOVERY_LOGGER)
        self._discovery_level = self._discovery.level

    def filter(self, record: logging.LogRecord) -> bool:
        # Every other info line (each membership change, each move) would
        # repeat the events the demo already shows.
        return record.levelno >= logging.WARNING or record.name.startswith(DISCOVERY_LOGGER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._say(f"proxy: {record.getMessage()}")
        except Exception:
            self.handleError(record)

    def __enter__(self) -> ProxyLogLines:
        self._logger.addHandler(self)
        self._discovery.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._discovery.setLevel(self._discovery_level)
        self._logger.removeHandler(self)
