"""A thread that owns ZeroMQ sockets, modelled on pyzmq's ``zmq/auth/thread.py``.

pyzmq sockets are not thread-safe, so each socket is created, used and closed
by one thread. Other threads talk to that thread only through an inproc
control pipe (to stop it) or a :class:`Waker` (to make it look at a queue).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from typing import Any, Final

import zmq

log = logging.getLogger(__name__)

_TERMINATE = b"TERMINATE"
_ids = itertools.count()

_NOBLOCK: Final = int(zmq.NOBLOCK)
_RCVMORE: Final = int(zmq.RCVMORE)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """The next whole message's frames, copied, or None if none is queued.

    pyzmq's ``recv_multipart`` with plain int flags: its flags are enum.Flag
    values, and or-ing them per frame costs about half a microsecond each, a
    measurable share of a find_server round trip. Copied: a request or a
    heartbeat is a few hundred bytes, which ``bytes`` hold for less than a
    ``zmq.Frame`` costs to make (zero-copy pays from tens of kB).
    """
    try:
        frames = [sock.recv(_NOBLOCK)]
    except zmq.Again:
        return None
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(_NOBLOCK))
    return frames


def needs_ipv6(endpoint: str) -> bool:
    """Whether a socket must have IPV6 set to bind or connect ``endpoint``.

    Only bracketed literals need it: setting it everywhere would make libzmq
    report IPv4 binds as ``[::ffff:127.0.0.1]``, which IPv4-only peers cannot use.
    """
    return endpoint.startswith("tcp://[")


class Waker:
    """A self-pipe that any thread may poke to wake a poller.

    zmq.Poller can poll plain file descriptors, so this lets a thread that must
    not touch the loop's sockets (an actor delivering a reply) wake it up.
    Waking after :meth:`close` does nothing: writing to a closed descriptor
    would fail, or, once the number is reused, write into someone else's file.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> bool:
        """Poke the reader; False once the waker is closed."""
        with self._lock:
            if self._closed:
                return False
            # A full pipe means the reader is already due to wake.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")
            return True

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read_fd)
                os.close(self._write_fd)


class SocketThread:
    """Base for a daemon thread that polls its own sockets until told to stop.

    Subclasses create their sockets in :meth:`setup` (in the thread), react in
    :meth:`on_readable`, and close them in :meth:`teardown`. :meth:`start`
    returns once setup is done and re-raises its error (a bind that failed),
    so a service never runs with a socket that silently did not open.
    :meth:`teardown` runs after a failed setup too, so it closes whatever
    setup had opened. Periodic work (a publisher's pace, deadlines) needs no
    socket: :meth:`poll_timeout_ms` says when to wake and :meth:`on_idle` does it.
    """

    name = "rpcproxy-socket-thread"

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.context = context
        self._control_endpoint = f"inproc://{self.name}-{next(_ids)}"
        self._started = threading.Event()
        self._error: BaseException | None = None
        # Replaced by start(), which hands the thread its control socket.
        self._thread = threading.Thread(name=self.name, daemon=True)
        self.poller = zmq.Poller()

    # To be provided by subclasses -------------------------------------------

    def setup(self) -> None:
        """Create, configure and bind/connect sockets; register them on ``self.poller``."""

    def on_readable(self, sock: Any) -> None:
        """A registered socket or file descriptor is readable."""

    def poll_timeout_ms(self) -> int | None:
        """How long to wait for input; None waits until something arrives."""
        return None

    def on_idle(self) -> None:
        """Called after every poll, readable or not (deadline checks)."""

    def teardown(self) -> None:
        """Close the sockets made in :meth:`setup`."""

    # Lifecycle ------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the thread; return once :meth:`setup` is done.

        On a setup error the thread has ended (its sockets closed) by the
        time the error is raised here, so the caller may retry at once.

        Raises:
            RuntimeError: already started, or setup did not finish in
                ``timeout_s`` (the thread is then told to stop once it can).
            Exception: whatever :meth:`setup` raised.
        """
        if self._thread.ident is not None:
            raise RuntimeError(f"{self.name} was already started")
        # The control end is bound here, before the thread exists, so that a
        # stop() racing with start() always finds it (an inproc message to a
        # name nobody has bound yet is lost when the sender closes). From
        # Thread.start() on, the thread alone uses and closes it; Thread.start
        # is the memory barrier libzmq asks for when a socket changes threads.
        control: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        try:
            control.linger = 0
            control.bind(self._control_endpoint)
            self._thread = threading.Thread(
                target=self._run, args=(control,), name=self.name, daemon=True
            )
            self._thread.start()
        except BaseException:
            control.close()
            raise
        if not self._started.wait(timeout_s):
            # Nobody would own a thread that finishes setup later: have it
            # stop as soon as it polls.
            self.stop(timeout_s=0)
            raise RuntimeError(f"{self.name} did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Tell the thread to stop and wait up to ``timeout_s`` for it to end.

        A no-op if it is not running. Once this returns (in time) the thread
        has closed its sockets.
        """
        if not self._thread.is_alive():
            return
        pipe = self.context.socket(zmq.PAIR)
        try:
            pipe.linger = 0
            pipe.connect(self._control_endpoint)
            pipe.send(_TERMINATE)
        finally:
            pipe.close()
        self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the thread has ended (or ``timeout_s`` passed).

        Signal handlers still run meanwhile on the main thread, so a handler
        may call :meth:`stop` to end the wait.

        Returns:
            Whether the thread has ended.
        """
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _dispatch(self, sock: Any) -> None:
        try:
            self.on_readable(sock)
        except zmq.ContextTerminated:
            raise
        except Exception:
            # A bug triggered by one message must not take the socket down
            # for every later peer.
            log.exception("%s: error while handling input", self.name)

    def _run(self, control: zmq.Socket[bytes]) -> None:
        self.poller.register(control, zmq.POLLIN)
        try:
            try:
                self.setup()
            except BaseException as exc:  # reported to start(), which re-raises it
                self._error = exc
                return
            finally:
                self._started.set()
            poll = self.poller.poll
            while True:
                # The list as it comes (no dict of it): this loop runs once per
                # request of a lone client, whose round trip it is part of.
                # control was registered first, so it comes first when ready.
                for sock, _ in poll(self.poll_timeout_ms()):
                    if sock is control:
                        control.recv()
                        return
                    self._dispatch(sock)
                self.on_idle()
        except Exception:
            log.exception("%s stopped on an unexpected error", self.name)
        finally:
            try:
                self.teardown()
            finally:
                control.close()
