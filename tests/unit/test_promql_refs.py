"""tests/promql_refs.py finds what a rule asks of a scrape, and says what is missing.

The integration test trusts it to find every reference, so it is held here
on expressions shaped like the rules', and on the mistakes it must catch.
"""

from __future__ import annotations

import pytest

from tests.promql_refs import Matcher, Selector, grouping_labels, selectors, unmet

DISCOVERY = (
    'sum without (source, result) (increase(rpcproxy_discoveries_total{result="failed"}[15m])) > 0'
    ' and sum without (source, result) (increase(rpcproxy_discoveries_total{result="found"}[15m]))'
    " == 0"
)
SCRAPE = [
    ("rpcproxy_discoveries_total", {"source": "consul", "result": "failed"}),
    ("rpcproxy_discoveries_total", {"source": "consul", "result": "found"}),
    ("rpcproxy_servers", {"list": "active"}),
    ("rpcproxy_offline", {}),
    ("process_start_time_seconds", {}),
]


def test_it_finds_the_selectors_and_their_matchers() -> None:
    assert selectors(DISCOVERY) == [
        Selector("rpcproxy_discoveries_total", (Matcher("result", "=", "failed"),)),
        Selector("rpcproxy_discoveries_total", (Matcher("result", "=", "found"),)),
    ]
    assert selectors(
        "changes(process_start_time_seconds[15m]) >= 2 and present_over_time(rpcproxy_offline[15m])"
    ) == [Selector("process_start_time_seconds", ()), Selector("rpcproxy_offline", ())]


def test_functions_and_other_metrics_are_not_selectors() -> None:
    assert selectors("present_over_time(up[5m]) and node_process_count > 1") == []


def test_it_finds_the_grouping_labels() -> None:
    assert grouping_labels(DISCOVERY) == {"source", "result"}
    assert grouping_labels("a * on (job, instance) group_left(addr) b") == {
        "job",
        "instance",
        "addr",
    }


def test_a_rule_the_scrape_satisfies_has_nothing_unmet() -> None:
    assert unmet(DISCOVERY, SCRAPE) == []
    assert unmet('rpcproxy_servers{list="active"} == 0', SCRAPE) == []
    assert unmet('rpcproxy_servers{list=~"act.*"} == 0', SCRAPE) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rpcproxy_offlne == 1", "rpcproxy_offlne: no such metric in the scrape"),
        ('rpcproxy_servers{lists="active"} == 0', "rpcproxy_servers: no label 'lists'"),
        (
            'rpcproxy_servers{list="primry"} == 0',
            'rpcproxy_servers{list="primry"}: no sample selected',
        ),
        (
            "sum by (publisher) (rpcproxy_offline)",
            "grouping label 'publisher': on no metric of the expression",
        ),
    ],
)
def test_it_names_what_the_scrape_lacks(expr: str, problem: str) -> None:
    assert unmet(expr, SCRAPE) == [problem]


def test_target_labels_need_no_scrape() -> None:
    assert unmet("max by (job, instance) (rpcproxy_offline)", SCRAPE) == []


def test_a_matcher_it_cannot_read_is_an_error_not_a_pass() -> None:
    with pytest.raises(ValueError, match="cannot read the matcher"):
        selectors("rpcproxy_servers{list=active}")
