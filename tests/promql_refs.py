"""What the alerting rules ask of a scrape: metric names, label matchers, grouping labels.

Not a PromQL parser: promtool parses the rules (tests/unit/test_alert_rules.py).
This only finds, in expressions promtool accepts, the selectors of the
metrics the proxy exposes (``rpcproxy_*``, ``process_*``) and the labels
named in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses, so a test
can hold them against a real ``/metrics``: a rule on a metric or label the
proxy never exposes is valid PromQL that never fires.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

PREFIXES = ("rpcproxy_", "process_")
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus gives every series of a target; no scrape shows them."""

_SELECTOR = re.compile(
    r"\b(?P<name>(?:" + "|".join(PREFIXES) + r")[A-Za-z0-9_:]*)\s*(?:\{(?P<matchers>[^}]*)\})?"
)
_MATCHER = re.compile(r'\s*(?P<label>[A-Za-z_]\w*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>[^"]*)"\s*')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)"
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def accepts(self, value: str | None) -> bool:
        """Whether a series whose label is ``value`` (None: absent) is selected."""
        actual = value or ""  # PromQL: an absent label matches as the empty string
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]


def selectors(expr: str) -> list[Selector]:
    """The selectors of ``rpcproxy_*`` and ``process_*`` metrics in ``expr``."""
    found: list[Selector] = []
    for match in _SELECTOR.finditer(expr):
        text = match["matchers"] or ""
        parts = [part for part in text.split(",") if part.strip()]
        matchers: list[Matcher] = []
        for part in parts:
            matcher = _MATCHER.fullmatch(part)
            if matcher is None:
                raise ValueError(f"cannot read the matcher {part!r} in {expr!r}")
            matchers.append(Matcher(matcher["label"], matcher["op"], matcher["value"]))
        found.append(Selector(match["name"], tuple(matchers)))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named by ``by``, ``without``, ``on``, ``ignoring`` and ``group_*`` in ``expr``."""
    return {
        label.strip()
        for match in _GROUPING.finditer(expr)
        for label in match["labels"].split(",")
        if label.strip()
    }


def rule_expressions(path: Path) -> dict[str, str]:
    """Each rule's name (``alert`` or ``record``) and expression, from a rules file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in groups
        for rule in group["rules"]
    }


Series = Iterable[tuple[str, Mapping[str, str]]]
"""A scrape's samples: name and labels."""


def unmet(expr: str, series: Series) -> list[str]:
    """What ``expr`` asks of a scrape that ``series`` lacks; empty when nothing.

    Each selector needs a sample of its metric that its matchers select;
    each grouping label must be a target label or on one of those metrics.
    """
    samples = list(series)
    problems: list[str] = []
    labels_seen: set[str] = set()
    for selector in selectors(expr):
        of_metric = [labels for name, labels in samples if name == selector.metric]
        if not of_metric:
            problems.append(f"{selector.metric}: no such metric in the scrape")
            continue
        names = {label for labels in of_metric for label in labels}
        labels_seen |= names
        missing = [m.label for m in selector.matchers if m.label not in names]
        if missing:
            problems += [f"{selector.metric}: no label {label!r}" for label in missing]
            continue
        if not any(
            all(m.accepts(labels.get(m.label)) for m in selector.matchers) for labels in of_metric
        ):
            wanted = ", ".join(f'{m.label}{m.op}"{m.value}"' for m in selector.matchers)
            problems.append(f"{selector.metric}{{{wanted}}}: no sample selected")
    for label in sorted(grouping_labels(expr) - TARGET_LABELS - labels_seen):
        problems.append(f"grouping label {label!r}: on no metric of the expression")
    return problems
