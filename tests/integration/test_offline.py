"""``status.offline`` and ``rpcproxy_offline`` through the real ``rpcproxy serve``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port
from tests.integration.serving import Serve, run_rpcproxy
from tests.integration.test_metrics import scrape, value
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

PING_TIMEOUT_S = 0.5


def dead_addr() -> str:
    """A loopback address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def test_offline_flips_with_the_rebalances(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    port = free_port()
    dead = [dead_addr(), dead_addr()]
    proxy = serve_factory(
        "--metrics",
        f"127.0.0.1:{port}",
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        "--primary-servers",
        ",".join(dead),
    )
    assert proxy.call("status")["offline"] is False
    assert value(poll_until(lambda: scrape(port), what="metrics"), "rpcproxy_offline") == 0

    assert proxy.call("rebalance")["healthy"] is False
    status = proxy.call("status")
    assert status["offline"] is True
    # Reported only: the head is still handed out.
    assert proxy.call("find_server")["server"]["addr"] == status["servers"][0]["addr"]
    assert value(scrape(port), "rpcproxy_offline") == 1
    shown = run_rpcproxy("status", "--query", proxy.query)
    assert shown.returncode == 0, shown.stderr
    assert "offline: yes" in shown.stdout

    live = standins().address
    assert proxy.call("add_primary_server", addr=live)["added"] is True
    assert proxy.call("rebalance")["healthy"] is True
    assert proxy.call("status")["offline"] is False
    assert value(scrape(port), "rpcproxy_offline") == 0
    assert proxy.call("find_server")["server"]["addr"] == live
    log = proxy.stderr()
    assert log.count("offline: no server answered") == 1
    assert log.count("back online") == 1
