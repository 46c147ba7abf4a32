"""Proof that a fuzz test took each of its branches, not only the easy one.

A fuzz test that checks an accepted input's fields only when the input was
accepted passes just as well when nothing is ever accepted: a decoder that
refused everything, or a strategy that never builds a valid input, would go
unnoticed. :class:`Branches` counts which way each example went, reports it
to Hypothesis (``event``, shown by ``pytest --hypothesis-show-statistics``)
and fails the test when a branch was taken too rarely.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import event

from ._strategies import budget

_Test = TypeVar("_Test", bound=Callable[..., None])

MIN_SHARE = 0.01
"""Each branch must take at least this share of the examples: with rates of
several percent in practice, a share this small is never missed by chance."""


class Branches:
    """The ways one fuzz test's examples can go, and how often each went.

    Args:
        name: the test's budget name (see ``_strategies.SHARES``).
        kinds: every branch the test must take.
    """

    def __init__(self, name: str, *kinds: str) -> None:
        self.name = name
        self.kinds = kinds
        self.counts: Counter[str] = Counter()

    def took(self, kind: str) -> None:
        """Count the current example as ``kind``."""
        if kind not in self.kinds:
            raise ValueError(f"{kind!r} is not one of {self.kinds}")
        event(kind)
        self.counts[kind] += 1

    def check(self) -> None:
        """Fail unless every kind came up in at least MIN_SHARE of the budget.

        Below 100 examples (a small ``HYPOTHESIS_FUZZ_EXAMPLES``) a rare
        branch may fairly not come up, so nothing is asked of it.
        """
        least = int(budget(self.name) * MIN_SHARE)
        rare = {kind: self.counts[kind] for kind in self.kinds if self.counts[kind] < least}
        assert not rare, (
            f"{self.name}: branches taken fewer than {least} times in "
            f"{sum(self.counts.values())} examples: {rare} (all: {dict(self.counts)})"
        )

    def each_taken(self, test: _Test) -> _Test:
        """Wrap a ``@given`` test: run all its examples, then :meth:`check`.

        ``functools.wraps`` carries Hypothesis's attributes over, so pytest
        and Hypothesis still see a Hypothesis test (fixtures, settings,
        statistics).
        """

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            self.counts.clear()
            test(*args, **kwargs)
            self.check()

        return run  # type: ignore[return-value]
