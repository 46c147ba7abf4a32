"""The actors' Literal vocabularies agree with the wire's and with docs/protocol.md.

The type checker holds each use of a reason or result kind to its Literal;
these tests hold the Literals themselves to what the other layers spell.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from rpcproxy.actors import ChangeReason, HeartbeatKind, RebalanceKind
from rpcproxy.actors.messages import CHANGE_REASONS, HEARTBEAT_KINDS, REBALANCE_KINDS
from rpcproxy.bus import wire

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _section(number: int) -> str:
    text = PROTOCOL.read_text(encoding="utf-8")
    found = re.search(rf"^## {number}\..*?(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"docs/protocol.md has no section {number}"
    return found.group(0)


def test_the_tuples_are_the_literals() -> None:
    assert get_args(ChangeReason) == CHANGE_REASONS
    assert get_args(RebalanceKind) == REBALANCE_KINDS
    assert get_args(HeartbeatKind) == HEARTBEAT_KINDS


def test_every_reason_of_a_state_change_is_a_wire_reason_and_only_refresh_is_not_one() -> None:
    assert set(CHANGE_REASONS) <= set(get_args(wire.ChangeReason))
    assert set(get_args(wire.ChangeReason)) - set(CHANGE_REASONS) == {"refresh"}


def test_the_reasons_are_those_docs_protocol_section_5_names() -> None:
    events = _section(5)
    start = events.index("where `reason` names the cause")
    paragraph = events[start : events.index("\n\n", start)]
    documented = set(re.findall(r"`([a-z_]+)`(?:[;.]|\s\()", paragraph))
    assert documented == set(get_args(wire.ChangeReason))
