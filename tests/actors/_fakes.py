"""In-memory twins of the network and small recording actors for tests of ``actors/``."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pykka

from rpcproxy.actors import ProxyActor, Snapshot, SnapshotBox
from rpcproxy.proxy import Address, Heartbeat, HeartbeatServer, parse_address

T = TypeVar("T")

TIMEOUT = 2.0
"""How long a test waits for something that should happen at once."""

GATE_TIMEOUT = 5.0
"""A held ping gives up after this, so a forgotten gate cannot hang the suite."""


def addr(text: str) -> Address:
    return parse_address(text)


A, B, C, D, E, F = (addr(f"{name}.nomad") for name in "abcdef")


def hb(
    *servers: tuple[Address, str],
    num_nodes: int = 0,
    leader: str = "",
    publisher: str | None = None,
    seq: int | None = None,
    major: int = 1,
    minor: int = 1,
) -> Heartbeat:
    """A heartbeat listing ``(address, datacenter)`` pairs, all at one API version."""
    return Heartbeat(
        servers=tuple(HeartbeatServer(a.canonical, major, minor, dc) for a, dc in servers),
        num_nodes=num_nodes,
        leader_rpc_addr=leader,
        publisher=publisher,
        seq=seq,
    )


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedRandom(random.Random):
    """``random()`` always returns ``value``; shuffles stay seeded and deterministic."""

    def __init__(self, value: float, seed: int = 0) -> None:
        super().__init__(seed)
        self.value = value

    def random(self) -> float:
        return self.value


class FakeProber:
    """The network as a set of live addresses.

    Every call is recorded. With ``gated``, a call blocks until :meth:`release`
    (``entered`` is set as soon as a call starts), so a test can act while a
    ping is in flight. ``error`` makes every call raise it.
    """

    def __init__(
        self,
        live: Iterable[Address] = (),
        *,
        gated: bool = False,
        error: Exception | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._live = set(live)
        self.error = error
        self.calls: list[tuple[Address, ...]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = threading.Event() if gated else None

    def set_live(self, *live: Address) -> None:
        with self._cond:
            self._live = set(live)

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()

    def __call__(self, candidates: Sequence[Address]) -> Mapping[Address, bool]:
        with self._cond:
            self.calls.append(tuple(candidates))
            self._cond.notify_all()
        self.entered.set()
        if self.gate is not None and not self.gate.wait(GATE_TIMEOUT):
            raise TimeoutError("the test never released the ping gate")
        if self.error is not None:
            raise self.error
        with self._cond:
            live = set(self._live)
        return {c: c in live for c in candidates}

    def call_count(self) -> int:
        with self._cond:
            return len(self.calls)

    def wait_calls(self, count: int, timeout: float = TIMEOUT) -> bool:
        """True once at least ``count`` calls have started."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= count, timeout)


class Inbox:
    """What a :class:`Recorder` received, readable from the test thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def items(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def wait_count(self, count: int, timeout: float = TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._items) >= count, timeout)


class Recorder(pykka.ThreadingActor):
    """Records every message it is told; ``sync()`` returns once earlier tells are in."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> Any:
        self.inbox.put(message)
        return None

    def sync(self) -> bool:
        return True


def start_recorder() -> tuple[pykka.ActorRef[Recorder], Inbox]:
    inbox = Inbox()
    return Recorder.start(inbox), inbox


def received(ref: pykka.ActorRef[Recorder], inbox: Inbox) -> list[Any]:
    """Everything told to the recorder before this call (its mailbox is FIFO)."""
    ref.proxy().sync().get(timeout=TIMEOUT)
    return inbox.items()


class RecordingBox(SnapshotBox):
    """A SnapshotBox that keeps every snapshot it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Snapshot] = []

    def publish(self, snapshot: Snapshot) -> None:
        self.published.append(snapshot)
        super().publish(snapshot)


@dataclass
class Harness:
    """A started ProxyActor with its fakes."""

    ref: pykka.ActorRef[ProxyActor]
    box: RecordingBox
    prober: FakeProber
    clock: Callable[[], float]
    listener: pykka.ActorRef[Recorder] | None = None
    inbox: Inbox = field(default_factory=Inbox)

    @property
    def state(self) -> Any:
        return self.box.current.state

    def request(self, make: Callable[[Callable[[Any], None]], Any]) -> Any:
        """Tell ``make(reply)``, wait for the reply's value and for the message's whole handling.

        The actor answers a write before it logs, announces and saves it
        (``ProxyCore._follow_up``), so the reply alone does not mean the log
        line is written: :meth:`settled` waits for the rest.
        """
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self.ref.tell(make(future.set))
        result = future.get(timeout=TIMEOUT)
        self.settled()
        return result

    def settled(self) -> None:
        """Return once the actor has handled every message told before this call.

        The mailbox is first in, first out: a call queued behind them is
        answered only after their handling, follow-up included, has finished.
        """
        assert self.ref.proxy().started().get(timeout=TIMEOUT) is True

    def send(self, make: Callable[[Callable[[Any], None]], Any]) -> pykka.ThreadingFuture[Any]:
        """Tell ``make(reply)`` and return the future without waiting."""
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self.ref.tell(make(future.set))
        return future

    def request_seen(self, make: Callable[[Callable[[Any], None]], Any]) -> tuple[Any, Snapshot]:
        """Like :meth:`request`, plus the snapshot the box held when the reply was called."""
        future: pykka.ThreadingFuture[tuple[Any, Snapshot]] = pykka.ThreadingFuture()

        def reply(result: Any) -> None:
            future.set((result, self.box.current))

        self.ref.tell(make(reply))
        result, seen = future.get(timeout=TIMEOUT)
        self.settled()
        return result, seen

    def events(self) -> list[Any]:
        assert self.listener is not None
        return received(self.listener, self.inbox)


@dataclass
class ScheduledCall:
    due: float
    fn: Callable[[], None]
    cancelled: bool = False
    ran: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ManualScheduler:
    """A scheduler and its clock: calls run when :meth:`advance` passes their time.

    Calls run on the test's thread, as a timer thread would run them: beside
    the actor's own thread, telling it through its mailbox.
    """

    now: float = 1000.0
    calls: list[ScheduledCall] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> ScheduledCall:
        call = ScheduledCall(self.now + delay_s, fn)
        self.calls.append(call)
        return call

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for call in list(self.calls):
            if not call.cancelled and not call.ran and call.due <= self.now:
                call.ran = True
                call.fn()

    @property
    def pending(self) -> list[ScheduledCall]:
        return [c for c in self.calls if not c.cancelled and not c.ran]
