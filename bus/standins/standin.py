"""A Nomad-server stand-in that answers pings (docs/protocol.md section 4).

The demo, the integration tests, ``rpcproxy fake-server`` and the docker
containers need servers that can be alive, gray-failed (connection up, no
answers), dead, and alive again on the same port. ``ServerStandIn`` is that
server and nothing more. It speaks one of two protocols:

- ``nomad`` (the default, as ``ping_method``): Nomad's own ``Status.Ping``
  over msgpack-rpc on a plain TCP port (:mod:`bus.standins.nomad_rpc`);
- ``zmq``: the ZeroMQ ping, ``{"op": "ping"}`` answered with ``{"ok": true}``.

Three parts, so that each protocol only adds its own:

- :class:`PingResponder` (and ``NomadResponder``) is what is answered: one
  request in, one reply out, with no socket or thread in sight.
- ``_RouterThread`` (and ``NomadRpcListener``) is the plumbing: a
  :class:`bus.loop.SocketThread` whose ROUTER socket is bound, read and
  closed by that thread alone, so a bind error is raised by ``start()`` and
  ``stop()`` goes through the thread's inproc control pipe.
- :class:`ServerStandIn` is the life cycle the callers see: start, stop,
  restart on the same port, pause and resume. Each start runs a fresh thread.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import zmq

from rpcproxy.bus.net.loop import SocketThread
from rpcproxy.bus.standins import PROTOCOLS, Protocol
from rpcproxy.bus.standins.nomad_rpc import NomadResponder, NomadRpcListener
from rpcproxy.bus.wire import ErrorCode, Op

__all__ = ["PROTOCOLS", "PingResponder", "Protocol", "Responder", "ServerStandIn"]


log = logging.getLogger(__name__)

Responder = Callable[[bytes], bytes]
"""A request payload in, the reply payload out."""

_WILDCARD_HOSTS: Final = frozenset({"*", "0.0.0.0", "::", "::ffff:0.0.0.0"})
_BATCH: Final = 256
"""Requests handled per wake-up, so a flood cannot starve the control pipe."""
_CLOSE_WAIT_S: Final = 2.0
"""How long stopping waits for libzmq to close the listening TCP socket."""


class _Request(msgspec.Struct):
    """Only ``op`` matters; typed decoding skips other keys without building
    them, so garbage cannot make the stand-in allocate deep structures."""

    op: str


_REQUEST_DECODER: Final = msgspec.msgpack.Decoder(_Request)
_OK_REPLY: Final = msgspec.msgpack.encode({"ok": True})


def _error_reply(code: str, message: str) -> bytes:
    return msgspec.msgpack.encode({"ok": False, "error": {"code": code, "message": message}})


class PingResponder:
    """Answers the zmq ping, and any other payload with the error it deserves.

    Attributes:
        pings: how many pings were answered.
    """

    def __init__(self) -> None:
        self.pings = 0

    def __call__(self, payload: bytes) -> bytes:
        try:
            request = _REQUEST_DECODER.decode(payload)
        except (msgspec.MsgspecError, RecursionError) as exc:
            return _error_reply(ErrorCode.BAD_REQUEST, str(exc))
        if request.op != Op.PING:
            return _error_reply(ErrorCode.UNKNOWN_OP, f"unknown op {request.op[:64]!r}")
        self.pings += 1
        return _OK_REPLY


class _RouterThread(SocketThread):
    """Serves ``responder`` on one ROUTER socket until stopped.

    ``paused`` is a plain attribute rather than a message to the thread: the
    loop reads it for every request, so once a caller has set it every later
    request sees it (under the GIL the write comes before any later read).
    """

    name = "rpcproxy-standin"

    def __init__(
        self,
        context: zmq.Context[Any],
        bind: str,
        responder: Responder,
        *,
        max_message_bytes: int,
    ) -> None:
        super().__init__(context)
        self._bind = bind
        self._responder = responder
        self._max_message_bytes = max_message_bytes
        self._router: zmq.Socket[bytes] | None = None
        self.endpoint = ""
        self.paused = False
        self.dropped = 0
        """Requests read and not answered because ``paused`` was set."""

    def setup(self) -> None:
        router: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        # Assigned at once so that teardown closes it whatever fails below.
        self._router = router
        router.linger = 0
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        host = self._bind.removeprefix("tcp://").rpartition(":")[0]
        if host.startswith("[") or host == "*":
            # "*" as well: a wildcard stand-in answers on both families.
            router.ipv6 = True
        router.bind(self._bind)
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller.register(router, zmq.POLLIN)

    def on_readable(self, sock: Any) -> None:
        assert self._router is not None
        for _ in range(_BATCH):
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.paused:
                # Read and dropped, so resume() does not answer stale pings.
                self.dropped += 1
                continue
            reply = self._responder(frames[-1])
            try:
                self._router.send_multipart([*frames[:-1], reply], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # The peer is gone or not reading; a reply is best-effort.
                log.debug("stand-in could not reply: %s", exc)

    def teardown(self) -> None:
        if self._router is not None:
            _close_listener(self._router, self.endpoint)
            self._router = None


def _close_listener(router: zmq.Socket[bytes], endpoint: str) -> None:
    """Close ``router`` and wait until its listening TCP socket is closed.

    ``zmq_close`` returns before libzmq's I/O thread closes the listener, so
    a connect right after it could still succeed. Unbinding under a monitor
    lets us wait for the listener's CLOSED event instead: a stopped stand-in
    is a dead server at once, and its port is free for ``restart()``.
    """
    # Here, not at the top: zmq.utils.monitor imports zmq.asyncio, and so
    # asyncio, into every process that imports the stand-ins (serve's CLI too).
    from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

    monitor: zmq.Socket[bytes] | None = None
    try:
        if endpoint.startswith("tcp://"):
            monitor = router.get_monitor_socket(zmq.EVENT_CLOSED)
            router.unbind(endpoint)
            deadline = time.monotonic() + _CLOSE_WAIT_S
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


class ServerStandIn:
    """A fake Nomad server on one port, run by a daemon thread.

    Use ``start()``/``stop()`` (or ``with``) to run it in the background, or
    ``serve_forever()`` to block the calling thread while it runs. ``pause()``
    models a gray failure, ``stop()`` a dead server, ``restart()`` one that
    comes back on the same port.

    Args:
        bind: the endpoint to bind; ``tcp://127.0.0.1:*`` picks a free port.
        protocol: ``nomad`` (Nomad RPC on a TCP port) or ``zmq`` (a ROUTER).
        context: the ZeroMQ context of a ``zmq`` stand-in; the process's
            shared one by default.
        max_message_bytes: larger frames (``zmq``) or request values
            (``nomad``) disconnect the peer.
        tls: a server-side TLS context for a ``nomad`` stand-in, which then
            also accepts connections that start with ``0x04`` and a handshake.
    """

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:*",
        *,
        protocol: Protocol = "nomad",
        context: zmq.Context[Any] | None = None,
        max_message_bytes: int = 1 << 20,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if tls is not None and protocol != "nomad":
            raise ValueError("tls is for the nomad protocol only")
        self._bind = bind
        self.protocol: Protocol = protocol
        self._context = context
        self._max_message_bytes = max_message_bytes
        self._tls = tls
        self._responder: PingResponder | NomadResponder = (
            NomadResponder() if protocol == "nomad" else PingResponder()
        )
        # Guards _thread. Re-entrant so that stop() from a signal handler
        # cannot deadlock against a start() it interrupted.
        self._lock = threading.RLock()
        self._thread: _RouterThread | NomadRpcListener | None = None
        self._endpoint: str | None = None

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
        return self._responder.pings

    @property
    def dropped(self) -> int:
        """Requests read and not answered while paused, since the last start.

        A test waits on it to know a request sent while paused was really read
        (and dropped) before it resumes, rather than guessing a delay.
        """
        with self._lock:
            thread = self._thread
        return thread.dropped if thread is not None else 0

    @property
    def running(self) -> bool:
        """Whether started (or serving) and not stopped since."""
        with self._lock:
            return self._thread is not None

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind and serve on a daemon thread; return once bound.

        Raises:
            RuntimeError: already running, or the thread did not start in time.
            zmq.ZMQError: (``zmq``) the bind failed (e.g. the port is taken);
                nothing is left open and the stand-in may be started again.
            OSError: (``nomad``) likewise.
        """
        self._start(self._bind, timeout_s)

    def restart(self, timeout_s: float = 5.0) -> None:
        """Bind the same endpoint again after ``stop()``: the server came back."""
        self._start(self.endpoint, timeout_s)

    def _start(self, bind: str, timeout_s: float) -> None:
        with self._lock:
            thread = self._claim(bind)
            try:
                thread.start(timeout_s)
            except BaseException:
                self._thread = None
                raise
            self._endpoint = thread.endpoint
            if self._thread is not thread:
                # A signal handler on this thread called stop() before the
                # thread was alive, when there was nothing to tell yet.
                thread.stop(timeout_s)

    def _claim(self, bind: str) -> _RouterThread | NomadRpcListener:
        """A new thread, recorded before it starts so that a stop() arriving
        meanwhile (a signal handler) finds something to stop."""
        if self._thread is not None:
            raise RuntimeError("the stand-in is already running")
        thread: _RouterThread | NomadRpcListener
        if isinstance(self._responder, NomadResponder):
            thread = NomadRpcListener(
                bind, self._responder, tls=self._tls, max_value_bytes=self._max_message_bytes
            )
        else:
            context = self._context if self._context is not None else zmq.Context.instance()
            thread = _RouterThread(
                context, bind, self._responder, max_message_bytes=self._max_message_bytes
            )
        self._thread = thread
        return thread

    def serve_forever(self) -> None:
        """Serve until ``stop()`` or KeyboardInterrupt, blocking the calling thread.

        ``stop()`` may come from another thread or from a signal handler on
        this one (e.g. for SIGTERM): the wait is a thread join, which lets
        signal handlers run.

        Raises:
            RuntimeError: already running.
            zmq.ZMQError: the bind failed (``zmq``).
            OSError: the bind failed (``nomad``).
        """
        with self._lock:
            thread = self._claim(self._bind)
        try:
            thread.start()
            self._endpoint = thread.endpoint
            # A stop() that came before the thread was alive had nothing to
            # tell; it cleared _thread, so do not wait for a thread nobody
            # will stop.
            if self._thread is thread:
                thread.wait()
        except KeyboardInterrupt:
            log.info("stand-in on %s interrupted", self._endpoint)
        finally:
            thread.stop()
            with self._lock:
                if self._thread is thread:
                    self._thread = None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the socket and end the thread; a no-op if not running.

        On return nothing listens on the port any more: the thread waits for
        libzmq to close the listening socket, which ``zmq_close`` alone does
        only later, on its I/O thread.
        """
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.stop(timeout_s)
        if thread.alive:
            log.warning("stand-in on %s did not stop within %s s", self._endpoint, timeout_s)

    def pause(self, timeout_s: float = 5.0) -> None:
        """Stop answering but keep the socket and connections open (gray failure).

        Requests that arrive meanwhile are read and dropped, so ``resume()``
        does not answer a backlog of stale pings. Once this returns, no later
        request is answered. (``timeout_s`` is kept for callers; setting the
        mode does not wait.)
        """
        self._running_thread().paused = True

    def resume(self, timeout_s: float = 5.0) -> None:
        """Answer pings again after ``pause()``."""
        self._running_thread().paused = False

    def _running_thread(self) -> _RouterThread | NomadRpcListener:
        with self._lock:
            if self._thread is None or not self._thread.alive:
                raise RuntimeError("the stand-in is not running")
            return self._thread

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
