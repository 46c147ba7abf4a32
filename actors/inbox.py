"""The mailbox of the actors a write passes through, lighter than pykka's default.

pykka gives each threading actor a :class:`queue.Queue`, whose ``put`` and
``get`` run a Python-level condition variable: about a tenth of the actor's
share of a ``notify_failed_server`` round trip was spent there (py-spy,
issue 20). Actors use only ``put``, ``get`` and ``empty``, which
:class:`queue.SimpleQueue` has too, written in C.
"""

from __future__ import annotations

import queue
from typing import Any

import pykka

__all__ = ["SimpleInboxActor"]


class SimpleInboxActor(pykka.ThreadingActor):
    """A threading actor whose inbox is a :class:`queue.SimpleQueue`."""

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        return queue.SimpleQueue()
