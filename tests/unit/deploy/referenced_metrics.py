"""Which metrics the dashboards and alert rules read, and which of them come from outside our services.

PromQL is scanned, not parsed: strings, label matchers, grouping clauses, durations and Grafana variables
are removed, and what remains that looks like a name and is not a function, keyword or number is a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vk8s.testbed.config import REPO_ROOT

DASHBOARDS_DIR = REPO_ROOT / "deploy" / "grafana"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = tuple(sorted(path for path in RULES_DIR.glob("*.yaml") if not path.name.endswith("_test.yaml")))

# Read by dashboards or rules but exported by something else; every entry says by what (docs/deploy.md).
EXTERNAL_METRICS: dict[str, str] = {
    # Prometheus itself, one series per scrape target.
    "up": "Prometheus (scrape target health)",
    # kube-state-metrics: GPUs requested by vNode pods per tenant namespace (no vk8s service exports tenants).
    "kube_pod_container_resource_requests": "kube-state-metrics",
    "kube_pod_labels": "kube-state-metrics --metric-labels-allowlist=pods=[app]",
}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "atan2",
    # aggregation operators (they may stand without parentheses right after them: `sum by (x) (...)`)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_DURATION = re.compile(r"\b\d+(?:ms|s|m|h|d|w|y)\b")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')


def metric_names(expression: str) -> set[str]:
    """Metric names an expression reads; a `__name__=~"a|b"` alternation counts as each alternative."""
    names = {alternative for pattern in _NAME_MATCHER.findall(expression) for alternative in _alternatives(pattern)}
    text = _GRAFANA_VARIABLE.sub("1", expression)
    text = _STRING.sub('""', text)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _DURATION.sub(" ", text)
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def _alternatives(pattern: str) -> list[str]:
    """`(nats|jetstream)_consumer_num_pending` -> both names; anything fancier is refused."""
    match = re.fullmatch(r"(\w*)\(([\w|]+)\)(\w*)", pattern)
    if match:
        head, choices, tail = match.groups()
        return [f"{head}{choice}{tail}" for choice in choices.split("|")]
    if re.fullmatch(r"[\w|]+", pattern):
        return pattern.split("|")
    raise ValueError(f"__name__ matcher {pattern!r}: only plain names and one (a|b) group are understood")


def dashboard_expressions(path: Path) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every Prometheus query in a dashboard, rows' nested panels included."""
    dashboard = json.loads(path.read_text())
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", text)
            if inner:
                yield f"variable {variable['name']}", inner.group(1)
            elif text and not text.startswith("label_values("):
                yield f"variable {variable['name']}", text


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rule_expressions(path: Path) -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def recorded_names() -> set[str]:
    """Series the rule files record themselves (level:metric:operation names)."""
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is read ("<file>: <panel or alert>")."""
    where: dict[str, set[str]] = {}
    sources = [(path, dashboard_expressions(path)) for path in sorted(DASHBOARDS_DIR.glob("*.json"))]
    sources += [(path, rule_expressions(path)) for path in RULE_FILES]
    for path, expressions in sources:
        for title, expression in expressions:
            for name in metric_names(expression):
                where.setdefault(name, set()).add(f"{path.name}: {title}")
    return where


def our_metrics() -> dict[str, set[str]]:
    """What the services must export: referenced names minus external and recorded ones."""
    recorded = recorded_names()
    return {
        name: where
        for name, where in referenced_metrics().items()
        if name not in EXTERNAL_METRICS and name not in recorded
    }


def exposition_names(text: str) -> set[str]:
    """Every sample name a /metrics body can carry, from its # TYPE lines, so a labelled metric that has
    seen no observation yet still counts (prometheus_client prints its HELP and TYPE at once)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
        "untyped": ("",),
    }
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            family, kind = parts[2], parts[3]
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
