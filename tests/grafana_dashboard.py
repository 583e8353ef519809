"""Reading the Grafana dashboard for the tests: its panels, queries and variables, and the names in its PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "grafana" / "kong-ai-metrics.json"

# The variables every AI panel filters on, and the label each one selects.
FILTER_VARIABLES = {"instance": "instance", "workspace": "workspace", "provider": "ai_provider", "model": "ai_model"}

# Labels that Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})


def load_dashboard() -> dict[str, Any]:
    with open(DASHBOARD_PATH, encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    return document


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel, rows included, with the panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    legend: str
    instant: bool


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append(
                PanelQuery(
                    panel=panel.get("title", ""),
                    ref_id=target.get("refId", ""),
                    expr=target["expr"],
                    legend=target.get("legendFormat", ""),
                    instant=bool(target.get("instant")),
                )
            )
    return queries


@dataclass(frozen=True)
class VariableQuery:
    name: str
    selector: str
    label: str


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def variable_queries(dashboard: Mapping[str, Any]) -> list[VariableQuery]:
    """Return the ``label_values(selector, label)`` queries of the query variables, in order."""
    result = []
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query.get("query", "") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"variable {variable['name']}: expected label_values(selector, label), got {text!r}")
        result.append(VariableQuery(variable["name"], match.group("selector"), match.group("label")))
    return result


def grafana_regex_escape(value: str) -> str:
    """Escape one value the way Grafana does when it puts a multi-value variable into a Prometheus regex."""
    escaped = re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\" + m.group(0), value)
    # The regex sits inside a PromQL string, where a backslash itself needs escaping.
    return escaped.replace("\\", "\\\\")


def substitute(expr: str, variables: Mapping[str, str], intervals: Mapping[str, str]) -> str:
    """Replace Grafana's variables in ``expr``: ``$__...`` intervals and the dashboard's own variables.

    ``variables`` maps a name to the text Grafana would put in its place (a regex for
    multi-value variables). A variable left over raises ValueError.
    """
    text = expr
    for name in sorted(intervals, key=len, reverse=True):
        text = text.replace("${" + name + "}", intervals[name]).replace("$" + name, intervals[name])
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace("${" + name + "}", variables[name])
        text = re.sub(r"\$" + re.escape(name) + r"(?![a-zA-Z0-9_])", lambda _: variables[name], text)
    leftover = re.search(r"\$\{?[a-zA-Z_]\w*", text)
    if leftover:
        raise ValueError(f"variable {leftover.group(0)} left in {text!r}")
    return text


# ---------------------------------------------------------------------------------
# Names used by a PromQL expression

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
  | (?P<space>\s+)
  | (?P<variable>\$\{?\w+\}?)
    """,
    re.X,
)
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@dataclass
class PromqlNames:
    """Metric names and label names that one PromQL expression uses."""

    metrics: set[str] = field(default_factory=set)
    # Label names used in a selector, per metric.
    matchers: dict[str, set[str]] = field(default_factory=dict)
    # Label names used in by, without, on, ignoring and group modifiers.
    grouping: set[str] = field(default_factory=set)


def promql_names(expr: str) -> PromqlNames:
    """Return the metric and label names of ``expr``; raise ValueError on a character PromQL does not have."""
    tokens = _tokenize(expr)
    names = PromqlNames()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in _GROUPING and following == ("op", "("):
            index += 2
            while index < len(tokens) and tokens[index] != ("op", ")"):
                if tokens[index][0] == "ident":
                    names.grouping.add(tokens[index][1])
                index += 1
        elif kind == "ident" and (following == ("op", "(") or following in (("ident", "by"), ("ident", "without"))):
            pass  # a function, or an aggregation such as "sum by (le) (...)"
        elif kind == "ident" and text not in _KEYWORDS:
            names.metrics.add(text)
            names.matchers.setdefault(text, set())
            if following == ("op", "{"):
                index = _read_matchers(tokens, index + 2, names.matchers[text])
        elif (kind, text) == ("op", "{"):
            raise ValueError(f"selector without a metric name in {expr!r}")
        index += 1
    return names


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"unexpected character {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group(0)))
        position = match.end()
    return tokens


def _read_matchers(tokens: list[tuple[str, str]], index: int, labels: set[str]) -> int:
    """Collect label names up to the closing brace; return the brace's index."""
    while index < len(tokens) and tokens[index] != ("op", "}"):
        kind, text = tokens[index]
        if kind == "ident" and index + 1 < len(tokens) and tokens[index + 1][1] in ("=", "!=", "=~", "!~"):
            labels.add(text)
        index += 1
    return index


def legend_labels(legend: str) -> set[str]:
    """Return the label names that a legend format such as ``{{ai_provider}} {{ai_model}}`` refers to."""
    return set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))
