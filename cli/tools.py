"""Small commands around the proxy, for containers, scripts and health checks.

``fake-server`` stands in for a Nomad server, ``publish`` for the servers'
heartbeats, ``client-loop`` for a Nomad client using the proxy, and ``ping``
is the health check of both the proxy and a server.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import zmq

from rpcproxy.bus.client import ProxyClient, ProxyError
from rpcproxy.bus.net.keys import CurveClient, create_key_pair
from rpcproxy.bus.probes import NomadProber, TcpProber, WindowedProber, ZmqProber
from rpcproxy.bus.standins import Protocol
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.bus.wire import DEFAULT_QUERY_ENDPOINT
from rpcproxy.proxy import HeartbeatServer, InvalidAddressError, parse_address

if TYPE_CHECKING:
    # Loaded by the publish command only (it brings the HTTP client).
    from rpcproxy.bus.service.nomad_http import NomadApiSettings

PING_METHODS = ("nomad", "zmq", "tcp")
"""What ``ping --server`` and ``client-loop`` ping servers with, as ``ping_method``."""


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, for loops that should end cleanly."""
    stopping = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stopping


def server_prober(method: str, timeout_s: float) -> WindowedProber:
    """A prober of servers as ``ping_method = method`` pings them (plain TCP for nomad)."""
    if method == "tcp":
        return TcpProber(timeout_s=timeout_s)
    if method == "zmq":
        return ZmqProber(region="global", rpc_major_version=1, timeout_s=timeout_s)
    return NomadProber(timeout_s=timeout_s)


def run_fake_server(bind: str, protocol: Protocol = "nomad") -> int:
    """Answer pings (Nomad's ``Status.Ping``, or zmq's) on ``bind`` until SIGINT or SIGTERM."""
    # Loaded here, not with the CLI: a stand-in brings ssl, which serve never needs.
    from rpcproxy.bus.standins.standin import ServerStandIn  # noqa: PLC0415

    standin = ServerStandIn(bind, protocol=protocol)
    stopping = stop_on_signals()
    try:
        standin.start()
    except (zmq.ZMQError, OSError, ValueError) as exc:
        print(f"rpcproxy fake-server: cannot bind {bind}: {exc}", file=sys.stderr)
        return 1
    print(f"fake-server answering {protocol} pings on {standin.endpoint}", flush=True)
    try:
        stopping.wait()
    finally:
        standin.stop()
    return 0


STATIC_INTERVAL_S = 1.0
"""``publish --interval-s`` for a static list when not given: it costs nothing to send."""

NOMAD_INTERVAL_S = 10.0
"""``publish --interval-s`` for Nomad's API when not given (docs/protocol.md section 7):
every poll costs the agent a request."""

PublishSource = Literal["static", "nomad"]


class PublishUsageError(ValueError):
    """``publish`` was given no source, or two: nothing is sent, exit 2."""


def publish_source(
    *,
    servers: Sequence[str] | None,
    servers_file: str | None,
    nomad_addr: str | None,
    env: Mapping[str, str],
) -> PublishSource:
    """Which source ``publish`` follows (docs/protocol.md section 7, last paragraph).

    A static list when ``--servers`` or ``--servers-file`` is given; otherwise
    Nomad's API when ``--nomad-addr`` is given or ``NOMAD_ADDR`` is set (a
    shell set up for the ``nomad`` CLI needs no more). Checked before any
    socket is opened, so a refused command has published nothing.

    Args:
        servers: ``--servers`` as parsed; None when the flag was not given.
        servers_file: ``--servers-file``; None when not given.
        nomad_addr: ``--nomad-addr``; None when not given.
        env: the environment, for ``NOMAD_ADDR``.

    Raises:
        PublishUsageError: no source, both a static list and ``--nomad-addr``,
            or a flag given empty; the message is one line.
    """
    if nomad_addr is not None and not nomad_addr.strip():
        raise PublishUsageError("--nomad-addr is empty: give the agent's URL")
    if servers_file is not None and not servers_file.strip():
        raise PublishUsageError("--servers-file is empty: give a path")
    static = servers is not None or servers_file is not None
    if static and nomad_addr is not None:
        raise PublishUsageError(
            "--nomad-addr and a static list (--servers or --servers-file) are two sources; "
            "give one of them"
        )
    if static:
        if servers_file is None and not servers:
            # An empty heartbeat drops every primary of the proxy it reaches.
            raise PublishUsageError("--servers lists no address: nothing to publish")
        return "static"
    # Empty counts as unset, as NomadApiSettings.from_env reads it.
    if nomad_addr is not None or env.get("NOMAD_ADDR", ""):
        return "nomad"
    raise PublishUsageError(
        "nothing to publish: give --servers, --servers-file or --nomad-addr, or set NOMAD_ADDR"
    )


def _servers_source(
    servers: Sequence[str], servers_file: str | None, datacenter: str
) -> Callable[[], tuple[HeartbeatServer, ...] | None]:
    """The heartbeat's server list: the file's lines when it can be read, else ``servers``.

    The file is read again for every heartbeat, so an operator (or a test)
    can drain a server by editing it while the publisher runs. None (send
    nothing this time) when that leaves no server: a heartbeat with no
    servers drops every primary of the proxy it reaches, and a missing
    source must never do that. A file that lists nobody sends nothing too,
    rather than falling back to ``servers``: a file rewritten in place reads
    empty for a moment. One line on stderr says when sending stops, and one
    when it resumes, not one per heartbeat.
    """
    waiting = False

    def names() -> tuple[Sequence[str], str]:
        """The names to send, and why there are none when that is the case."""
        if servers_file is None:
            return servers, "--servers lists nobody"
        try:
            return Path(servers_file).read_text().split(), f"{servers_file} lists nobody"
        except OSError as exc:
            return servers, f"cannot read {servers_file} ({exc.strerror or exc}) and no --servers"

    def entries() -> tuple[HeartbeatServer, ...] | None:
        nonlocal waiting
        found, why = names()
        if not found:
            if not waiting:
                waiting = True
                print(f"rpcproxy publish: {why}: sending nothing", file=sys.stderr, flush=True)
            return None
        if waiting:
            waiting = False
            print("rpcproxy publish: servers listed again: sending", file=sys.stderr, flush=True)
        result = []
        for name in found:
            addr, _, dc = name.partition("@")
            result.append(HeartbeatServer(addr, 1, 1, dc or datacenter))
        return tuple(result)

    return entries


def run_publish(
    *,
    connect: Sequence[str],
    bind: Sequence[str],
    region: str,
    datacenter: str,
    servers: Sequence[str],
    servers_file: str | None,
    num_nodes: int,
    leader: str,
    interval_s: float,
    publisher: str | None,
    curve: CurveClient | None = None,
) -> int:
    """Publish heartbeats every ``interval_s`` until SIGINT or SIGTERM."""
    context: zmq.Context[Any] = zmq.Context()
    stopping = stop_on_signals()
    source = _servers_source(servers, servers_file, datacenter)
    pub = HeartbeatPublisher(
        context,
        connect=connect,
        bind=bind,
        region=region,
        servers=source,
        num_nodes=lambda: num_nodes,
        leader=lambda: leader,
        interval_s=interval_s,
        publisher=publisher,
        curve=curve,
    )
    try:
        pub.start()
    except OSError as exc:
        # A taken port or a bad endpoint: one line, not a traceback.
        print(f"rpcproxy publish: {exc}", file=sys.stderr)
        context.destroy(linger=0)
        return 1
    # Names the source rather than reading it: the publisher's thread reads it now.
    listed = " ".join(servers)
    if servers_file is not None:
        listed = f"the lines of {servers_file}" + (f", else {listed}" if listed else "")
    print(
        f"publishing heartbeat/{region} every {interval_s}s as {pub.publisher}: {listed}",
        flush=True,
    )
    try:
        stopping.wait()
    finally:
        pub.stop()
        context.destroy(linger=0)
    return 0


def run_publish_nomad(
    *,
    connect: Sequence[str],
    bind: Sequence[str],
    settings: NomadApiSettings,
    interval_s: float,
    nodes_refresh_s: float,
    publisher: str | None,
    curve: CurveClient | None = None,
) -> int:
    """Publish heartbeats polled from a Nomad agent's HTTP API (section 7).

    The poller (bus/service/nomad_http.py) builds each heartbeat; the
    publisher's socket only sends what it hands over, so a failed or empty
    poll sends nothing.
    """
    # Here, not at the top: only publish --nomad-addr needs the HTTP client.
    from rpcproxy.bus.service.nomad_http import (  # noqa: PLC0415
        NomadFetcher,
        NomadPoller,
        make_client,
    )

    try:
        settings.address()
    except ValueError as exc:
        # A relative unix:// path, say: one line and exit 2, not a warning per poll.
        print(f"rpcproxy publish: {exc}", file=sys.stderr)
        return 2
    try:
        client = make_client(settings)
    except (OSError, ValueError) as exc:
        print(f"rpcproxy publish: Nomad API TLS files: {exc}", file=sys.stderr)
        return 2
    context: zmq.Context[Any] = zmq.Context()
    stopping = stop_on_signals()
    pub = HeartbeatPublisher(
        context,
        connect=connect,
        bind=bind,
        region=settings.region,
        servers=lambda: (),
        interval_s=None,
        curve=curve,
    )
    try:
        pub.start()
    except OSError as exc:
        print(f"rpcproxy publish: {exc}", file=sys.stderr)
        client.close()
        context.destroy(linger=0)
        return 1
    poller = NomadPoller(
        NomadFetcher(client, settings),
        pub.send,
        interval_s=interval_s,
        nodes_refresh_s=nodes_refresh_s,
        publisher=publisher,
    )
    poller.start()
    print(
        f"publishing heartbeat/{settings.region} every {interval_s}s from {settings.addr}",
        flush=True,
    )
    try:
        stopping.wait()
    finally:
        poller.stop(timeout_s=10.0)
        pub.stop()
        client.close()
        context.destroy(linger=0)
    return 0


def run_client_loop(
    *,
    query: str,
    interval_s: float,
    ping_timeout_s: float,
    count: int | None,
    curve: CurveClient | None = None,
    method: str = "nomad",
) -> int:
    """Look up a server, "use" it (a ping), report it when it fails; print each step.

    One JSON object per line on stdout: what a Nomad client of the proxy saw.
    """
    context: zmq.Context[Any] = zmq.Context()
    stopping = stop_on_signals()
    done = 0
    with (
        server_prober(method, ping_timeout_s) as prober,
        ProxyClient(query, timeout_s=1.0, retries=2, context=context, curve=curve) as client,
    ):
        while not stopping.is_set() and (count is None or done < count):
            done += 1
            record: dict[str, Any] = {"t": round(time.time(), 3)}
            try:
                server = client.find_server()
                record["server"] = server.addr if server else None
                if server is not None:
                    addr = parse_address(server.addr)
                    record["ok"] = bool(prober([addr]).get(addr))
                    if not record["ok"]:
                        record["rotated"] = client.notify_failed_server(server.addr)
            except (ProxyError, InvalidAddressError) as exc:
                record["error"] = str(exc)
            print(json.dumps(record), flush=True)
            stopping.wait(interval_s)
    context.destroy(linger=0)
    return 0


def run_ping(
    *,
    query: str | None,
    server: str | None,
    timeout_s: float,
    curve: CurveClient | None = None,
    method: str = "nomad",
) -> int:
    """Exit 0 when the proxy (``query``) or a Nomad server (``server``, probed
    as ``ping_method = method`` would) answers a ping."""
    if server is not None:
        try:
            addr = parse_address(server)
        except InvalidAddressError as exc:
            print(f"rpcproxy ping: {exc}", file=sys.stderr)
            return 2
        with server_prober(method, timeout_s) as prober:
            alive = bool(prober([addr]).get(addr))
        if not alive:
            print(f"rpcproxy ping: {server} did not answer within {timeout_s}s", file=sys.stderr)
        return 0 if alive else 1
    endpoint = query or DEFAULT_QUERY_ENDPOINT
    try:
        with ProxyClient(endpoint, timeout_s=timeout_s, retries=1, curve=curve) as client:
            client.ping()
    except ProxyError as exc:
        print(f"rpcproxy ping: {endpoint}: {exc}", file=sys.stderr)
        return 1
    return 0


def run_keygen(directory: str, names: Sequence[str]) -> int:
    """Write a CURVE key pair per name: NAME.key (public) and NAME.key_secret."""
    for name in names:
        public, secret = create_key_pair(directory, name)
        print(f"{name}: public {public}, secret {secret}")
    return 0
