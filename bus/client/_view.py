"""A watching client's local view of the active server, as a pure state machine.

docs/protocol.md section 5: a client can answer ``find_server`` itself by
taking one ``find_server`` reply (server, ``epoch``, ``instance``) and then
following the events. This module decides, for each message, what the view
becomes and whether the client must ask the proxy again; it owns no thread,
socket or clock (every time is passed in), so the same rules drive the
threaded watcher (:mod:`rpcproxy.bus.client._watch`), the asyncio one and the
tests.

The rules (the issue's wire decisions):

- an event of the view's instance with ``epoch == view.epoch + 1`` is
  adopted; one with ``epoch <= view.epoch`` only proves the stream is alive;
- an event with a larger epoch (a gap: something was lost, for instance past
  a high-water mark), or of another instance (the proxy restarted), or no
  message at all for ``3 x refresh_s`` (silence) means: re-sync with one
  request;
- a reply (``find_server``, ``notify_failed_server``) of the view's instance
  with ``epoch >= view.epoch`` is adopted: a caller reads its own writes;
- until the view is fresh again, the caller asks the proxy instead.

A view is *fresh* while the last message that confirmed it is at most
``3 x refresh_s`` old: the proxy repeats the current state every
``refresh_s``, so a fresh view is never older than the last change it could
have heard of by more than that.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Final, Generic, TypeVar

S = TypeVar("S")

SILENCE_PERIODS: Final = 3
"""How many refresh periods without a message mean the stream is gone."""

_NEVER: Final = -math.inf
"""``heard_at`` of a view that waits for a re-sync: never fresh."""


@dataclass(frozen=True, slots=True)
class Observation(Generic[S]):
    """What one message (an event or a reply) says about the active server."""

    server: S | None
    epoch: int
    instance: str


@dataclass(frozen=True, slots=True)
class View(Generic[S]):
    """The active server as last confirmed, and when (the follower's clock).

    Immutable, so a reader in any thread can take the current one with a
    single attribute read and use it without a lock.
    """

    server: S | None
    epoch: int
    instance: str
    heard_at: float

    def fresh(self, now: float, limit_s: float) -> bool:
        """Confirmed at most ``limit_s`` ago."""
        return now - self.heard_at <= limit_s


class Step(enum.Enum):
    """What a message did to the view."""

    ADOPTED = "adopted"
    """The view took the message's server and epoch."""
    ALIVE = "alive"
    """Nothing new: the message only proves the stream (or proxy) is alive."""
    IGNORED = "ignored"
    """An older reply (a newer one was already adopted)."""
    RESYNC = "resync"
    """A gap, another instance, or no view to follow yet: ask the proxy."""


class Follower(Generic[S]):
    """The local view and when to ask the proxy, driven by messages and the time.

    Not thread-safe: a watcher serialises its calls (a lock, or one event
    loop). :attr:`view` is replaced, never mutated, so it may be read from
    any thread without that lock.

    Args:
        refresh_s: the proxy's ``events_refresh_s`` (it must match).
        now: the time the stream (its subscription) starts.
        retry_s: how long to wait before asking again after a failed re-sync.

    Raises:
        ValueError: ``refresh_s`` is not positive (a watcher cannot tell a
            silent proxy from a quiet one without refresh events).
    """

    def __init__(self, refresh_s: float, now: float, *, retry_s: float | None = None) -> None:
        if not refresh_s > 0:
            raise ValueError(f"a watching client needs events_refresh_s > 0, got {refresh_s!r}")
        self.refresh_s = refresh_s
        self.limit_s = SILENCE_PERIODS * refresh_s
        self.retry_s = retry_s if retry_s is not None else min(refresh_s, 1.0)
        self.view: View[S] | None = None
        self.last_heard = now
        """When the stream last delivered a message (silence is counted from it)."""
        self.resync_wanted = True
        self.resync_at = now
        """When to ask (again): now after a gap, later after a failed request."""
        # What the follower noticed, for a watcher's statistics.
        self.gaps = 0
        self.restarts = 0
        self.silences = 0
        self.failed_resyncs = 0

    # -- what readers ask ----------------------------------------------------

    def fresh(self, now: float) -> View[S] | None:
        """The view when it is fresh; None means "ask the proxy"."""
        view = self.view
        if view is not None and view.fresh(now, self.limit_s):
            return view
        return None

    def names_a_server(self) -> bool:
        """Whether the view, fresh or not, names a server (what ``call`` waits for)."""
        view = self.view
        return view is not None and view.server is not None

    def silent(self, now: float) -> bool:
        """No message from the stream for ``3 x refresh_s``."""
        return now - self.last_heard > self.limit_s

    def resync_due(self, now: float) -> bool:
        return self.resync_wanted and now >= self.resync_at

    def next_deadline(self) -> float:
        """The earliest time something is due: silence, or the next re-sync try."""
        deadline = self.last_heard + self.limit_s
        if self.resync_wanted:
            deadline = min(deadline, self.resync_at)
        return deadline

    # -- what happens --------------------------------------------------------

    def on_event(self, event: Observation[S], now: float) -> Step:
        """An event from the stream."""
        self.last_heard = now
        view = self.view
        if view is None or view.instance != event.instance:
            # No base yet, or the proxy restarted: remember what it says (a
            # floor for later replies) but answer nothing from it yet.
            self.restarts += view is not None
            self.view = View(event.server, event.epoch, event.instance, _NEVER)
            return self._want_resync(now)
        if self.resync_wanted:
            if event.epoch > view.epoch:
                self.view = View(event.server, event.epoch, event.instance, _NEVER)
            return Step.RESYNC
        if event.epoch == view.epoch + 1:
            self.view = View(event.server, event.epoch, event.instance, now)
            return Step.ADOPTED
        if event.epoch <= view.epoch:
            self.view = replace(view, heard_at=now)
            return Step.ALIVE
        self.gaps += 1
        self.view = View(event.server, event.epoch, event.instance, _NEVER)
        return self._want_resync(now)

    def on_reply(self, reply: Observation[S], now: float) -> Step:
        """A success reply carrying the active server: the watcher's re-sync or a caller's.

        A reply adopted onto a fresh view keeps its ``heard_at``: a reply says
        nothing about whether the stream still works, so it must not put off
        the silence check.
        """
        view = self.view
        if view is not None and view.instance != reply.instance:
            # Another instance than the one followed: which is newer is
            # unknown, so answer nothing from either until a re-sync.
            self.restarts += 1
            self.view = View(reply.server, reply.epoch, reply.instance, _NEVER)
            return self._want_resync(now)
        if view is not None and reply.epoch < view.epoch:
            return Step.IGNORED
        was_fresh = view is not None and view.fresh(now, self.limit_s)
        heard_at = view.heard_at if was_fresh and view is not None else now
        self.view = View(reply.server, reply.epoch, reply.instance, heard_at)
        self.resync_wanted = False
        return Step.ADOPTED

    def on_resync_failed(self, now: float) -> None:
        """The re-sync request got no usable reply: try again after ``retry_s``."""
        self.failed_resyncs += 1
        self.resync_wanted = True
        self.resync_at = now + self.retry_s

    def on_silence(self, now: float) -> None:
        """The stream went silent and its socket is being replaced: re-sync.

        Silence is counted again from ``now``, the new subscription's start.
        """
        self.silences += 1
        self.last_heard = now
        self._want_resync(now)

    def _want_resync(self, now: float) -> Step:
        if not self.resync_wanted:
            self.resync_wanted = True
            self.resync_at = now
        view = self.view
        if view is not None and view.heard_at != _NEVER:
            self.view = replace(view, heard_at=_NEVER)
        return Step.RESYNC
