"""The alerting rules against the /metrics of a real ``rpcproxy serve``.

A rule on a metric or label the proxy does not expose is valid PromQL that
never fires, and promtool's own tests cannot tell: they run on series the
test file invents. So a fresh proxy (no server, no heartbeat yet, as one
just deployed) is scraped, promtool lints the scrape, and every metric,
label matcher and grouping label of every rule must be in it: the rules
can evaluate from a proxy's first scrape on.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port
from tests.integration.serving import Serve
from tests.promql_refs import rule_expressions, selectors, unmet
from tests.promtool import RULES, promtool
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

RULE_METRICS = {
    "rpcproxy_offline",
    "rpcproxy_servers",
    "rpcproxy_heartbeat_silence_seconds",
    "rpcproxy_discoveries_total",
    "process_start_time_seconds",
}
"""What the rules read; spelled out so a reference the parser missed shows."""


def scrape(port: int) -> str:
    # No Accept header: the text format promtool check metrics reads.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


@pytest.fixture
def exposition(serve_factory: Callable[..., Serve]) -> str:
    port = free_port()
    serve_factory("--metrics", f"127.0.0.1:{port}")
    return poll_until(lambda: scrape(port), what="the metrics endpoint")


def test_promtool_finds_no_problem_in_the_scrape(exposition: str) -> None:
    done = promtool("check", "metrics", stdin=exposition)

    # It exits 0 with no output when it has nothing to say, lint included.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done


def test_every_metric_and_label_of_the_rules_is_in_the_scrape(exposition: str) -> None:
    series = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]
    rules = rule_expressions(RULES)

    unmet_by_rule = {name: unmet(expr, series) for name, expr in rules.items()}

    assert {name: problems for name, problems in unmet_by_rule.items() if problems} == {}
    read = {selector.metric for expr in rules.values() for selector in selectors(expr)}
    assert read == RULE_METRICS
