"""deploy/prometheus/rpcproxy-alerts.yml, checked and evaluated by promtool.

``promtool check rules`` parses every expression and template as Prometheus
loading the file would; ``promtool test rules`` evaluates the rules over
the series in rpcproxy-alerts.test.yml and compares the alerts firing, with
their labels and annotations, at each step. The tests of the rules against
the real endpoint's metrics are in tests/integration/test_alert_rules.py.
"""

from __future__ import annotations

import yaml

from tests.promtool import RULE_TESTS, RULES, RULES_DIR, promtool

ALERTS = {
    "RpcproxyOffline",
    "RpcproxyNoServers",
    "RpcproxyHeartbeatsStale",
    "RpcproxyDiscoveryFailing",
    "RpcproxyRestarting",
}


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout, done.stdout


def test_the_rules_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    # promtool passes a file that tests no alert at all, so its coverage is
    # held here: each alert is expected somewhere with alerts and somewhere
    # without.
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    steps = [step for test in tests for step in test["alert_rule_test"]]
    firing = {step["alertname"] for step in steps if step["exp_alerts"]}
    quiet = {step["alertname"] for step in steps if not step["exp_alerts"]}

    assert firing == ALERTS
    assert quiet == ALERTS


def test_the_rule_names_are_the_ones_tested() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]

    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert "{{ $labels.instance }}" in annotations["summary"], rule["alert"]
        assert "{{ $labels.instance }}" in annotations["description"], rule["alert"]


def test_the_rule_tests_load_the_rules_beside_them() -> None:
    # promtool resolves rule_files against the test file's folder, so a
    # renamed rules file would otherwise turn into "no such file" only there.
    files = yaml.safe_load(RULE_TESTS.read_text())["rule_files"]

    assert [RULES_DIR / name for name in files] == [RULES]


def test_the_readme_says_what_to_do_about_each_alert() -> None:
    readme = (RULES_DIR.parents[1] / "README.md").read_text()
    section = readme.split("\n### Alerts\n", 1)[1].split("\n### ", 1)[0]
    rows = {
        line.split("|")[1].strip(" `") for line in section.splitlines() if line.startswith("| `")
    }

    assert rows == ALERTS
