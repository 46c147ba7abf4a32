"""Inputs the fuzzing found, kept as fixed cases.

Each was a real bug when found; they stay as regression tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.integration.serving import Serve, hb_payload, hb_server

pytestmark = pytest.mark.integration

HUGE_NODES = 2**63 - 1
"""A valid ``num_nodes`` (an int >= 0) whose rebalance interval exceeds what
``threading.Timer`` can wait (``threading.TIMEOUT_MAX``, about 292 years)."""
HUGE_REUSE_S = 1e10
"""A valid ``min_reuse_s`` (about 317 years), also beyond ``threading.TIMEOUT_MAX``."""


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


def test_a_huge_min_reuse_is_accepted_and_survived(serve_factory: Callable[..., Serve]) -> None:
    """1e10 s is a valid ``min_reuse_s`` (a finite float > 0), so serve starts
    with it; its first rebalance timer, and the one a rebalance restarts, wait
    longer than ``threading.Timer`` can and must not die of it."""
    assert HUGE_REUSE_S > threading.TIMEOUT_MAX
    serve = serve_factory("--min-reuse-s", str(HUGE_REUSE_S))
    assert serve.call("status")["next_rebalance_s"] >= HUGE_REUSE_S - 60.0
    serve.call("rebalance")  # restarts the timer with the same interval
    assert serve.call("status")["next_rebalance_s"] >= HUGE_REUSE_S - 60.0
    assert_no_traceback(serve)


def assert_no_traceback(serve: Serve) -> None:
    """Stop ``serve`` and check its whole log: a timer thread that died left a traceback.

    Once the process has exited, everything it wrote is in the file: no wait
    for a traceback that may or may not come.
    """
    assert serve.call("ping")["pong"] is True
    assert serve.stop() == 0
    assert "Traceback" not in serve.stderr(), serve.stderr()[-3000:]
