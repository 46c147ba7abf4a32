"""Rebalancing as plan -> ping -> reconcile (docs/protocol.md section 3).

The network step sits between two pure ones, so the proxy's writer never
waits on a ping: it plans, hands the candidates to a pinger, and reconciles
the answers with whatever state it holds by then.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from rpcproxy.proxy.address import Address
from rpcproxy.proxy.state import ProxyState, members_of


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """The shuffled candidates, in the order they should be tried."""

    candidates: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class ReconcileOutcome:
    """The state after a rebalance and whether the chosen head was kept."""

    state: ProxyState
    abandoned: bool


def plan_rebalance(state: ProxyState, rng: random.Random) -> RebalancePlan | None:
    """Shuffle primaries and backups separately; None with fewer than two servers.

    Backups come after every primary, so a backup is only chosen when no
    primary answers.
    """
    if len(members_of(state)) < 2:
        return None
    primaries = list(state.primaries)
    backups = list(state.backups)
    rng.shuffle(primaries)
    rng.shuffle(backups)
    known = frozenset(primaries)
    return RebalancePlan((*primaries, *(b for b in backups if b not in known)))


def choose_head(candidates: Sequence[Address], answered: Mapping[Address, bool]) -> int | None:
    """Index of the first candidate that answered its ping, or None.

    A candidate missing from ``answered`` counts as failed: a pinger may stop
    waiting once an earlier candidate has answered.
    """
    for index, addr in enumerate(candidates):
        if answered.get(addr, False):
            return index
    return None


def reconcile(state: ProxyState, plan: RebalancePlan, head_index: int) -> ReconcileOutcome:
    """Put ``plan.candidates[head_index]`` first, merged with changes made meanwhile.

    The candidates before the head go to the end in order. Servers removed
    while pinging are dropped and servers added meanwhile are appended in
    their current order. If the head itself was removed, the list is kept.
    """
    members = members_of(state)
    rotated = plan.candidates[head_index:] + plan.candidates[:head_index]
    if rotated[0] not in members:
        return ReconcileOutcome(state, abandoned=True)
    order = [addr for addr in rotated if addr in members]
    planned = frozenset(rotated)
    order += [addr for addr in state.active if addr not in planned]
    return ReconcileOutcome(replace(state, active=tuple(order)), abandoned=False)
