"""The chaos test's invariant checker on hand-made histories (no Docker needed)."""

from __future__ import annotations

from tests.compose.chaos import Op, Outage, check_invariant

T = 0.5
S = "server1:4647"
A = "server2:4647"
B = "server3:4647"
DEAD = Outage(S, "kill", dead_from=10.0, dead_until=30.0)


def lookup(client: str, sent: float, server: str | None) -> Op:
    return Op(client, "lookup", sent, sent + 0.01, server)


def notify(client: str, sent: float, server: str, rotated: bool | None = True) -> Op:
    return Op(client, "notify", sent, sent + 0.01, server, rotated=rotated)


def rebalance(sent: float, head: str, healthy: bool | None = True, took: float = 0.1) -> Op:
    return Op("rebalancer", "rebalance", sent, sent + took, head, healthy=healthy)


def test_lookup_after_a_late_notify_handing_out_the_dead_server_is_a_violation() -> None:
    ops = [lookup("c1", 11.0, S), notify("c1", 11.5, S), lookup("c1", 11.6, S)]
    result = check_invariant(ops, [DEAD], T)
    assert result.triggers == 1
    assert result.checked == 1
    assert len(result.violations) == 1
    assert result.violations[0].handed.sent == 11.6
    assert "server1:4647" in result.violations[0].describe()


def test_a_different_server_after_the_notify_passes() -> None:
    ops = [lookup("c1", 11.0, S), notify("c1", 11.5, S), lookup("c1", 11.6, A)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.checked, result.excluded, result.violations) == (1, 0, [])


def test_a_notify_within_one_ping_timeout_of_the_death_is_no_trigger() -> None:
    ops = [lookup("c1", 10.1, S), notify("c1", 10.4, S), lookup("c1", 10.6, S)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.triggers, result.checked, result.violations) == (0, 0, [])


def test_a_rotation_of_another_server_meanwhile_excludes_the_lookup() -> None:
    ops = [
        notify("c1", 11.5, S),
        notify("c2", 11.52, A),
        notify("c3", 11.54, B),
        lookup("c1", 11.6, S),
    ]
    result = check_invariant(ops, [DEAD], T)
    assert result.violations == []
    assert result.excluded >= 1


def test_a_stale_notify_of_another_server_does_not_exclude() -> None:
    ops = [notify("c1", 11.5, S), notify("c2", 11.52, A, rotated=False), lookup("c1", 11.6, S)]
    assert len(check_invariant(ops, [DEAD], T).violations) == 1


def test_a_lost_notify_reply_counts_as_a_possible_rotation() -> None:
    ops = [notify("c1", 11.5, S), notify("c2", 11.52, A, rotated=None), lookup("c1", 11.6, S)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.excluded, result.violations) == (1, [])


def test_a_server_restored_before_the_lookup_is_not_judged() -> None:
    ops = [notify("c1", 29.5, S), lookup("c1", 30.0, S)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.triggers, result.checked, result.violations) == (1, 0, [])


def test_a_late_rebalance_putting_the_dead_server_first_is_a_violation() -> None:
    result = check_invariant([rebalance(12.0, S)], [DEAD], T)
    assert len(result.violations) == 1
    assert result.violations[0].handed.kind == "rebalance"


def test_a_rebalance_started_within_one_ping_timeout_may_pick_it() -> None:
    ops = [rebalance(10.3, S, took=0.5), lookup("c1", 10.9, S)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.triggers, result.violations) == (0, [])


def test_a_rebalance_that_found_no_server_is_no_trigger() -> None:
    result = check_invariant([rebalance(12.0, S, healthy=False)], [DEAD], T)
    assert (result.triggers, result.violations) == (0, [])


def test_every_clients_next_lookup_after_a_rebalance_is_judged() -> None:
    ops = [rebalance(12.0, A), lookup("c1", 12.2, A), lookup("c2", 12.3, S)]
    result = check_invariant(ops, [DEAD], T)
    assert result.checked == 3
    assert [v.handed.client for v in result.violations] == ["c2"]


def test_an_early_rebalance_still_running_excludes_a_notify_trigger() -> None:
    # Started before death + T: it may have heard S and put it first in the window.
    ops = [rebalance(10.2, S, took=0.5), notify("c1", 10.6, S), lookup("c1", 10.8, S)]
    result = check_invariant(ops, [DEAD], T)
    assert (result.excluded, result.violations) == (1, [])


def test_errors_are_neither_triggers_nor_lookups() -> None:
    failed = Op("c1", "notify", 11.5, 13.5, S, error="timeout")
    ops = [failed, Op("c1", "lookup", 13.6, 15.6, None, error="timeout"), lookup("c1", 16.0, S)]
    result = check_invariant(ops, [DEAD], T)
    assert result.triggers == 0
