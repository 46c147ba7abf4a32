"""The ``rpcproxy`` command: ``serve``, ``status`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from cli.config import ConfigError, add_config_arguments, load_config
from cli.demo import run_demo
from cli.logs import setup_logging
from cli.service import ProxyService
from cli.status import run_status

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("rpcproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcproxy",
        description="Client-side Nomad server selection, as a ZeroMQ service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy until SIGINT or SIGTERM")
    add_config_arguments(serve)

    status = commands.add_parser("status", help="print a running proxy's status")
    status.add_argument(
        "--query", default="tcp://127.0.0.1:4650", help="the proxy's query endpoint"
    )
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for it")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    demo = commands.add_parser("demo", help="a whole local cluster with a live view")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--plain", action="store_true", help="print events line by line, no live redraw"
    )
    demo.add_argument(
        "--speed", type=float, default=1.0, help="run the script this many times faster"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "status":
        return run_status(args.query, timeout_s=args.timeout, as_json=args.json)
    return run_demo(duration_s=args.duration, plain=args.plain, speed=args.speed)


def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"rpcproxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level, config.log_format)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    service = ProxyService(config)
    try:
        service.start()
    except Exception as exc:
        log.error("rpcproxy failed to start: %s", exc)
        service.stop()
        return EXIT_FAILURE
    try:
        # Wake up now and then to make sure no part died: a proxy that runs
        # half-dead would answer from a state nobody updates any more.
        while not stopping.wait(0.5):
            dead = service.dead_parts()
            if dead:
                log.error("stopping: %s stopped unexpectedly", ", ".join(dead))
                return EXIT_FAILURE
    finally:
        service.stop()
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
