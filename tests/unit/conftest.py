"""Fixtures shared by the unit tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """The test's own ZeroMQ context; a socket the test leaves open fails it.

    Probers and clients given no context make their own; this one is for
    stand-ins, raw peers and whatever the test passes ``context=``.
    """
    context: zmq.Context[Any] = zmq.Context()
    yield context
    # term() blocks while any socket is open, so a leaked socket fails here.
    closer = threading.Thread(target=context.term, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "a ZeroMQ socket was left open"
