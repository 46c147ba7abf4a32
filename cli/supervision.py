"""``serve`` as a process: supervised while it runs, and sure to exit once it stops.

Signals set a stopping event; :func:`supervise` watches the service until
then and gives up when a part dies; the stop that follows is bounded by
:class:`StopWatchdog`, and :func:`stop_remaining_actors` sweeps up any actor
left behind, since pykka threads are not daemons. docs/protocol.md section 8
gives the exit codes and the 10 s from SIGTERM to exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

import pykka
import zmq

from rpcproxy.actors.lifecycle import stop_within
from rpcproxy.cli.config import Config, ConfigError
from rpcproxy.cli.service import ProxyService, libzmq_problem

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

SWITCH_INTERVAL_S = 0.001
"""How long a thread holds the GIL while another waits (bench/flood.py measures it)."""

STOP_BUDGET_S = 8.0
"""From a stop signal (or a part's death) to the process's exit, at most.

docs/protocol.md section 8 allows 10 s; the orderly stop normally takes
milliseconds, and this leaves room for a busy machine after the budget."""

LEFTOVER_STOP_TIMEOUT_S = 1.5
"""How long the last sweep waits for actors that were still running."""

# The command's own logger, as when all of this lived in cli/main.py.
log = logging.getLogger("rpcproxy")


def run_supervised(config: Config) -> int:
    """Run the service until SIGINT, SIGTERM or a part's death; the exit code."""
    # Queries are answered on their own thread, but each needs the GIL: while
    # a heartbeat flood keeps the listener and the actor busy, the default
    # 5 ms switch interval is what a find_server waits, several times over.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    problem = libzmq_problem(zmq.zmq_version_info())
    if problem:
        log.error("%s", problem)
        return EXIT_FAILURE

    stopping = threading.Event()
    watchdog = StopWatchdog(STOP_BUDGET_S)
    stop_on_signals(stopping, watchdog)
    service = ProxyService(config)
    code = EXIT_FAILURE
    try:
        code = _start_and_supervise(service, stopping)
    finally:
        # Whatever ended it (a signal, a dead part, a failed start, a bug),
        # the stop is bounded: by the waits below, then by the watchdog.
        watchdog.arm(code)
        late = service.stop()
        late += stop_remaining_actors()
    if code == EXIT_OK and not late:
        log.info("stopped")
    return code


def _start_and_supervise(service: ProxyService, stopping: threading.Event) -> int:
    try:
        service.start()
    except ConfigError as exc:
        # A value only checkable at start (the state file is a FIFO): the
        # same one line, and exit code, as a bad value in the file.
        print(f"rpcproxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.error("rpcproxy failed to start: %s", exc)
        return EXIT_FAILURE
    return supervise(service, stopping)


def supervise(service: ProxyService, stopping: threading.Event, period_s: float = 0.5) -> int:
    """Watch ``service`` until ``stopping`` is set; EXIT_FAILURE if a part dies.

    A proxy that runs half-dead would answer from a state nobody updates any
    more; exiting lets compose or systemd restart the whole of it.
    """
    while not stopping.wait(period_s):
        dead = service.watch(time.monotonic())
        if dead:
            log.error("stopping: %s stopped unexpectedly", ", ".join(dead))
            return EXIT_FAILURE
    return EXIT_OK


def stop_on_signals(stopping: threading.Event, watchdog: StopWatchdog) -> None:
    """SIGINT and SIGTERM set ``stopping`` and arm ``watchdog``; a second one exits at once."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("received %s again: exiting now, without finishing the stop", name)
            _exit_now(watchdog.code)
        log.info("received %s, stopping", name)
        stopping.set()
        watchdog.arm(EXIT_OK)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def stop_remaining_actors(timeout_s: float = LEFTOVER_STOP_TIMEOUT_S) -> list[str]:
    """The backstop (Mopidy's ``stop_remaining_actors``): stop every actor still running.

    :meth:`ProxyService.stop` stops what it started, but a part that failed
    or hung can leave actors behind, and pykka threads are not daemons: any
    one of them would keep the process alive after ``serve`` returned.

    Returns:
        The names of the actors that would not stop (each logged).
    """
    refs = pykka.ActorRegistry.get_all()
    if not refs:
        return []
    named = [(ref.actor_class.__name__, ref) for ref in refs]
    log.warning("stopping %d actors still running: %s", len(named), ", ".join(n for n, _ in named))
    late = stop_within(named, timeout_s)
    if late:
        log.warning("%s did not stop within %g s; exiting without them", ", ".join(late), timeout_s)
    return late


def _exit_now(code: int) -> NoReturn:
    """End the process at once, whatever its threads are doing."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


class StopWatchdog:
    """Ends the process if stopping takes longer than ``budget_s``.

    The orderly stop bounds every wait, but after ``serve`` returns the
    interpreter still joins every non-daemon thread, without a timeout: a
    pykka actor stuck in a handler (a ping, a disk that stopped answering)
    would hold the process forever, and docs/protocol.md section 8 says it must
    exit within 10 s. Nothing in Python can stop such a thread, so the last
    resort is ``os._exit`` from this daemon thread, which keeps running
    while the interpreter waits on the others. It is never disarmed: it has
    nothing to do once the process is gone, and until then it may be needed.
    """

    def __init__(self, budget_s: float = STOP_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.code = EXIT_OK
        self._armed = False

    def arm(self, code: int) -> None:
        """Start counting (first call only); exit with ``code`` when the budget is over."""
        if self._armed:
            return
        self._armed = True
        self.code = code
        threading.Thread(target=self._run, name="rpcproxy-stop-watchdog", daemon=True).start()

    def _run(self) -> None:
        threading.Event().wait(self.budget_s)
        # Logging can block (a stderr pipe nobody reads): give it a moment, not the exit.
        said = threading.Thread(
            target=log.error,
            args=("stopping took longer than %g s; exiting now", self.budget_s),
            daemon=True,
        )
        said.start()
        said.join(0.5)
        _exit_now(self.code)
