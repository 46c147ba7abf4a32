"""The failover loop of ``call`` on a simulated clock (bus/client/_failover.py).

A scripted world answers the loop's steps: which server is at the head, how
long each try of the user's function takes and whether it fails (and how),
how long the pauses are. Whatever the script, the loop never reports a
server that did not fail in the call, reports each failure once, never
waits past the hold, and returns the first success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy import NoServerError, Server
from rpcproxy.bus.client._failover import (
    PAUSE_FRACTION,
    AwaitServer,
    Failed,
    Find,
    Invoke,
    Pause,
    Report,
    failover,
)

SERVERS = [Server(f"10.0.0.{i}:4647") for i in range(1, 5)]


class RefusedError(ConnectionRefusedError):
    """A retryable failure (an OSError)."""


class RejectedError(ValueError):
    """A failure outside retry_on."""


@dataclass(frozen=True)
class Try:
    """One scripted try: how long it takes and how it ends."""

    seconds: float
    outcome: str  # "ok", "refused" (retryable) or "rejected" (not)


@dataclass
class World:
    """Answers the loop's steps from a script, on a simulated clock."""

    head: list[Server | None]
    tries: list[Try]
    randoms: list[float]
    now: float = 0.0
    invoked: list[tuple[Server, Try]] = field(default_factory=list)
    reported: list[Server] = field(default_factory=list)
    waits: list[tuple[float, float]] = field(default_factory=list)
    """(started at, seconds) of every pause and wait for a server."""

    def clock(self) -> float:
        return self.now

    def random(self) -> float:
        return self.randoms.pop(0) if self.randoms else 0.5

    def run(self, hold_s: float) -> Any:
        steps = failover(hold_s, (OSError,), self.clock, self.random)
        answer: object = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                return done.value
            answer = None
            if isinstance(step, Find):
                answer = self.head.pop(0) if len(self.head) > 1 else self.head[0]
            elif isinstance(step, Invoke):
                scripted = self.tries.pop(0) if len(self.tries) > 1 else self.tries[0]
                self.invoked.append((step.server, scripted))
                self.now += scripted.seconds
                if scripted.outcome == "ok":
                    answer = f"answer of {step.server.addr}"
                else:
                    error = RefusedError() if scripted.outcome == "refused" else RejectedError()
                    answer = Failed(error)
            elif isinstance(step, Report):
                self.reported.append(step.server)
            elif isinstance(step, (Pause, AwaitServer)):
                assert step.seconds >= 0
                self.waits.append((self.now, step.seconds))
                self.now += step.seconds


tries = st.builds(
    Try,
    seconds=st.sampled_from([0.0, 0.01, 0.3, 2.0]),
    outcome=st.sampled_from(["ok", "refused", "refused", "rejected"]),
)
heads = st.lists(st.sampled_from([*SERVERS, None]), min_size=1, max_size=30)


@settings(max_examples=400, deadline=None)
@given(
    head=heads,
    script=st.lists(tries, min_size=1, max_size=40),
    randoms=st.lists(st.floats(0.0, 0.999), max_size=40),
    hold_s=st.sampled_from([0.0, 0.5, 5.0]),
)
def test_the_loop_keeps_its_promises(
    head: list[Server | None], script: list[Try], randoms: list[float], hold_s: float
) -> None:
    world = World(list(head), list(script), list(randoms))
    result: Any = None
    error: Exception | None = None
    try:
        result = world.run(hold_s)
    except (RefusedError, RejectedError, NoServerError) as exc:
        error = exc

    failed = [server for server, scripted in world.invoked if scripted.outcome != "ok"]
    refused = [server for server, scripted in world.invoked if scripted.outcome == "refused"]
    # Only servers that failed retryably in this call are reported, each failure once.
    assert world.reported == refused
    assert all(server in failed for server in world.reported)
    # No wait of the loop's own runs past the hold (tries may: their time is the user's).
    for started, seconds in world.waits:
        assert started + seconds <= hold_s + 1e-9
        assert seconds < max(hold_s / PAUSE_FRACTION, 1e-9) or seconds == 0
    # The first success is returned, and nothing is tried after it.
    outcomes = [scripted.outcome for _, scripted in world.invoked]
    if "ok" in outcomes:
        assert outcomes.index("ok") == len(outcomes) - 1
        server = world.invoked[-1][0]
        assert result == f"answer of {server.addr}"
    # A failure outside retry_on ends the call at once, unreported.
    if "rejected" in outcomes:
        assert outcomes[-1] == "rejected" and isinstance(error, RejectedError)
    if isinstance(error, RefusedError):
        assert getattr(error, "servers_tried", None) == tuple(s.addr for s in refused)[:64]
        assert world.now >= hold_s  # given up only once the hold had passed


def test_no_server_within_the_hold_is_no_server_error() -> None:
    world = World([None], [Try(0.0, "ok")], [0.99])
    with pytest.raises(NoServerError, match="within 1 s"):
        world.run(1.0)
    assert world.invoked == []
    assert sum(seconds for _, seconds in world.waits) <= 1.0


def test_a_server_arriving_during_the_wait_is_used() -> None:
    world = World([None, None, SERVERS[0]], [Try(0.0, "ok")], [0.5])
    assert world.run(5.0) == f"answer of {SERVERS[0].addr}"
    assert len(world.waits) == 2


def test_a_negative_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        World([SERVERS[0]], [Try(0.0, "ok")], []).run(-1.0)
