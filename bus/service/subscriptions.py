"""What an events subscriber can make the proxy hold by subscribing (docs/protocol.md section 8).

libzmq's PUB keeps every subscription each peer sends, in a trie of about
one node per byte of topic, until that peer unsubscribes or leaves: one SUB
sending 50,000 distinct 100-byte subscriptions took ``serve`` from 39 to
254 MiB (bench/subscription_flood.py), and one 1 MiB subscription cost a PUB
48 MiB. Only the event topic and its prefixes ever match an event, but
nothing in libzmq bounds the rest. ``ZMQ_XPUB_MANUAL`` does not either: the
socket then keeps every subscription in a second trie (to unsubscribe for
the peer when it leaves) whether its owner applies it or not, and the same
flood cost it the same 220 MiB. ``ZMQ_MAXMSGSIZE`` bounds one message, not
how many.

So the events socket is an XPUB with ``ZMQ_XPUB_VERBOSE``: libzmq hands its
owner every subscription a peer sends, each with the descriptor of the
connection it came on (``ZMQ_SRCFD``). :class:`SubscriptionGuard` counts per
connection the bytes of subscriptions to topics no event has, and past
:data:`JUNK_BYTES` shuts that connection down under libzmq's feet; libzmq
then closes it and drops all its subscriptions. A subscriber of the event
topic, a prefix of it or everything (``""``) is never counted.

What a connection holds before it is shut is bounded by :func:`prepare`'s
options. libzmq moves a peer's subscriptions into the trie only when the
socket's owner calls into it (it runs its pending commands then), and
between two calls at most :data:`RCVHWM` messages wait per connection, then
:data:`RCVBUF` bytes in the kernel, and then TCP makes the peer wait; each
message, the handshake's included, is at most :data:`MAX_MESSAGE_BYTES`.
Measured (bench/subscription_flood.py): a million distinct subscriptions at
50,000 a second, over the 2,000-odd connections the proxy closed, left
``serve`` within a few MiB of where it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rpcproxy.log_gate import PeerLog

log = logging.getLogger(__name__)

JUNK_BYTES = 1024
"""Bytes of subscriptions to topics no event has that one connection may make.

Such a subscription costs the proxy about 46 bytes of trie per byte of
topic (220 MiB for 5 MB of them), so this is about 46 KiB, less than the
80 KB a connection costs anyway. Subscriptions to the event topic or a
prefix of it are not counted: there are 20 of them, held once per
connection however often they are sent.
"""

MAX_MESSAGE_BYTES = 512
"""The largest message the events socket reads (``ZMQ_MAXMSGSIZE``); larger closes the connection.

A subscription's cost grows with its length, so without a bound one message
is enough to take gigabytes. The handshake's commands count too: CURVE's
largest is about 260 bytes (measured: 256 refuses a CURVE subscriber, 300
lets it in), and the rest leaves room for metadata a client adds.
"""

RCVHWM = 4
"""Messages from one connection libzmq queues before it stops reading it (``ZMQ_RCVHWM``).

A subscriber sends its subscriptions once, and usually one; four are read
at the actor's next turn, more over the turns after. While the guard reads
a turn's subscriptions libzmq takes in more from every connection, so a
longer queue delays the shutting of all of them: under a million
subscriptions at 50,000 a second, RSS read every 2 s rose by up to 25 MiB
with 16, 9 with 4 and 2.5 with 1 (which reads a subscriber's eighth
subscription at the eighth turn, eight seconds on an idle proxy).
"""

RCVBUF = 4096
"""Each connection's kernel receive buffer, in bytes (``ZMQ_RCVBUF``).

After the guard shuts a connection libzmq still reads, and applies, what
the kernel holds for it before it sees the end. Left to the OS that is
128 KiB and up (``tcp_rmem``): some 1,300 subscriptions of 100 bytes, 6 MiB
of trie, per connection. Under a million subscriptions at 50,000 a second
RSS rose by 1.6 MiB with this buffer and 4.2 MiB without. A subscriber
sends a few dozen bytes.
"""

READ_PER_TURN = 65_536
"""Subscription messages read in one turn at most, so a flood cannot hold the actor for good.

Far above what a turn brings (a few thousand at most under the floods
measured): a guard that stopped short would leave connections unshut while
they send more.
"""


def prepare(sock: zmq.Socket[Any]) -> None:
    """Set the options above on ``sock``, an XPUB not bound yet (libzmq applies them per peer)."""
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.maxmsgsize = MAX_MESSAGE_BYTES
    sock.rcvhwm = RCVHWM
    sock.rcvbuf = RCVBUF


LocalMatch = Callable[[Any], bool]
"""Whether a socket's ``getsockname()`` is the events socket's own address."""


def local_match(endpoint: str) -> LocalMatch | None:
    """What every connection of the socket bound at ``endpoint`` has as its local address.

    None for a transport whose connections have no descriptor of their own
    (inproc): nothing is ever shut there.
    """
    transport, _, address = endpoint.partition("://")
    if transport == "tcp":
        port = int(address.rsplit(":", 1)[1])
        return lambda name: isinstance(name, tuple) and len(name) >= 2 and name[1] == port
    if transport == "ipc":
        # Python names an abstract socket (libzmq's "@name") in bytes, NUL first.
        path = b"\0" + address[1:].encode() if address.startswith("@") else address.encode()
        return lambda name: (os.fsencode(name) if isinstance(name, str) else name) == path
    return None


def shut_down(fd: int, inode: int, is_local: LocalMatch) -> bool:
    """Shut the connection on ``fd`` down if it is still the socket counted and one of ours.

    libzmq owns ``fd`` and may have closed it since, and the number may
    belong to another socket by now: the check runs on a duplicate, which
    keeps whatever it names open until the check is done. Same inode (the
    socket counted, not a new one that took its number), a peer (not a
    listener), the events socket's local address (not a query client's
    connection). libzmq sees the end of the stream, closes the connection
    and drops its subscriptions.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return False  # closed already
    try:
        status = os.fstat(dup)
        if status.st_ino != inode or not stat.S_ISSOCK(status.st_mode):
            os.close(dup)
            return False
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return False
    with sock:  # closes the duplicate only
        try:
            sock.getpeername()
            if not is_local(sock.getsockname()):
                return False
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
    return True


@dataclass(slots=True)
class _Connection:
    inode: int
    junk_bytes: int = 0
    shut: bool = False
    """Shut down already: what it sent before libzmq saw the end is read and not counted again."""


class SubscriptionGuard:
    """Reads the subscriptions an XPUB hands over; shuts connections that spend too much on others.

    :meth:`read` runs after each of the owner's sends, on the owner's thread
    (the socket's only one).

    Args:
        sock: the XPUB (set up by :func:`prepare`).
        topic: the one topic events are sent on.
        is_local: the socket's local address (:func:`local_match`); None
            never shuts anything.
        junk_bytes: :data:`JUNK_BYTES`.
        close: shuts a connection down (:func:`shut_down`; tests pass fakes).
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        topic: bytes,
        is_local: LocalMatch | None,
        *,
        junk_bytes: int = JUNK_BYTES,
        close: Callable[[int, int, LocalMatch], bool] = shut_down,
    ) -> None:
        self._sock = sock
        self._topic = topic
        self._is_local = is_local
        self._junk_bytes = junk_bytes
        self._close = close
        # By descriptor number: never more entries than the most descriptors
        # the process has had open at once, a few dozen bytes each, as a
        # number freed is the next one given out. An entry whose inode
        # changed is another connection's, which starts from nothing.
        self._connections: dict[int, _Connection] = {}
        self._peer_log = PeerLog(log)
        self.closed = 0

    @property
    def tracked(self) -> int:
        """Connections whose subscriptions to other topics are being counted."""
        return len(self._connections)

    def read(self) -> None:
        """Read what libzmq has handed over, counting and shutting as it goes."""
        for _ in range(READ_PER_TURN):
            try:
                frame = self._sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._note(frame)

    def _note(self, frame: zmq.Frame) -> None:
        data = frame.bytes
        is_local = self._is_local
        # Unsubscriptions free memory; an XSUB's other messages are read and
        # gone; the event topic's prefixes are kept once per connection.
        if is_local is None or data[:1] != b"\x01" or self._topic.startswith(data[1:]):
            return
        # ZMQ_SRCFD is deprecated in libzmq's documentation (for Peer-Address,
        # which names a host, not a connection) but still served, from the
        # message's metadata; without it nothing is shut and the options of
        # prepare() remain the only bound (tests/unit/test_subscription_guard.py
        # checks the libzmq in use has it).
        with contextlib.suppress(zmq.ZMQError):
            self._count(frame.get(zmq.SRCFD), len(data), frame, is_local)

    def _count(self, fd: int, size: int, frame: zmq.Frame, is_local: LocalMatch) -> None:
        try:
            inode = os.fstat(fd).st_ino
        except OSError:
            return  # closed since: its subscriptions went with it
        conn = self._connections.get(fd)
        if conn is None or conn.inode != inode:
            conn = self._connections[fd] = _Connection(inode)
        conn.junk_bytes += size
        if conn.shut or conn.junk_bytes <= self._junk_bytes:
            return
        conn.shut = True
        if self._close(fd, inode, is_local):
            self.closed += 1
            with contextlib.suppress(zmq.ZMQError):
                peer = frame.get("Peer-Address")
                self._peer_log.warning(
                    "events_subscriptions",
                    "closed an events connection from %s: over %d bytes of subscriptions"
                    " to topics no event has",
                    peer,
                    self._junk_bytes,
                )
