"""A heartbeat publisher: what a Nomad server's heartbeat looks like on the bus.

Used by the demo, the tests and ``rpcproxy publish``. Each heartbeat carries
``publisher`` and an increasing ``seq``, so a proxy drops replays and
reordered copies.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.net.loop import SocketThread, Waker, needs_ipv6
from rpcproxy.bus.service.codec import encode_heartbeat
from rpcproxy.bus.wire import heartbeat_topic
from rpcproxy.proxy import Heartbeat, HeartbeatServer

log = logging.getLogger(__name__)

ServerList = Callable[[], Sequence[HeartbeatServer] | None]
"""The servers of the next heartbeat; None sends no heartbeat this time."""


class HeartbeatPublisher(SocketThread):
    """Publishes ``servers()`` on ``heartbeat/<region>`` every ``interval_s``.

    The PUB socket is created, used and closed by the publisher's own thread
    (a :class:`~rpcproxy.bus.net.loop.SocketThread`), so :meth:`start` raises what setting
    it up raised, a taken port for one, instead of returning with a thread
    that died. ``servers`` is called on that thread each time, so the caller
    can change the list while it runs (thread-safe if it returns an immutable
    value).

    Args:
        context: the ZeroMQ context the PUB socket is made in.
        connect: endpoints to connect to (a proxy's heartbeat SUB).
        bind: endpoints to bind (for proxies that connect to publishers).
        region: heartbeats go out on ``heartbeat/<region>``.
        servers: the server list of each heartbeat; None skips that heartbeat
            (``rpcproxy publish`` whose list file is missing: an empty list
            would drop every primary of the proxy).
        num_nodes: the ``num_nodes`` of each heartbeat.
        leader: the ``leader_rpc_addr`` of each heartbeat.
        interval_s: seconds between heartbeats; the first goes out at once.
            None publishes only what :meth:`send` hands over (a bridge that
            builds its own heartbeats, such as the Nomad API's).
        publisher: the ``publisher`` name; a random ``pub-…`` one by default.
        curve: when set, the PUB socket is a CURVE client of the proxy.
        clock: monotonic seconds, for the pace.

    Attributes:
        publisher: the name every heartbeat carries.
        seq: the ``seq`` of the last heartbeat built (0 before the first).
        bound_endpoints: ``bind`` as bound (``*`` ports resolved), once started.
    """

    name = "rpcproxy-publisher"

    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        connect: Sequence[str] = (),
        bind: Sequence[str] = (),
        region: str = "global",
        servers: ServerList,
        num_nodes: Callable[[], int] = lambda: 0,
        leader: Callable[[], str] = lambda: "",
        interval_s: float | None = 1.0,
        publisher: str | None = None,
        curve: CurveClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(context)
        self._curve = curve
        self._connect = tuple(connect)
        self._bind = tuple(bind)
        self._topic = heartbeat_topic(region)
        self._servers = servers
        self._num_nodes = num_nodes
        self._leader = leader
        self._interval_s = interval_s
        self._clock = clock
        self.publisher = publisher or f"pub-{uuid.uuid4().hex[:8]}"
        self.seq = 0
        self.bound_endpoints: list[str] = []
        self._pub: zmq.Socket[bytes] | None = None
        self._due = 0.0
        self._failures = 0
        # send(): the latest heartbeat handed over, taken by the thread.
        self._pending: Heartbeat | None = None
        self._pending_lock = threading.Lock()
        self._waker: Waker | None = None

    def send(self, heartbeat: Heartbeat) -> None:
        """Publish ``heartbeat`` as it is, soon, from the publisher's thread.

        Thread-safe. Heartbeats are state, so one not yet sent is replaced by
        the next (the latest wins); a handover before :meth:`start` goes out
        once the socket is up.
        """
        with self._pending_lock:
            self._pending = heartbeat
        waker = self._waker
        if waker is not None:
            waker.wake()

    def run_forever(self) -> None:
        """Publish until :meth:`stop` (from another thread or a signal handler).

        Raises:
            OSError: a socket could not be bound or connected.
            KeyboardInterrupt: Ctrl-C, after the publisher has stopped.
        """
        self.start()
        try:
            self.wait()
        finally:
            self.stop()

    def heartbeat(self) -> Heartbeat | None:
        """The next heartbeat (advances ``seq``), or None when ``servers`` gives none."""
        listed = self._servers()
        if listed is None:
            return None
        servers = tuple(listed)
        self.seq += 1
        return Heartbeat(
            servers=servers,
            num_nodes=self._num_nodes(),
            leader_rpc_addr=self._leader(),
            publisher=self.publisher,
            seq=self.seq,
        )

    # SocketThread -------------------------------------------------------------

    def setup(self) -> None:
        pub: zmq.Socket[bytes] = self.context.socket(zmq.PUB)
        # Assigned at once so that teardown closes it whatever fails below.
        self._pub = pub
        pub.linger = 0
        pub.ipv6 = any(map(needs_ipv6, self._bind + self._connect))
        if self._curve is not None:
            self._curve.secure(pub)
        for endpoint in self._bind:
            try:
                pub.bind(endpoint)
            except zmq.ZMQError as exc:
                raise OSError(f"cannot bind heartbeat publisher to {endpoint}: {exc}") from exc
            self.bound_endpoints.append(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        for endpoint in self._connect:
            try:
                pub.connect(endpoint)
            except zmq.ZMQError as exc:
                raise OSError(f"cannot connect heartbeat publisher to {endpoint}: {exc}") from exc
        self._waker = Waker()
        self.poller.register(self._waker.fileno, zmq.POLLIN)
        self._due = self._clock() if self._interval_s is not None else float("inf")

    def poll_timeout_ms(self) -> int | None:
        # Nothing is registered but the control pipe: the poll is the pace.
        if self._pending is not None:
            return 0  # handed over before the waker existed
        if self._due == float("inf"):
            return None
        return max(0, int((self._due - self._clock()) * 1000) + 1)

    def on_readable(self, sock: Any) -> None:
        if self._waker is not None and sock == self._waker.fileno:
            self._waker.drain()

    def on_idle(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is not None and self._pub is not None:
            self._pub.send_multipart([self._topic, encode_heartbeat(pending)])
        if self._interval_s is None:
            return
        now = self._clock()
        if now < self._due:
            return
        self._publish()
        # From now, not from the missed due time: a stalled thread sends one
        # heartbeat when it wakes, not a burst to catch up.
        self._due = now + self._interval_s

    def teardown(self) -> None:
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None

    def _publish(self) -> None:
        assert self._pub is not None
        try:
            heartbeat = self.heartbeat()
            payload = None if heartbeat is None else encode_heartbeat(heartbeat)
        except Exception:
            # The caller's list failed (a file being rewritten): skip this
            # heartbeat, not every later one. One traceback per run of
            # failures, so a broken source cannot flood the log.
            self._failures += 1
            if self._failures == 1:
                log.exception("%s could not build a heartbeat; retrying", self.publisher)
            return
        if self._failures:
            log.warning(
                "%s builds heartbeats again after %d failures", self.publisher, self._failures
            )
            self._failures = 0
        if payload is None:
            return  # The source has nothing to send; its owner says why.
        # PUB never blocks: with no subscriber (or a full one) it drops.
        self._pub.send_multipart([self._topic, payload])
