"""Inputs the fuzzing found, kept as fixed cases.

Each was a real bug when found; they stay as regression tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from tests.integration.conftest import (
    ProcessExitedError,
    Serve,
    hb_payload,
    hb_server,
    poll_until,
)

pytestmark = pytest.mark.integration

HUGE_NODES = 2**63 - 1
"""A valid ``num_nodes`` (an int >= 0) whose rebalance interval exceeds what
``threading.Timer`` can wait (``threading.TIMEOUT_MAX``, about 292 years)."""


def test_a_huge_node_count_does_not_kill_the_rebalance_timer(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory("--ping-timeout-s", "0.05")
    servers = [hb_server("127.0.0.1:1"), hb_server("127.0.0.1:2")]
    serve.call("heartbeat", **hb_payload(servers, num_nodes=HUGE_NODES))
    serve.call("rebalance")  # restarts the timer with the node-count interval
    status = serve.call("status")
    assert status["num_nodes"] == HUGE_NODES
    assert_no_traceback(serve)


def test_a_huge_min_reuse_is_refused_or_survived(serve_factory: Callable[..., Serve]) -> None:
    try:
        serve = serve_factory("--min-reuse-s", "1e10")
    except ProcessExitedError as exc:  # refused as a config error: also a fix
        assert exc.code == 2 and "min_reuse_s" in exc.stderr, exc.stderr
        return
    assert_no_traceback(serve)


def assert_no_traceback(serve: Serve) -> None:
    """Wait a little for a dying thread's traceback; then stop and check the exit."""
    with contextlib.suppress(AssertionError):  # none came: good
        poll_until(lambda: "Traceback" in serve.stderr(), timeout=1.0, what="a traceback")
    assert serve.call("ping")["pong"] is True
    assert serve.stop() == 0
    assert "Traceback" not in serve.stderr(), serve.stderr()[-3000:]
