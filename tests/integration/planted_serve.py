"""``rpcproxy serve`` with a fault planted, for the tests of its exit paths.

Run as ``python planted_serve.py [--plant FAULT]... [--stop-budget S] serve ...``:
exactly the real entry point, ``cli.main.main``, in a real process, after
replacing one piece the way a test's monkeypatch would. The product has no
hook, option or debug op for any of this; the faults live here only.

Faults:
    notify-failed: the state code behind ``notify_failed_server`` raises, so
        ProxyActor fails in a told message for real (pykka calls on_failure).
    leftover-actor: an actor nobody stops runs beside the service, so only
        the final sweep of remaining actors can let the process exit.
    stuck-actor: an actor stuck forever in a message handler, which nothing
        can stop, so only the stop watchdog can end the process.
    libzmq-X.Y.Z: pyzmq reports libzmq X.Y.Z (``zmq.zmq_version_info``, which
        ``serve`` asks before anything starts), whatever the real one is.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any
from unittest import mock

import pykka
import zmq

import rpcproxy.actors.core
import rpcproxy.cli.main
import rpcproxy.cli.supervision


class Leftover(pykka.ThreadingActor):
    """An actor the service does not know about."""


class Stuck(pykka.ThreadingActor):
    """Blocks its thread in the first message, forever."""

    def on_receive(self, message: Any) -> Any:
        threading.Event().wait()


def _bug(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("planted bug in notify_failed (test)")


def _reports(version: tuple[int, int, int]) -> Callable[[], tuple[int, int, int]]:
    """A stand-in for ``zmq.zmq_version_info`` that answers ``version``."""
    return lambda: version


def main(argv: list[str]) -> int:
    while argv and argv[0] in ("--plant", "--stop-budget"):
        option, value, argv = argv[0], argv[1], argv[2:]
        if option == "--stop-budget":
            rpcproxy.cli.supervision.STOP_BUDGET_S = float(value)
        elif value == "notify-failed":
            # As monkeypatch.setattr would: by name (the core imports
            # notify_failed, it does not export it), and failing if it is gone.
            mock.patch.object(rpcproxy.actors.core, "notify_failed", _bug).start()
        elif value == "leftover-actor":
            Leftover.start()
        elif value == "stuck-actor":
            Stuck.start().tell("block")
        elif value.startswith("libzmq-"):
            major, minor, patch = (int(part) for part in value.removeprefix("libzmq-").split("."))
            zmq.zmq_version_info = _reports((major, minor, patch))
        else:
            raise SystemExit(f"planted_serve: unknown fault {value!r}")
    return rpcproxy.cli.main.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
