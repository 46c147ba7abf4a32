"""What the demo says besides its script (cli/demo_watch.py), and its discovery timing.

The whole demo, the last scene included, runs in
tests/integration/test_cli.py; these are the pieces whose mistakes it would
show only as a line missing or repeated.
"""

from __future__ import annotations

import logging

from rpcproxy.bus.client import Discovery, Server, Status
from rpcproxy.bus.service.discovery.part import LOOK_PERIOD_S
from rpcproxy.cli.demo_move import (
    MIN_REUSE_S,
    MOVE_AT_S,
    OPERATOR_REBALANCE_AT_S,
    discovery_settings,
)
from rpcproxy.cli.demo_watch import DiscoveryNews, ProxyLogLines


def status(discovery: Discovery | None, backups: tuple[str, ...] = ("10.0.0.5:4647",)) -> Status:
    servers = [Server(addr) for addr in backups]
    return Status(
        servers=servers,
        primary=[],
        backup=servers,
        leader_addr="",
        num_nodes=0,
        num_servers=len(servers),
        next_rebalance_s=5.0,
        discovery=discovery,
    )


def test_a_discovery_is_news_once_with_the_status_line() -> None:
    news = DiscoveryNews()
    assert news.news(status(None)) is None
    first = news.news(status(Discovery("consul", 1, 0.2)))
    assert first == "discovery: 1 servers from consul, 0.2s ago"
    # The same discovery, older: no news.
    assert news.news(status(Discovery("consul", 1, 0.5))) is None
    # A new round that found what the last one found: no news either.
    assert news.news(status(Discovery("consul", 1, 0.1))) is None


def test_a_new_round_that_changes_the_backups_is_news() -> None:
    news = DiscoveryNews()
    assert news.news(status(Discovery("consul", 1, 0.2), ("10.0.0.5:4647",)))
    moved = ("127.0.0.1:5001", "127.0.0.1:5002")
    line = news.news(status(Discovery("consul", 2, 0.1), moved), lambda a: f"<{a}>")
    assert line == "discovery: 2 servers from consul, 0.1s ago"
    # Changed backups without a new round (a heartbeat) are not a discovery's news.
    assert news.news(status(Discovery("consul", 2, 0.4), ("10.0.0.9:4647",))) is None


def test_proxy_log_lines_carry_warnings_and_discovery_info_only() -> None:
    said: list[str] = []
    discovery = logging.getLogger("rpcproxy.bus.service.discovery.part")
    before = logging.getLogger("rpcproxy.bus.service.discovery").level
    with ProxyLogLines(said.append):
        logging.getLogger("rpcproxy.actors.core").warning("offline: %s", "nobody answered")
        logging.getLogger("rpcproxy.actors.core").info("active server a -> b (failed)")
        discovery.info("discovery (%s, because %s): 3 servers", "consul", "offline")
        logging.getLogger("elsewhere").warning("not the proxy's")
    logging.getLogger("rpcproxy.actors.core").warning("after the run")
    assert said == [
        "proxy: offline: nobody answered",
        "proxy: discovery (consul, because offline): 3 servers",
    ]
    assert logging.getLogger("rpcproxy.bus.service.discovery").level == before


def test_the_scene_goes_offline_before_the_heartbeats_count_as_stale() -> None:
    # The story is "offline, then ask": staleness must come after the look
    # that follows the timer's latest rebalance, at any speed.
    latest_timer_after_move = OPERATOR_REBALANCE_AT_S + 1.5 * MIN_REUSE_S - MOVE_AT_S
    for speed in (0.5, 1.0, 4.0, 20.0):
        settings = discovery_settings(speed)
        offline_seen_by = latest_timer_after_move / speed + LOOK_PERIOD_S
        assert settings["heartbeat_stale_s"] > offline_seen_by
        assert settings["discover_interval_s"] < MOVE_AT_S / speed
