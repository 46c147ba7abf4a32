"""Rebalancing as plan -> ping -> reconcile (docs/protocol.md section 3).

The network step sits between two pure ones, so the proxy's writer never
waits on a ping: it plans, hands the candidates to a prober, and reconciles
the answers with whatever state it holds by then.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from rpcproxy.proxy.address import Address
from rpcproxy.proxy.state import ProxyState, backup_set, members_of, place_joiners, primary_set


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """The shuffled candidates, in the order they should be tried.

    Attributes:
        candidates: primaries first, then the backup-only servers.
        primaries: the primaries when the plan was made, so that
            :func:`reconcile` knows which servers became primaries while
            the pings ran; None counts the primaries at reconcile time.
    """

    candidates: tuple[Address, ...]
    primaries: frozenset[Address] | None = None


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
    known = primary_set(state)
    return RebalancePlan((*primaries, *(b for b in backups if b not in known)), known)


def choose_head(candidates: Sequence[Address], answered: Mapping[Address, bool]) -> int | None:
    """Index of the first candidate that answered its ping, or None.

    A candidate missing from ``answered`` counts as failed: a prober may stop
    waiting once an earlier candidate has answered.
    """
    for index, addr in enumerate(candidates):
        if answered.get(addr, False):
            return index
    return None


def reconcile(state: ProxyState, plan: RebalancePlan, head_index: int) -> ReconcileOutcome:
    """Put ``plan.candidates[head_index]`` first, merged with changes made meanwhile.

    The candidates before the head go to the end in order. Servers removed
    while pinging are dropped. Servers added meanwhile, and servers that
    became primaries meanwhile, take the places a change made after the
    rebalance would give them (:func:`~rpcproxy.proxy.state.place_joiners`):
    backups at the end, primaries before the first backup-only server (so
    one can take the place of a backup-only head), except candidates that
    did not answer. If the head itself was removed, the list is kept.
    """
    members = members_of(state)
    rotated = plan.candidates[head_index:] + plan.candidates[:head_index]
    if rotated[0] not in members:
        return ReconcileOutcome(state, abandoned=True)
    order = [addr for addr in rotated if addr in members]
    planned = frozenset(rotated)
    primaries = primary_set(state)
    became_primary = frozenset[Address]()
    if plan.primaries is not None:
        # A candidate tried before the head did not answer: it stays behind,
        # whatever it became meanwhile.
        became_primary = primaries - plan.primaries - frozenset(plan.candidates[:head_index])
    joining_primaries: list[Address] = []
    joining_backups: list[Address] = []
    for addr in state.active:
        if addr in became_primary or (addr not in planned and addr in primaries):
            joining_primaries.append(addr)
        elif addr not in planned:
            joining_backups.append(addr)
    active = place_joiners(order, joining_primaries, joining_backups, backup_set(state) - primaries)
    return ReconcileOutcome(replace(state, active=active), abandoned=False)
