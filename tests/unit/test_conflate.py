"""The pending-heartbeat table: latest per publisher wins, and it stays bounded."""

from __future__ import annotations

import pytest

from rpcproxy.bus.service.conflate import Conflator, Offered


def test_a_newer_value_supersedes_the_pending_one_of_its_key() -> None:
    table: Conflator[str | None, str] = Conflator(max_entries=10, max_size=100)

    assert table.offer("p", 1, "p1", 1) == Offered(kept=True, superseded=0, evicted=0)
    assert table.offer("p", 2, "p2", 1) == Offered(kept=True, superseded=1, evicted=0)
    assert table.offer(None, None, "anon1", 1).superseded == 0
    assert table.offer(None, None, "anon2", 1).superseded == 1  # one anonymous publisher

    assert table.drain() == ["p2", "anon2"]
    assert len(table) == 0
    assert table.size == 0
    assert table.drain() == []


def test_an_older_seq_never_replaces_a_newer_pending_one() -> None:
    table: Conflator[str, str] = Conflator(max_entries=10, max_size=100)
    table.offer("p", 5, "p5", 1)

    assert table.offer("p", 5, "replay", 1) == Offered(kept=False, superseded=1, evicted=0)
    assert table.offer("p", 3, "older", 1).kept is False
    # Without a seq on either side, arrival order decides.
    assert table.offer("p", None, "no seq", 1).kept is True
    assert table.drain() == ["no seq"]


def test_order_is_the_order_of_the_latest_arrivals() -> None:
    table: Conflator[str, str] = Conflator(max_entries=10, max_size=100)
    table.offer("a", 1, "a1", 1)
    table.offer("b", 1, "b1", 1)
    table.offer("a", 2, "a2", 1)

    assert table.drain() == ["b1", "a2"]


def test_invented_publishers_evict_the_oldest_pending_ones() -> None:
    table: Conflator[str, int] = Conflator(max_entries=3, max_size=10**9)
    evicted = sum(table.offer(f"name-{i}", i, i, 1).evicted for i in range(10_000))

    assert evicted == 10_000 - 3
    assert len(table) == 3
    assert table.drain() == [9997, 9998, 9999]


def test_sizes_are_bounded_but_the_newest_value_always_stays() -> None:
    table: Conflator[str, str] = Conflator(max_entries=100, max_size=10)
    table.offer("a", None, "a", 4)
    table.offer("b", None, "b", 4)
    assert table.size == 8

    assert table.offer("c", None, "c", 4).evicted == 1
    assert table.size == 8
    # Alone above the bound, the newest still gets through.
    assert table.offer("d", None, "huge", 50).evicted == 2
    assert table.drain() == ["huge"]


def test_superseding_frees_the_old_size() -> None:
    table: Conflator[str, str] = Conflator(max_entries=100, max_size=10)
    for i in range(1000):
        assert table.offer("p", i, f"v{i}", 9).evicted == 0
    assert table.size == 9


@pytest.mark.parametrize(("entries", "size"), [(0, 1), (1, 0)])
def test_bounds_must_be_positive(entries: int, size: int) -> None:
    with pytest.raises(ValueError):
        Conflator(entries, size)
