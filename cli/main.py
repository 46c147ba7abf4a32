"""The ``rpcproxy`` command and its subcommands.

``serve`` runs the proxy; ``status`` and ``ping`` ask a running one;
``demo`` runs a whole local cluster; ``simulate`` runs the fleet simulator;
``fake-server``, ``publish`` and ``client-loop`` play the other parts of a
cluster (a Nomad server, a heartbeat publisher, a client) for demos, compose
and tests; ``keygen`` makes CURVE certificates. ``serve`` is documented in
docs/protocol.md section 6; this module parses arguments and dispatches, and
:mod:`rpcproxy.cli.supervision` runs ``serve`` as a process.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from rpcproxy import __version__
from rpcproxy.bus.net.keys import CurveClient, CurveError
from rpcproxy.bus.standins import PROTOCOLS
from rpcproxy.bus.wire import DEFAULT_QUERY_ENDPOINT
from rpcproxy.cli.config import ConfigError, add_config_arguments, load_config
from rpcproxy.cli.logs import setup_logging
from rpcproxy.cli.servers import add_servers_parser, run_servers
from rpcproxy.cli.simulate import add_simulate_parser, run_simulate
from rpcproxy.cli.status import run_status
from rpcproxy.cli.supervision import EXIT_FAILURE, EXIT_USAGE, run_supervised
from rpcproxy.cli.tools import (
    NOMAD_INTERVAL_S,
    PING_METHODS,
    STATIC_INTERVAL_S,
    PublishUsageError,
    publish_source,
    run_client_loop,
    run_fake_server,
    run_keygen,
    run_ping,
    run_publish,
    run_publish_nomad,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcproxy",
        description="Client-side Nomad server selection, as a ZeroMQ service.",
    )
    parser.add_argument("--version", action="version", version=f"rpcproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy until SIGINT or SIGTERM")
    add_config_arguments(serve)

    status = commands.add_parser("status", help="print a running proxy's status")
    status.add_argument(
        "--query", default=DEFAULT_QUERY_ENDPOINT, help="the proxy's query endpoint"
    )
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for it")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--watch",
        nargs="?",
        const=1.0,
        type=float,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 1) until Ctrl-C",
    )
    _add_curve_client_arguments(status)

    demo = commands.add_parser("demo", help="a whole local cluster with a live view")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--plain", action="store_true", help="print events line by line, no live redraw"
    )
    demo.add_argument(
        "--speed", type=float, default=1.0, help="run the script this many times faster"
    )
    add_servers_parser(commands, _add_curve_client_arguments)
    _add_tool_parsers(commands)
    add_simulate_parser(commands)
    return parser


def _add_tool_parsers(commands: Any) -> None:
    fake = commands.add_parser("fake-server", help="a Nomad-server stand-in answering pings")
    fake.add_argument("--bind", default="tcp://0.0.0.0:4647", help="endpoint to answer on")
    fake.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="nomad",
        help="nomad: Status.Ping over Nomad's RPC (ping_method nomad); zmq: the ZeroMQ ping",
    )

    # No abbreviations: the removed --interval must be an error, not a prefix
    # of --interval-s that argparse would quietly accept.
    publish = commands.add_parser(
        "publish",
        help="publish heartbeats listing servers",
        description="Publish heartbeats of a static list (--servers, --servers-file) or, "
        "without one, of Nomad's API (--nomad-addr or NOMAD_ADDR); docs/protocol.md section 7.",
        allow_abbrev=False,
    )
    publish.add_argument("--connect", type=_csv, default=[], help="endpoints to connect to")
    publish.add_argument("--bind", type=_csv, default=[], help="endpoints to bind")
    publish.add_argument(
        "--region", default=None, help="global by default (NOMAD_REGION with --nomad-addr)"
    )
    publish.add_argument("--datacenter", default="dc1", help="datacenter of unqualified servers")
    # None, not []: "given" decides the source, and --servers "" is refused.
    publish.add_argument(
        "--servers",
        type=_csv,
        default=None,
        help="comma-separated addresses, each optionally addr@datacenter (a static list)",
    )
    publish.add_argument(
        "--servers-file",
        default=None,
        help="re-read before every heartbeat; replaces --servers while it can be read; "
        "while it lists nobody, nothing is sent",
    )
    publish.add_argument("--num-nodes", type=int, default=0)
    publish.add_argument("--leader", default="")
    publish.add_argument(
        "--interval-s",
        type=_positive_seconds,
        default=None,
        help=f"seconds between heartbeats, of either source (default {STATIC_INTERVAL_S:g} "
        f"for a static list, {NOMAD_INTERVAL_S:g} for Nomad's API)",
    )
    publish.add_argument("--publisher", default=None, help="publisher name (default: random)")
    _add_nomad_arguments(publish)
    _add_curve_client_arguments(publish)

    loop = commands.add_parser(
        "client-loop", help="look up a server, use it, report failures; one JSON line each"
    )
    loop.add_argument("--query", default=DEFAULT_QUERY_ENDPOINT)
    loop.add_argument("--interval", type=float, default=0.5)
    loop.add_argument("--ping-timeout", type=float, default=0.5)
    loop.add_argument("--count", type=int, default=None, help="stop after this many lookups")
    loop.add_argument(
        "--method", choices=PING_METHODS, default="nomad", help="how to ping (use) the server"
    )
    _add_curve_client_arguments(loop)

    ping = commands.add_parser("ping", help="exit 0 if the proxy (or a server) answers a ping")
    target = ping.add_mutually_exclusive_group()
    target.add_argument("--query", default=None, help="the proxy's query endpoint")
    target.add_argument("--server", default=None, help="a Nomad server address to ping")
    ping.add_argument("--timeout", type=float, default=1.0)
    ping.add_argument(
        "--method",
        choices=PING_METHODS,
        default="nomad",
        help="how to ping a --server, as ping_method (default nomad)",
    )
    _add_curve_client_arguments(ping)

    keygen = commands.add_parser(
        "keygen", help="make CURVE key pairs: NAME.key (public) and NAME.key_secret"
    )
    keygen.add_argument("directory", help="where to write the certificates")
    keygen.add_argument("names", nargs="+", metavar="NAME")


def _add_curve_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--curve-server-key",
        default=os.environ.get("RPCPROXY_CURVE_SERVER_KEY"),
        metavar="FILE",
        help="the proxy's public certificate (NAME.key), when it runs with CURVE "
        "(env RPCPROXY_CURVE_SERVER_KEY)",
    )
    parser.add_argument(
        "--curve-cert",
        default=os.environ.get("RPCPROXY_CURVE_CERT"),
        metavar="FILE",
        help="this client's certificate (NAME.key_secret) (env RPCPROXY_CURVE_CERT)",
    )


def _curve_client(args: argparse.Namespace) -> CurveClient | None:
    """The CURVE keys a client command was given; both or neither."""
    server_key, cert = args.curve_server_key, args.curve_cert
    if not server_key and not cert:
        return None
    if not (server_key and cert):
        raise CurveError("CURVE needs both --curve-server-key and --curve-cert")
    return CurveClient.from_files(server_key, cert)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _positive_seconds(text: str) -> float:
    """A finite number of seconds above 0, for argparse (0 would spin, inf never fire)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_nomad_arguments(parser: argparse.ArgumentParser) -> None:
    # Section 7: each flag overrides its Nomad environment variable.
    group = parser.add_argument_group("Nomad HTTP API (docs/protocol.md section 7)")
    group.add_argument(
        "--nomad-addr",
        default=None,
        help="poll this agent: http(s)://host:port, or unix:///path for its Task API (NOMAD_ADDR)",
    )
    group.add_argument("--token", default=None, help="ACL token (NOMAD_TOKEN)")
    group.add_argument("--ca-cert", default=None, help="CA bundle (NOMAD_CACERT)")
    group.add_argument("--client-cert", default=None, help="(NOMAD_CLIENT_CERT)")
    group.add_argument("--client-key", default=None, help="(NOMAD_CLIENT_KEY)")
    group.add_argument("--tls-server-name", default=None, help="(NOMAD_TLS_SERVER_NAME)")
    group.add_argument(
        "--tls-skip-verify", action="store_true", default=None, help="(NOMAD_SKIP_VERIFY)"
    )
    group.add_argument(
        "--nodes-refresh-s",
        type=_positive_seconds,
        default=300.0,
        help="seconds between /v1/nodes counts",
    )


def _nomad_settings(**kwargs: Any) -> Any:
    """``NomadApiSettings.from_env``, imported only by publish (it brings the HTTP client)."""
    from rpcproxy.bus.service.nomad_http import NomadApiSettings  # noqa: PLC0415 - see docstring

    return NomadApiSettings.from_env(**kwargs)


def _run_publish(args: argparse.Namespace) -> int:
    try:
        source = publish_source(
            servers=args.servers,
            servers_file=args.servers_file,
            nomad_addr=args.nomad_addr,
            env=os.environ,
        )
    except PublishUsageError as exc:
        print(f"rpcproxy publish: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if source == "nomad":
        return run_publish_nomad(
            connect=args.connect,
            bind=args.bind,
            settings=_nomad_settings(
                addr=args.nomad_addr or None,
                token=args.token,
                region=args.region,
                ca_cert=args.ca_cert,
                client_cert=args.client_cert,
                client_key=args.client_key,
                tls_server_name=args.tls_server_name,
                skip_verify=args.tls_skip_verify,
            ),
            interval_s=args.interval_s or NOMAD_INTERVAL_S,
            nodes_refresh_s=args.nodes_refresh_s,
            publisher=args.publisher,
            curve=_curve_client(args),
        )
    return run_publish(
        connect=args.connect,
        bind=args.bind,
        region=args.region or "global",
        datacenter=args.datacenter,
        servers=args.servers or [],
        servers_file=args.servers_file,
        num_nodes=args.num_nodes,
        leader=args.leader,
        interval_s=args.interval_s or STATIC_INTERVAL_S,
        publisher=args.publisher,
        curve=_curve_client(args),
    )


def _run_tool(args: argparse.Namespace) -> int:
    if args.command == "fake-server":
        return run_fake_server(args.bind, args.protocol)
    if args.command == "publish":
        return _run_publish(args)
    if args.command == "client-loop":
        return run_client_loop(
            query=args.query,
            interval_s=args.interval,
            ping_timeout_s=args.ping_timeout,
            count=args.count,
            curve=_curve_client(args),
            method=args.method,
        )
    if args.command == "keygen":
        return run_keygen(args.directory, args.names)
    return run_ping(
        query=args.query,
        server=args.server,
        timeout_s=args.timeout,
        curve=_curve_client(args),
        method=args.method,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CurveError as exc:
        print(f"rpcproxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`rpcproxy demo | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    if args.command == "status":
        return run_status(
            args.query,
            timeout_s=args.timeout,
            as_json=args.json,
            curve=_curve_client(args),
            watch_s=args.watch,
        )
    if args.command == "servers":
        return run_servers(args, _curve_client(args))
    if args.command == "simulate":
        return run_simulate(args)
    if args.command == "demo":
        # Imported here: the demo's stand-ins are no part of what serve loads.
        from rpcproxy.cli.demo import run_demo  # noqa: PLC0415

        return run_demo(duration_s=args.duration, plain=args.plain, speed=args.speed)
    return _run_tool(args)


def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"rpcproxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level, config.log_format)
    return run_supervised(config)


if __name__ == "__main__":
    sys.exit(main())
