"""Parallel server pings for rebalancing (docs/protocol.md section 4).

The reference probed candidates one after another, so k dead servers at the
head of the list cost k timeouts. Here candidates are probed at once and a
call returns as soon as the *first candidate in order* that answers is known.
What a ping may never do is delay anything else, or grow with what a peer
lists, so every call here is shaped by four rules:

- **A window.** At most ``window`` connection attempts are open at once (each
  a socket or two); the next candidate, in order, is opened as one finishes.
  The window fits under the process's descriptor limit with room for the rest
  of the service (:func:`window_for`), so 4096 candidates work as well as 4.
- **A deadline per candidate**, ``timeout_s`` from when it was opened, covering
  resolution, connect and the exchange. Candidates opened together share it,
  so k dead servers cost about one timeout while k is below the window.
- **Names resolved off every shared thread** (:mod:`~rpcproxy.bus.net.resolve`): sockets
  are only ever connected to IP literals, so libzmq never resolves.
- **Interruptible.** :meth:`WindowedProber.close` may be called from any
  thread: a call in flight returns at once with what it has (pending counts as
  failed) and later calls fail at once, so shutdown never waits a timeout.

One engine (:class:`_Run`) drives every prober; a prober only says how to
make an :class:`Attempt` for one resolved endpoint. An attempt is a small
state machine over one socket at a time, which is what a TCP exchange of a
request and a reply needs: :class:`TcpConnect` connects, and a subclass goes
on from :meth:`TcpConnect.connected` (the ZeroMQ ping here; Nomad's
msgpack-rpc ``Status.Ping``, with TLS, in :mod:`bus.service.nomad_ping`).

Every prober here is a :data:`rpcproxy.actors.prober.Prober`, the contract
ProberActor calls (defined there, once), decided by ``prefix_decided`` and
built by ``prefix_results``.
"""

from __future__ import annotations

import abc
import collections
import errno
import logging
import queue
import resource
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeAlias

import msgspec
import zmq

from rpcproxy.bus.net.loop import Waker
from rpcproxy.bus.net.resolve import (
    DEFAULT_MAX_LOOKUPS,
    Endpoint,
    Lookup,
    Resolver,
    numeric_endpoints,
    shared_resolver,
)
from rpcproxy.bus.wire import Op
from rpcproxy.proxy import Address

if TYPE_CHECKING:
    from rpcproxy.actors import Prober

__all__ = [
    "Attempt",
    "Step",
    "TcpConnect",
    "TcpProber",
    "WindowedProber",
    "ZmqProber",
    "prefix_decided",
    "prefix_results",
    "window_for",
]

log = logging.getLogger(__name__)


def prefix_decided(results: Sequence[bool | None]) -> bool:
    """Whether the first success in candidate order is already known.

    ``results[i]`` is ``None`` while candidate ``i`` is still pending. The
    prefix is decided once some candidate answered and every earlier one
    failed, or once every candidate failed: later answers cannot change which
    server a rebalance picks, so there is no reason to keep waiting.
    """
    for result in results:
        if result is None:
            return False
        if result:
            return True
    return True


def _all_decided(results: Sequence[bool | None]) -> bool:
    """Whether every candidate has answered or failed (a probe of every candidate)."""
    return None not in results


def prefix_results(
    candidates: Sequence[Address], results: Sequence[bool | None]
) -> dict[Address, bool]:
    """A :data:`~rpcproxy.actors.prober.Prober`'s return value: results up to the first success.

    Pending candidates count as failed, which is what they are once the
    deadline has passed.
    """
    out: dict[Address, bool] = {}
    for addr, result in zip(candidates, results, strict=True):
        out[addr] = bool(result)
        if result:
            break
    return out


# -- the window ------------------------------------------------------------------

MAX_WINDOW = 256
"""Attempts open at once when descriptors are plentiful: enough that a few
hundred dead servers cost one timeout, few enough to be cheap."""

MIN_WINDOW = 8
RESERVED_FDS = 256
"""Descriptors left for the rest of the service: its sockets, libzmq's
internal pipes, the metrics endpoint, the state file, logs."""


def window_for(
    fds_per_attempt: int,
    *,
    fd_limit: int | None = None,
    resolver_lookups: int = DEFAULT_MAX_LOOKUPS,
) -> int:
    """How many attempts may be open at once under the descriptor limit.

    Args:
        fds_per_attempt: descriptors one open attempt may hold.
        fd_limit: the soft ``RLIMIT_NOFILE`` (read from the process if None).
        resolver_lookups: lookups that may run at once, each holding up to
            two descriptors to the name server.
    """
    if fd_limit is None:
        fd_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if fd_limit == resource.RLIM_INFINITY:
        return MAX_WINDOW
    spare = fd_limit - RESERVED_FDS - 2 * resolver_lookups
    return max(MIN_WINDOW, min(MAX_WINDOW, spare // fds_per_attempt))


# -- attempts --------------------------------------------------------------------

PollTarget: TypeAlias = "zmq.Socket[bytes] | int"
"""What an attempt waits on: a ZeroMQ socket or a file descriptor."""

Step: TypeAlias = "tuple[PollTarget, int] | bool"
"""What an attempt does next: wait for ``zmq.POLLIN``/``zmq.POLLOUT`` on a
target, or be done (``True`` answered, ``False`` failed)."""


class Attempt(abc.ABC):
    """One try of one resolved endpoint of a candidate.

    The run calls :meth:`start` once, then :meth:`ready` each time the
    awaited event (or an error) occurs on the target of the last step, until
    a step is a bool; then, or at the deadline, :meth:`close`. Every call is
    made on the pinging thread, so the sockets belong to it alone. Steps may
    move from one target to another (a TCP socket, then a ZeroMQ socket).
    """

    @abc.abstractmethod
    def start(self) -> Step:
        """Begin: open the socket and start connecting."""

    @abc.abstractmethod
    def ready(self) -> Step:
        """The awaited event occurred: go on."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close whatever is open; called exactly once, done or not."""


_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY})


class TcpConnect(Attempt):
    """A non-blocking TCP connect; success once the connection is up.

    The base of every TCP exchange: a subclass overrides :meth:`connected` to
    send its request on ``self.sock`` and say what to wait for next, and
    :meth:`ready` for the steps after that.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sock: socket.socket | None = None

    def start(self) -> Step:
        family, sockaddr = self.endpoint
        try:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return False  # Out of descriptors: this endpoint fails, others go on.
        self.sock.setblocking(False)
        err = self.sock.connect_ex(sockaddr)
        if err == 0:
            return self.connected()
        if err in _IN_PROGRESS:
            return self.sock.fileno(), zmq.POLLOUT
        return False

    def ready(self) -> Step:
        assert self.sock is not None
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            return False
        return self.connected()

    def connected(self) -> Step:
        """The TCP connection is up; a plain TCP ping has succeeded."""
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- the engine --------------------------------------------------------------------

MakeAttempt: TypeAlias = Callable[[Endpoint], Attempt]


class _Run:
    """The state of one ping call: candidates, open attempts, lookups, deadlines.

    Used by one thread, except :meth:`interrupt` and the resolver callbacks,
    which only put into a queue and poke the waker.
    """

    def __init__(
        self,
        candidates: Sequence[Address],
        *,
        timeout_s: float,
        window: int,
        resolver: Resolver,
        make_attempt: MakeAttempt,
        every: bool = False,
    ) -> None:
        self._candidates = candidates
        self._every = every
        self._decided = _all_decided if every else prefix_decided
        self._timeout_s = timeout_s
        self._window = window
        self._resolver = resolver
        self._make_attempt = make_attempt
        count = len(candidates)
        self.results: list[bool | None] = [None] * count
        # Open attempts, queued endpoints and lookups per candidate: it fails
        # when all of them have.
        self._outstanding = [0] * count
        self._next = 0  # The next candidate to open, in order.
        self._first_success = count
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._attempts: dict[int, list[Attempt]] = {}
        self._targets: dict[Attempt, tuple[PollTarget, int]] = {}
        self._by_target: dict[PollTarget, tuple[Attempt, int]] = {}
        self._queued: collections.deque[tuple[int, Endpoint]] = collections.deque()
        self._lookups: dict[int, tuple[Lookup, Callable[[list[Endpoint]], None]]] = {}
        self._resolved: queue.SimpleQueue[tuple[int, list[Endpoint]]] = queue.SimpleQueue()
        self._interrupted = False
        self._poller = zmq.Poller()
        self._waker = Waker()
        self._poller.register(self._waker.fileno, zmq.POLLIN)
        self.refused_lookups = 0
        self.peak_open = 0

    # Driving ---------------------------------------------------------------------

    def run(self) -> list[bool | None]:
        """Ping until the answer is decided, every deadline passed, or interrupted."""
        self._open_more(time.monotonic())
        while not self._interrupted and not self._decided(self.results):
            now = time.monotonic()
            wait_s = self._deadlines[0][0] - now if self._deadlines else self._timeout_s
            if wait_s > 0:
                # Round up, so a poll never wakes just short of a deadline.
                for target, _ in self._poller.poll(int(wait_s * 1000) + 1):
                    self._on_event(target)
                now = time.monotonic()
            self._expire(now)
            self._open_more(now)
        return self.results

    def interrupt(self) -> None:
        """Make :meth:`run` return promptly (any thread)."""
        self._interrupted = True
        self._waker.wake()

    def close(self) -> None:
        """Close every socket still open and stop waiting for lookups."""
        for index in list(self._attempts):
            self._drop(index)
        for index in list(self._lookups):
            self._cancel_lookup(index)
        self._waker.close()

    # Opening -----------------------------------------------------------------------

    def _open_more(self, now: float) -> None:
        """Fill the window: resolved endpoints first, then new candidates in order."""
        while self._queued and len(self._targets) < self._window:
            index, endpoint = self._queued.popleft()
            if self.results[index] is None:  # Else decided while it queued.
                self._start(index, endpoint)
        while (
            self._next < self._first_success
            and len(self._targets) < self._window
            and not self._queued
        ):
            index = self._next
            self._next += 1
            self._deadlines.append((now + self._timeout_s, index))
            addr = self._candidates[index]
            endpoints = numeric_endpoints(addr)
            if endpoints is not None:
                self._outstanding[index] += len(endpoints)
                for endpoint in endpoints:
                    if self.results[index] is not None:
                        break  # An earlier endpoint answered at once.
                    self._start(index, endpoint)
                self._maybe_failed(index)
                continue
            self._resolve(index, addr)

    def _resolve(self, index: int, addr: Address) -> None:
        def on_resolved(endpoints: list[Endpoint]) -> None:
            # On a resolver thread: hand over, the run's thread does the rest.
            self._resolved.put((index, endpoints))
            self._waker.wake()

        lookup = self._resolver.resolve(addr, on_resolved)
        if lookup is None:
            self.refused_lookups += 1
            self.results[index] = False
            return
        self._outstanding[index] += 1
        self._lookups[index] = (lookup, on_resolved)

    def _start(self, index: int, endpoint: Endpoint) -> None:
        attempt = self._make_attempt(endpoint)
        self._attempts.setdefault(index, []).append(attempt)
        self._step(index, attempt, attempt.start())

    # Events --------------------------------------------------------------------------

    def _on_event(self, target: PollTarget) -> None:
        if target == self._waker.fileno:
            self._waker.drain()
            self._take_resolved()
            return
        entry = self._by_target.get(target)
        if entry is not None:
            attempt, index = entry
            self._step(index, attempt, attempt.ready())

    def _take_resolved(self) -> None:
        while not self._resolved.empty():
            index, endpoints = self._resolved.get_nowait()
            if self._lookups.pop(index, None) is None or self.results[index] is not None:
                continue  # Expired or decided meanwhile.
            self._outstanding[index] += len(endpoints) - 1  # The lookup itself is done.
            self._queued.extend((index, endpoint) for endpoint in endpoints)
            self._maybe_failed(index)

    def _step(self, index: int, attempt: Attempt, step: Step) -> None:
        old = self._targets.pop(attempt, None)
        if old is not None:
            del self._by_target[old[0]]
            self._poller.unregister(old[0])
        if not isinstance(step, bool):
            self._targets[attempt] = step
            self._by_target[step[0]] = (attempt, index)
            self._poller.register(*step)
            self.peak_open = max(self.peak_open, len(self._targets))
            return
        attempt.close()
        self._attempts[index].remove(attempt)
        self._outstanding[index] -= 1
        if step:
            self._succeeded(index)
        else:
            self._maybe_failed(index)

    def _succeeded(self, index: int) -> None:
        self.results[index] = True
        if index < self._first_success and not self._every:
            # Candidates after the first success cannot matter: free their slots.
            for later in range(index + 1, self._first_success):
                if self.results[later] is None:
                    self._fail(later)
            self._first_success = index
        self._drop(index)

    def _maybe_failed(self, index: int) -> None:
        if self._outstanding[index] == 0 and self.results[index] is None:
            self._fail(index)

    def _expire(self, now: float) -> None:
        """Fail every candidate whose deadline has passed."""
        while self._deadlines and (
            self._deadlines[0][0] <= now or self.results[self._deadlines[0][1]] is not None
        ):
            _, index = self._deadlines.popleft()
            if self.results[index] is None:
                self._fail(index)

    def _fail(self, index: int) -> None:
        self.results[index] = False
        self._drop(index)

    def _drop(self, index: int) -> None:
        """Close what a decided candidate still has open."""
        for attempt in self._attempts.pop(index, []):
            old = self._targets.pop(attempt, None)
            if old is not None:
                del self._by_target[old[0]]
                self._poller.unregister(old[0])
            attempt.close()
        self._cancel_lookup(index)
        # Its queued endpoints are skipped when their turn comes.

    def _cancel_lookup(self, index: int) -> None:
        entry = self._lookups.pop(index, None)
        if entry is not None:
            self._resolver.cancel(*entry)


# -- probers -----------------------------------------------------------------------


class WindowedProber(abc.ABC):
    """The machinery every prober shares; subclasses make the attempts.

    Args:
        timeout_s: the deadline of one candidate's whole ping.
        window: attempts open at once (:func:`window_for` if None).
        resolver: where names are resolved (the process's shared one if None).
    """

    fds_per_attempt = 1
    """Descriptors one open attempt may hold, for :func:`window_for`."""

    close_wait_s = 2.0
    """How long :meth:`close` waits for a call in flight to notice."""

    def __init__(
        self,
        *,
        timeout_s: float,
        window: int | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._resolver = resolver or shared_resolver()
        self.window = (
            window
            if window is not None
            else window_for(self.fds_per_attempt, resolver_lookups=self._resolver.max_lookups)
        )
        if self.window < 1:
            raise ValueError("window must be at least 1")
        self._cond = threading.Condition()
        self._runs: set[_Run] = set()
        self._closed = False
        self._released = False
        self.last_peak_open = 0
        """Attempts open at once at the busiest moment of the last call."""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """How many calls are running now."""
        with self._cond:
            return len(self._runs)

    def __call__(self, candidates: Sequence[Address]) -> dict[Address, bool]:
        """Results up to the first candidate in order that answers (a rebalance's question)."""
        unique = list(dict.fromkeys(candidates))
        return prefix_results(unique, self._probe(unique, every=False))

    def every(self, candidates: Sequence[Address]) -> dict[Address, bool]:
        """Every candidate's answer, all probed at once (``set_servers``' question)."""
        unique = list(dict.fromkeys(candidates))
        results = self._probe(unique, every=True)
        return {addr: bool(result) for addr, result in zip(unique, results, strict=True)}

    def _probe(self, unique: list[Address], *, every: bool) -> list[bool | None]:
        # A server listed twice is probed once (the callers dedupe); the result is the same.
        with self._cond:
            if self._closed:
                return [False] * len(unique)
            make_attempt = self._prepare()
            run = _Run(
                unique,
                timeout_s=self._timeout_s,
                window=self.window,
                resolver=self._resolver,
                make_attempt=make_attempt,
                every=every,
            )
            self._runs.add(run)
        try:
            results = run.run()
        finally:
            run.close()
            with self._cond:
                self._runs.discard(run)
                self._cond.notify_all()
                release = self._closed and not self._runs and not self._released
                self._released |= release
            if release:
                self._release()
        self.last_peak_open = run.peak_open
        if run.refused_lookups:
            log.debug(
                "ping: %d names not resolved: %d lookups already running",
                run.refused_lookups,
                self._resolver.max_lookups,
            )
        return results

    def close(self) -> None:
        """Stop pinging, from any thread; safe to call more than once.

        A call in flight returns promptly with what it has (pending candidates
        count as failed); later calls return at once with every candidate
        failed. Resources (a ZeroMQ context) are released once no call runs;
        if one does not notice within ``close_wait_s``, it releases them itself
        on its way out, so no socket is ever closed under a running call.
        """
        with self._cond:
            self._closed = True
            for run in self._runs:
                run.interrupt()
            self._cond.wait_for(lambda: not self._runs, timeout=self.close_wait_s)
            release = not self._runs and not self._released
            self._released |= release
        if release:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def _prepare(self) -> MakeAttempt:
        """What makes one attempt, set up for a call (under the lock)."""

    def _release(self) -> None:  # noqa: B027 - a hook; most probers own nothing.
        """Free what the prober owns; called once, with no call running."""


if TYPE_CHECKING:

    def _is_a_prober(prober: WindowedProber) -> Prober:
        """Holds every prober here to the contract ProberActor calls (mypy only)."""
        return prober


class TcpProber(WindowedProber):
    """Pings servers by opening a TCP connection (``ping_method = "tcp"``).

    Connections are non-blocking and watched by one poller, so no thread is
    spent on IP literals, which is what servers advertise in practice. A name
    that resolves to several addresses is tried on a few of them at once.
    """

    def _prepare(self) -> MakeAttempt:
        return TcpConnect


class _Reply(msgspec.Struct):
    """Only ``ok`` matters; typed decoding skips other keys without building
    them, so a hostile reply cannot make us allocate deep structures."""

    ok: bool = False


_REPLY_DECODER = msgspec.msgpack.Decoder(_Reply)


def _is_ok_reply(frame: bytes) -> bool:
    try:
        return _REPLY_DECODER.decode(frame).ok
    except (msgspec.MsgspecError, RecursionError):
        return False


def zmq_endpoint(endpoint: Endpoint) -> str:
    """``tcp://ip:port`` for libzmq, brackets around IPv6 (zone kept)."""
    family, sockaddr = endpoint
    ip, port = sockaddr[0], sockaddr[1]
    if family == socket.AF_INET6:
        return f"tcp://[{ip}]:{port}"
    return f"tcp://{ip}:{port}"


class _ZmqPing(TcpConnect):
    """A TCP connect, then the ZeroMQ ``ping`` op over a DEALER to the same IP.

    libzmq hides a refused connection (it just retries), so a DEALER to a
    dead port would hold its window slot until the deadline. Connecting with
    a plain socket first tells a refused or unreachable server apart at once;
    only a server that accepts gets a DEALER. A fresh DEALER per ping costs
    little next to a rebalance interval of minutes, and means no stale reply
    from an earlier round is taken for a fresh answer.
    """

    def __init__(self, endpoint: Endpoint, prober: ZmqProber) -> None:
        super().__init__(endpoint)
        self._prober = prober
        self._dealer: zmq.Socket[bytes] | None = None

    def connected(self) -> Step:
        # The probe connection has served its purpose.
        super().close()
        try:
            self._dealer = self._prober.dealer(zmq_endpoint(self.endpoint))
        except zmq.ZMQError:
            return False
        return self._dealer, zmq.POLLIN

    def ready(self) -> Step:
        if self._dealer is None:
            return super().ready()
        try:
            frames = self._dealer.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return self._dealer, zmq.POLLIN  # Woken early: keep waiting.
        except zmq.ZMQError:
            return False
        return _is_ok_reply(frames[-1])

    def close(self) -> None:
        super().close()
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None


class ZmqProber(WindowedProber):
    """Pings servers with the ZeroMQ ``ping`` op (``ping_method = "zmq"``).

    Its sockets live on a ZeroMQ context of its own, made on first use and
    destroyed by :meth:`close`: nothing a ping does, however slow the peer,
    touches the I/O thread of the service's query, heartbeat and events
    sockets. Sockets are created and closed by the calling thread.
    """

    # The probe socket, then a DEALER and its libzmq connection; one more for
    # a DEALER just closed whose descriptors the reaper has not freed yet.
    fds_per_attempt = 3

    def __init__(
        self,
        *,
        region: str,
        rpc_major_version: int,
        timeout_s: float,
        max_message_bytes: int = 1 << 20,
        window: int | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        super().__init__(timeout_s=timeout_s, window=window, resolver=resolver)
        self._max_message_bytes = max_message_bytes
        self._payload = msgspec.msgpack.encode(
            {"op": Op.PING, "region": region, "rpc_major_version": rpc_major_version}
        )
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None

    def _prepare(self) -> MakeAttempt:
        if self._context is None:
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
            # Room for a window of sockets plus those still being reaped, so
            # libzmq's own cap never fails a ping the window admitted.
            context.set(zmq.MAX_SOCKETS, 2 * self.window + 8)
            self._context = context
        return lambda endpoint: _ZmqPing(endpoint, self)

    def dealer(self, endpoint: str) -> zmq.Socket[bytes]:
        """A DEALER connected to ``endpoint`` (an IP literal) with the ping queued."""
        assert self._context is not None
        sock = self._context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            sock.connect(endpoint)
            # DEALER queues before the connection is up, so this never
            # waits; NOBLOCK guards against a change of that default.
            sock.send_multipart([b"", self._payload], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def _release(self) -> None:
        if self._context is not None:
            # Every socket is closed (no call runs), so this returns at once.
            self._context.destroy(linger=0)
            self._context = None
