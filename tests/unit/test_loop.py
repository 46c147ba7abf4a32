"""The socket-thread primitive (bus/loop.py) on its own, with a real context."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from rpcproxy.bus.net.loop import SocketThread
from tests.waiting import poll_until


class Pair(SocketThread):
    """Binds one PAIR socket; ``fail`` makes setup raise after opening it,
    ``gate`` holds setup until it is set."""

    name = "test-pair"

    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        fail: bool = False,
        gate: threading.Event | None = None,
    ) -> None:
        super().__init__(context)
        self._fail = fail
        self._gate = gate
        self.sock: zmq.Socket[bytes] | None = None
        self.torn_down = threading.Event()

    def setup(self) -> None:
        if self._gate is not None:
            self._gate.wait(10)
        self.sock = self.context.socket(zmq.PAIR)
        self.sock.linger = 0
        self.sock.bind("inproc://test-pair")
        if self._fail:
            raise OSError("cannot set up")
        self.poller.register(self.sock, zmq.POLLIN)

    def teardown(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.torn_down.set()


def test_a_setup_error_is_raised_after_the_thread_has_closed_its_sockets(
    ctx: zmq.Context[Any],
) -> None:
    thread = Pair(ctx, fail=True)
    with pytest.raises(OSError, match="cannot set up"):
        thread.start()
    # Ended, not merely reported: the thread is gone and its socket closed.
    assert not thread.alive
    assert thread.torn_down.is_set()
    # libzmq frees a closed socket's inproc name on its reaper thread, a
    # moment later; the name must come free without anyone stopping anything.
    poll_until(_binds_again(ctx), 10, what="the closed socket's name to come free")


def _binds_again(ctx: zmq.Context[Any]) -> Callable[[], bool]:
    def attempt() -> bool:
        again = Pair(ctx)
        try:
            again.start()
        except (OSError, zmq.ZMQError):
            return False
        again.stop()
        return True

    return attempt


def test_stop_ends_the_thread_and_wait_returns(ctx: zmq.Context[Any]) -> None:
    thread = Pair(ctx)
    assert thread.wait(0)  # Never started: nothing to wait for.
    thread.stop()  # Harmless before start.
    thread.start()
    assert not thread.wait(0)
    stopper = threading.Thread(target=thread.stop)
    stopper.start()
    assert thread.wait(10)
    stopper.join(10)
    assert thread.torn_down.is_set()


def test_start_twice_is_refused(ctx: zmq.Context[Any]) -> None:
    thread = Pair(ctx)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            thread.start()
    finally:
        thread.stop()


def test_a_thread_that_misses_its_start_timeout_stops_once_set_up(
    ctx: zmq.Context[Any],
) -> None:
    gate = threading.Event()
    thread = Pair(ctx, gate=gate)
    with pytest.raises(RuntimeError, match="did not start"):
        thread.start(timeout_s=0.01)  # The gate holds setup: it cannot finish in time.
    gate.set()
    # Nobody holds this thread, so it must not go on serving.
    poll_until(lambda: not thread.alive, what="the late thread to stop")
    assert thread.torn_down.is_set()
