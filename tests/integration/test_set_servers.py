"""``set_servers`` and ``rpcproxy servers`` against a real ``serve`` and servers (sections 1, 6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rpcproxy import BadRequestError, ProxyClient, ProxyInvalidAddressError, UnavailableError
from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port
from tests.integration.serving import Serve, addrs, run_rpcproxy

pytestmark = pytest.mark.integration

PING_TIMEOUT_S = "0.5"


def dead(count: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


def test_the_servers_that_answer_become_the_primaries(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    old, new = standins().address, standins().address
    [gone] = dead(1)
    proxy = serve_factory(
        "--ping-timeout-s", PING_TIMEOUT_S, "--primary-servers", old, "--backup-servers", gone
    )
    with ProxyClient(proxy.query, timeout_s=5.0) as client:
        result = client.set_servers([new, gone, new])
        assert [s.addr for s in result.servers] == [new]
        assert [s.addr for s in result.dropped] == [gone]
        status = client.status()
    assert [s.addr for s in status.primary] == [new]
    # The old primary left; the backup stays (it is still a backup), behind the new primary.
    assert [s.addr for s in status.servers] == [new, gone]


def test_nobody_answering_is_unavailable_and_changes_nothing(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    old = standins().address
    proxy = serve_factory("--ping-timeout-s", PING_TIMEOUT_S, "--primary-servers", old)
    before = proxy.call("status")
    with (
        ProxyClient(proxy.query, timeout_s=5.0) as client,
        pytest.raises(UnavailableError, match="no server answered"),
    ):
        client.set_servers(dead(3))
    after = proxy.call("status")
    assert (after["primary"], after["servers"], after["epoch"]) == (
        before["primary"],
        before["servers"],
        before["epoch"],
    )


def test_force_keeps_every_address_without_probing(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory("--ping-timeout-s", PING_TIMEOUT_S)
    nowhere = dead(2)
    reply = proxy.call("set_servers", addrs=nowhere, force=True)
    assert (addrs(reply["servers"]), reply["dropped"]) == (nowhere, [])
    assert addrs(proxy.call("servers")["servers"]) == nowhere


@pytest.mark.parametrize(
    ("addrs_sent", "error"),
    [
        ([], BadRequestError),
        (["10.0.0.1", "10.0.0.2", "10.0.0.3"], BadRequestError),  # over --max-servers 2
        (["10.0.0.1", "no spaces allowed"], ProxyInvalidAddressError),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    serve_factory: Callable[..., Serve], addrs_sent: list[str], error: type[Exception]
) -> None:
    proxy = serve_factory("--max-servers", "2", "--primary-servers", "10.9.9.9")
    with ProxyClient(proxy.query, timeout_s=5.0) as client:
        with pytest.raises(error):
            client.set_servers(addrs_sent, force=True)
        assert [s.addr for s in client.servers()] == ["10.9.9.9:4647"]


def test_the_servers_command_lists_and_sets(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    live = standins().address
    [gone] = dead(1)
    proxy = serve_factory("--ping-timeout-s", PING_TIMEOUT_S, "--primary-servers", "10.9.9.9")

    listed = run_rpcproxy("servers", "--query", proxy.query)
    assert (listed.returncode, listed.stdout) == (0, "10.9.9.9:4647\n")

    done = run_rpcproxy("servers", "set", live, gone, "--query", proxy.query)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"kept     {live}",
        f"dropped  {gone}  (did not answer)",
    ]
    assert run_rpcproxy("servers", "--query", proxy.query).stdout == f"{live}\n"

    refused = run_rpcproxy("servers", "--query", proxy.query, "set", gone)
    assert refused.returncode == 1
    assert refused.stderr.startswith("rpcproxy servers set: unavailable: no server answered")
    assert run_rpcproxy("servers", "--query", proxy.query).stdout == f"{live}\n"


def test_the_servers_command_without_a_proxy_fails_with_one_line() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = run_rpcproxy("servers", "--query", endpoint, "--timeout", "0.2")
    assert result.returncode == 1
    assert result.stderr.startswith(f"rpcproxy servers: {endpoint}: ")
    assert len(result.stderr.splitlines()) == 1
