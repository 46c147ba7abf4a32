"""How actors end: stopped within a deadline, releasing what they hold on every way out.

pykka runs every actor on a non-daemon thread, so one actor that never stops
keeps the whole process alive. Whoever stops actors (ProxyActor its
children, ``serve`` whatever is left at exit) asks them all at once and waits
for all of them against one deadline, so n slow actors cost one timeout, and
gets back the ones that did not make it, to log rather than to wait on.

An actor ends by a stop (pykka calls ``on_stop``) or by a told message that
raised (``on_failure``, and not ``on_stop``). What it holds (children, timers,
a prober's sockets) must go on both ways out, so :class:`ReleasingActor`
writes that once: a subclass says what it holds in :meth:`~ReleasingActor.release`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar

import pykka

from rpcproxy.actors.inbox import SimpleInboxActor

__all__ = ["ReleasingActor", "stop_within"]


def stop_within(refs: Sequence[tuple[str, pykka.ActorRef[Any]]], timeout_s: float) -> list[str]:
    """Ask every actor of ``refs`` to stop; wait at most ``timeout_s`` in all.

    Args:
        refs: ``(name, ref)`` pairs; an actor that is already dead counts as stopped.
        timeout_s: how long to wait for all of them together.

    Returns:
        The names of the actors whose ``on_stop`` had not finished in time (an
        actor busy in a long message handles its stop message afterwards).
    """
    deadline = time.monotonic() + timeout_s
    asked = [(name, ref.stop(block=False)) for name, ref in refs]
    late: list[str] = []
    for name, future in asked:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except pykka.Timeout:
            late.append(name)
    return late


class ReleasingActor(SimpleInboxActor):
    """A threading actor that calls :meth:`release` when it stops and when it fails.

    pykka calls neither hook when ``on_start`` raises: an actor whose
    ``on_start`` acquires something releases it there itself.
    """

    release_on_failure: ClassVar[bool] = True
    """False for an actor whose release must not run after a message raised."""

    def release(self) -> None:
        """Let go of what this actor holds; runs on the actor's own thread."""

    def on_stop(self) -> None:
        self.release()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.release_on_failure:
            self.release()
