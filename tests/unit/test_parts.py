"""serve's parts: stopped in the declared order against one deadline, watched in start order.

That ProxyService declares every part it starts, and stops a real one in
time, is in tests/integration/test_supervision.py and test_exit_paths.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from rpcproxy.cli.parts import Parts, Unwatched
from rpcproxy.cli.service import STOP_ORDER

log = logging.getLogger("test_parts")


class Fake:
    """A part that records its stop; ``hangs`` uses up its budget and stays alive.

    A hung part spends its budget on ``spend`` (a test clock), not in a sleep.
    """

    def __init__(
        self,
        name: str,
        stopped: list[str],
        *,
        hangs: bool = False,
        spend: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self._stopped = stopped
        self._hangs = hangs
        self._spend = spend
        self.running = True
        self.budgets: list[float] = []

    def stop(self, budget_s: float) -> bool:
        self.budgets.append(budget_s)
        self._stopped.append(self.name)
        if self._hangs:
            assert self._spend is not None, "a hung part needs a clock to spend its budget on"
            self._spend(budget_s)
            return False
        self.running = False
        return True

    def alive(self) -> bool:
        return self.running


def test_parts_stop_in_the_declared_order_not_the_start_order() -> None:
    stopped: list[str] = []
    parts = Parts(["input", "actor", "output"], logged_by_owner=(), log=log)
    for name in ["output", "actor", "input"]:
        parts.add(Fake(name, stopped))
    assert parts.stop(1.0) == []
    assert stopped == ["input", "actor", "output"]


def test_an_undeclared_part_is_refused() -> None:
    parts = Parts(["input"], logged_by_owner=(), log=log)
    with pytest.raises(ValueError, match="'stray' has no place in the stop order"):
        parts.add(Fake("stray", []))


def test_a_hanging_part_costs_the_budget_once_and_is_named_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped: list[str] = []
    now = [100.0]

    def spend(seconds: float) -> None:
        now[0] += seconds

    parts = Parts(
        ["hung", "next", "child"], logged_by_owner=("child",), log=log, clock=lambda: now[0]
    )
    hung = Fake("hung", stopped, hangs=True, spend=spend)
    following = Fake("next", stopped)
    child = Fake("child", stopped, hangs=True, spend=spend)
    for part in (hung, following, child):
        parts.add(part)
    assert parts.stop(0.2) == ["hung", "child"]
    # Once the shared deadline has passed, a part still gets a short chance.
    assert 0 < following.budgets[0] < 0.2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["hung did not stop within 0.2 s"]


def test_dead_names_the_parts_that_stopped_running_in_start_order() -> None:
    parts = Parts(["a", "b", "c"], logged_by_owner=(), log=log)
    a, b, c = Fake("a", []), Fake("b", []), Fake("c", [])
    for part in (c, a, b):
        parts.add(part)
    assert parts.dead() == []
    b.running = c.running = False
    assert parts.dead() == ["c", "b"]


def test_stopped_parts_are_forgotten_so_a_second_stop_does_nothing() -> None:
    stopped: list[str] = []
    parts = Parts(["a"], logged_by_owner=(), log=log)
    parts.add(Fake("a", stopped))
    parts.stop(1.0)
    assert parts.stop(1.0) == []
    assert parts.dead() == []
    assert stopped == ["a"]


def test_an_unwatched_part_runs_until_stopped_and_is_never_late() -> None:
    budgets: list[float] = []
    part = Unwatched("metrics HTTP front", budgets.append)
    assert part.alive()
    assert part.stop(0.5) is True
    assert budgets == [0.5]
    assert not part.alive()


def test_input_stops_before_the_actors_and_the_persister_after_the_proxy() -> None:
    order = STOP_ORDER.index
    for source in ("nomad API bridge", "heartbeat socket", "query socket"):
        assert order(source) < order("proxy actor")
    # The health checks answer "stopping" while the rest stops.
    assert order("metrics HTTP front") > order("proxy actor")
    assert order("probe engine") < order("proxy actor")
    assert order("proxy actor") < order("state persister")
