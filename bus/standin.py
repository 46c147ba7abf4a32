"""A Nomad-server stand-in that answers the ZeroMQ ping (PROTOCOL.md section 4).

The demo, the integration tests, ``rpcproxy fake-server`` and the docker
containers need servers that can be alive, gray-failed (connection up, no
answers), dead, and alive again on the same port. ``ServerStandIn`` is that
server and nothing more: it answers ``{"op": "ping"}`` with ``{"ok": true}``.

Its ROUTER socket is created, used and closed by one thread only. Other
threads steer it through an inproc PAIR control pipe polled beside the ROUTER,
after pyzmq's ``zmq/auth/thread.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["ServerStandIn"]

log = logging.getLogger(__name__)

_PAUSE: Final = b"PAUSE"
_RESUME: Final = b"RESUME"
_STOP: Final = b"STOP"
_STOP_QUIET: Final = b"STOP-QUIET"
"""STOP from the serving thread itself, where nobody waits for the ACK."""
_ACK: Final = b"OK"
_WILDCARD_HOSTS: Final = frozenset({"*", "0.0.0.0", "::", "::ffff:0.0.0.0"})
_SIGNAL_TICK_MS: Final = 100
"""Longest ``serve_forever`` blocks in C. Python runs signal handlers only on
the main thread, and only between bytecodes; a signal delivered to another
thread does not interrupt the main thread's poll, so without a tick SIGINT or
SIGTERM could go unnoticed until the next request."""
_BATCH: Final = 256
"""Requests handled per wake-up, so a flood cannot starve the control pipe."""

_pipe_ids = itertools.count()


class _Request(msgspec.Struct):
    """Only ``op`` matters; typed decoding skips other keys without building
    them, so garbage cannot make the stand-in allocate deep structures."""

    op: str


_REQUEST_DECODER: Final = msgspec.msgpack.Decoder(_Request)
_OK_REPLY: Final = msgspec.msgpack.encode({"ok": True})


def _error_reply(code: str, message: str) -> bytes:
    return msgspec.msgpack.encode({"ok": False, "error": {"code": code, "message": message}})


class ServerStandIn:
    """A fake Nomad server on one ROUTER socket, run by a daemon thread.

    Use ``start()``/``stop()`` (or ``with``) to run it in the background, or
    ``serve_forever()`` to run it in the calling thread. ``pause()`` models a
    gray failure, ``stop()`` a dead server, ``restart()`` one that comes back
    on the same port.
    """

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:*",
        *,
        context: zmq.Context[Any] | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self._bind = bind
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._max_message_bytes = max_message_bytes
        # Guards the caller's end of the control pipe. That end is the one
        # socket used from several threads (whoever calls pause/stop); the
        # lock serialises it and gives the full memory barrier libzmq asks
        # for when a socket changes threads. Re-entrant so that stop() from
        # a signal handler cannot deadlock against start-up or teardown.
        self._lock = threading.RLock()
        self._pipe: zmq.Socket[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._serving_ident: int | None = None
        self._endpoint: str | None = None
        self._pings = 0

    # -- properties ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The bound endpoint, e.g. ``tcp://127.0.0.1:43121`` (``*`` resolved)."""
        if self._endpoint is None:
            raise RuntimeError("the stand-in has not been started")
        return self._endpoint

    @property
    def address(self) -> str:
        """The ``host:port`` to give rpcproxy, e.g. ``127.0.0.1:43121``.

        A wildcard bind answers on loopback too, so it is reported as
        ``127.0.0.1`` rather than an address nobody can connect to.
        """
        endpoint = self.endpoint
        if not endpoint.startswith("tcp://"):
            raise ValueError(f"{endpoint!r} is not a TCP endpoint")
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        if host.strip("[]") in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        return f"{host}:{port}"

    @property
    def pings(self) -> int:
        """How many pings were answered (paused ones are not counted)."""
        return self._pings

    @property
    def running(self) -> bool:
        """Whether started (or serving) and not stopped since."""
        with self._lock:
            return self._pipe is not None

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind and serve on a daemon thread; return once bound.

        Raises:
            RuntimeError: already running, or the thread did not start in time.
            zmq.ZMQError: the bind failed (e.g. the port is taken).
        """
        self._start(self._bind, timeout_s)

    def restart(self, timeout_s: float = 5.0) -> None:
        """Bind the same endpoint again after ``stop()``: the server came back."""
        self._start(self.endpoint, timeout_s)

    def _start(self, bind: str, timeout_s: float) -> None:
        with self._lock:
            if self._pipe is not None:
                raise RuntimeError("the stand-in is already running")
            pipe, pipe_endpoint = self._open_pipe()
            started = threading.Event()
            errors: list[zmq.ZMQError] = []
            thread = threading.Thread(
                target=self._run,
                args=(bind, pipe_endpoint, started, errors),
                name=f"standin-{bind}",
                daemon=True,
            )
            thread.start()
            if not started.wait(timeout_s):
                pipe.close(linger=0)
                raise RuntimeError(f"stand-in on {bind} did not start within {timeout_s} s")
            if errors:
                thread.join(timeout_s)
                pipe.close(linger=0)
                raise errors[0]
            self._pipe, self._thread = pipe, thread

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` or KeyboardInterrupt.

        ``stop()`` may come from another thread or from a signal handler on
        this one (e.g. for SIGTERM).

        Raises:
            RuntimeError: already running.
            zmq.ZMQError: the bind failed.
        """
        with self._lock:
            if self._pipe is not None:
                raise RuntimeError("the stand-in is already running")
            pipe, pipe_endpoint = self._open_pipe()
            self._pipe, self._thread = pipe, None
            self._serving_ident = threading.get_ident()
        errors: list[zmq.ZMQError] = []
        try:
            self._run(self._bind, pipe_endpoint, threading.Event(), errors, _SIGNAL_TICK_MS)
        except KeyboardInterrupt:
            log.info("stand-in on %s interrupted", self._endpoint)
        finally:
            with self._lock:
                self._serving_ident = None
                if self._pipe is pipe:
                    pipe.close(linger=0)
                    self._pipe = None
        if errors:
            raise errors[0]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the socket and end the loop; a no-op if not running.

        On return nothing listens on the port any more: the loop waits for
        libzmq to close the listening socket, which ``zmq_close`` alone does
        only later, on its I/O thread.
        """
        with self._lock:
            pipe, thread = self._pipe, self._thread
            if pipe is None:
                return
            if self._serving_ident == threading.get_ident():
                # A signal handler interrupting serve_forever: the loop runs
                # below us on this very thread, so it cannot acknowledge
                # now. It sees STOP when the handler returns. Before the
                # loop has connected its end there is nobody to tell, so
                # interrupt serve_forever the way Ctrl-C would.
                try:
                    pipe.send(_STOP_QUIET, flags=zmq.NOBLOCK)
                except zmq.Again:
                    raise KeyboardInterrupt from None
                return
            try:
                # NOBLOCK: if the loop died, PAIR would block with no peer.
                pipe.send(_STOP, flags=zmq.NOBLOCK)
                if pipe.poll(int(timeout_s * 1000)):
                    pipe.recv()
                else:
                    log.warning("stand-in on %s did not acknowledge STOP", self._endpoint)
            except zmq.Again:
                log.warning("stand-in on %s: its loop is gone", self._endpoint)
            finally:
                pipe.close(linger=0)
                self._pipe, self._thread = None, None
        if thread is not None:
            thread.join(timeout_s)

    def pause(self, timeout_s: float = 5.0) -> None:
        """Stop answering but keep the socket and connections open (gray failure).

        Requests that arrive meanwhile are read and dropped, so ``resume()``
        does not answer a backlog of stale pings.
        """
        self._command(_PAUSE, timeout_s)

    def resume(self, timeout_s: float = 5.0) -> None:
        """Answer pings again after ``pause()``."""
        self._command(_RESUME, timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- caller side of the control pipe --------------------------------------

    def _open_pipe(self) -> tuple[zmq.Socket[bytes], str]:
        # A fresh name per start: an inproc name may still be registered for
        # a moment after its previous socket was closed.
        endpoint = f"inproc://rpcproxy-standin-{id(self):x}-{next(_pipe_ids)}"
        pipe: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        pipe.bind(endpoint)
        return pipe, endpoint

    def _command(self, command: bytes, timeout_s: float) -> None:
        """Send a command and wait for the loop to apply it, so that once this
        returns every later request sees the new mode."""
        with self._lock:
            if self._pipe is None:
                raise RuntimeError("the stand-in is not running")
            try:
                self._pipe.send(command, flags=zmq.NOBLOCK)
            except zmq.Again:
                raise RuntimeError("the stand-in's loop is gone") from None
            if not self._pipe.poll(int(timeout_s * 1000)):
                raise TimeoutError(f"stand-in did not acknowledge {command.decode()}")
            self._pipe.recv()

    # -- the serving thread ---------------------------------------------------

    def _run(
        self,
        bind: str,
        pipe_endpoint: str,
        started: threading.Event,
        errors: list[zmq.ZMQError],
        tick_ms: int | None = None,
    ) -> None:
        router: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        control: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        # Bounded so the STOP acknowledgement is delivered but a vanished
        # caller cannot hold the thread.
        control.setsockopt(zmq.LINGER, 1000)
        try:
            try:
                router.setsockopt(zmq.LINGER, 0)
                router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
                host = bind.removeprefix("tcp://").rpartition(":")[0]
                if host.startswith("[") or host == "*":
                    router.setsockopt(zmq.IPV6, 1)
                router.bind(bind)
                self._endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
                control.connect(pipe_endpoint)
            except zmq.ZMQError as exc:
                errors.append(exc)
                router.close(linger=0)
                return
            finally:
                started.set()
            try:
                acknowledge = self._loop(router, control, tick_ms)
            finally:
                self._close_listener(router)
            if acknowledge:
                # NOBLOCK: a stopper that gave up waiting has closed its end.
                with contextlib.suppress(zmq.Again):
                    control.send(_ACK, flags=zmq.NOBLOCK)
        finally:
            control.close()

    def _loop(
        self, router: zmq.Socket[bytes], control: zmq.Socket[bytes], tick_ms: int | None
    ) -> bool:
        """Serve until told to stop; return whether the stopper awaits an ACK.

        KeyboardInterrupt propagates.
        """
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        paused = False
        while True:
            ready = dict(poller.poll(tick_ms))
            # Control first: a command sent before a request must apply to it.
            if control in ready:
                command = control.recv()
                if command in (_STOP, _STOP_QUIET):
                    return command == _STOP
                paused = {_PAUSE: True, _RESUME: False}.get(command, paused)
                control.send(_ACK)
            if router in ready:
                self._serve_batch(router, paused)

    def _serve_batch(self, router: zmq.Socket[bytes], paused: bool) -> None:
        for _ in range(_BATCH):
            try:
                frames = router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if paused:
                continue
            reply = self._answer(frames[-1])
            try:
                router.send_multipart([*frames[:-1], reply], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # The peer is gone or not reading; a reply is best-effort.
                log.debug("stand-in could not reply: %s", exc)

    def _answer(self, payload: bytes) -> bytes:
        try:
            request = _REQUEST_DECODER.decode(payload)
        except (msgspec.MsgspecError, RecursionError) as exc:
            return _error_reply("bad_request", str(exc))
        if request.op != "ping":
            return _error_reply("unknown_op", f"unknown op {request.op[:64]!r}")
        self._pings += 1
        return _OK_REPLY

    def _close_listener(self, router: zmq.Socket[bytes], timeout_s: float = 1.0) -> None:
        """Close ``router`` and wait until its listening TCP socket is closed.

        ``zmq_close`` returns before libzmq's I/O thread closes the listener,
        so a connect right after it could still succeed. Unbinding under a
        monitor lets us wait for the listener's CLOSED event instead.
        """
        endpoint = self._endpoint
        monitor: zmq.Socket[bytes] | None = None
        try:
            if endpoint is not None and endpoint.startswith("tcp://"):
                monitor = router.get_monitor_socket(zmq.EVENT_CLOSED)
                router.unbind(endpoint)
                deadline = time.monotonic() + timeout_s
                while (remaining := deadline - time.monotonic()) > 0:
                    if not monitor.poll(max(1, int(remaining * 1000))):
                        log.warning("stand-in: no CLOSED event for %s", endpoint)
                        break
                    if recv_monitor_message(monitor)["event"] == zmq.EVENT_CLOSED:
                        break
        except zmq.ZMQError as exc:
            log.warning("stand-in: unbinding %s failed: %s", endpoint, exc)
        finally:
            if monitor is not None:
                router.disable_monitor()
                monitor.close(linger=0)
            router.close(linger=0)
