"""Benchmark: how long ``serve`` takes to exit, against an idle one in the same run.

* :func:`exit_times`: milliseconds from SIGTERM to the process's exit while a
  rebalance waits on servers that accept and never answer (``ping_timeout_s``
  30), side by side with an idle ``serve``. docs/protocol.md section 8: within
  10 s whatever it is doing. Before issue 9 this case took ~5.5 s and printed
  two tracebacks; a stuck actor could hold the process for ever.

What idle metrics connections cost is bench/metrics_idle.py's.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import zmq
from common import CTX, Result, Spread, call, pack, running_serve, sigterm_to_exit_ms

EXIT_TARGET_S = 10.0
EXIT_WAIT_S = 60
HUNG_PING_TIMEOUT_S = 30.0


class _HungServers:
    """``k`` listeners that accept connections and never say a word."""

    def __init__(self, k: int) -> None:
        self.reached = threading.Event()
        self._held: list[socket.socket] = []
        self._listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(k)]
        self.addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in self._listeners]
        for listener in self._listeners:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._held.append(listener.accept()[0])
                self.reached.set()

    def close(self) -> None:
        for sock in self._listeners + self._held:
            sock.close()


def _idle_exit() -> tuple[float, bool]:
    with running_serve() as serve:
        elapsed = sigterm_to_exit_ms(serve.proc, EXIT_WAIT_S)
        return elapsed, "Traceback" in serve.log()


def _hung_exit() -> tuple[float, bool]:
    hung = _HungServers(2)
    try:
        with running_serve("--ping-timeout-s", str(HUNG_PING_TIMEOUT_S)) as serve:
            for addr in hung.addrs:
                call(serve.query, "add_primary_server", addr=addr)
            asker: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
            asker.linger = 0
            try:
                asker.connect(serve.query)
                asker.send(pack({"op": "rebalance"}))  # its reply would take 30 s
                if not hung.reached.wait(10.0):
                    raise RuntimeError("the rebalance's ping never reached the hung servers")
                elapsed = sigterm_to_exit_ms(serve.proc, EXIT_WAIT_S)
            finally:
                asker.close()
            return elapsed, "Traceback" in serve.log()
    finally:
        hung.close()


def exit_times(rounds: int = 3) -> Result:
    idle: list[float] = []
    hung: list[float] = []
    tracebacks = 0
    for _ in range(rounds):
        for runs, measure in ((idle, _idle_exit), (hung, _hung_exit)):
            elapsed, traced = measure()
            runs.append(elapsed)
            tracebacks += traced
    idle_ms, hung_ms = Spread.of(idle), Spread.of(hung)
    ratio = Spread.of([h / i for h, i in zip(hung, idle, strict=True)])
    result = Result(
        "SIGTERM to exit: idle, and during a rebalance of hung servers",
        ["serve", "SIGTERM -> exit (ms)"],
        [
            ["idle (baseline)", idle_ms.fmt(1)],
            [
                f"rebalance pinging 2 hung servers, ping_timeout_s {HUNG_PING_TIMEOUT_S:g}",
                hung_ms.fmt(1),
            ],
            ["**ratio hung / idle**", ratio.fmt(2)],
        ],
    )
    result.check(
        f"exit during the hung rebalance {hung_ms.fmt(1)} ms",
        f"< {EXIT_TARGET_S * 1000:,.0f} ms (docs/protocol.md section 8)",
        hung_ms.high < EXIT_TARGET_S * 1000,
    )
    result.check(f"{tracebacks} tracebacks in {2 * rounds} stops", "0", tracebacks == 0)
    result.notes.append(
        f"{rounds} rounds, alternating. The clock runs from just before `kill(SIGTERM)` to"
        " the wake-up of a `poll` on the process's pidfd (`os.pidfd_open`), which becomes"
        " readable when the process exits, so the figures are the process's, to within the"
        " poll's wake-up (microseconds). Before issue 9 the hung case exited after ~5.5 s"
        " (a prober that would not stop) with a `pykka.Timeout` and a `ZMQError` traceback."
    )
    return result


if __name__ == "__main__":
    print(exit_times(1).markdown())
