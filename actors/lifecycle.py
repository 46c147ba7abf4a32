"""Stopping actors within a deadline, whatever they are doing.

pykka runs every actor on a non-daemon thread, so one actor that never stops
keeps the whole process alive. Whoever stops actors (ProxyActor its
children, ``serve`` whatever is left at exit) asks them all at once and waits
for all of them against one deadline, so n slow actors cost one timeout, and
gets back the ones that did not make it, to log rather than to wait on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pykka

__all__ = ["stop_within"]


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
