"""The Grafana dashboard: only names the plugin exports, every filter applied, units, and both import paths."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from kong_ai_metrics.metrics import DEFAULT_PREFIX, Exchange, Metrics
from kong_ai_metrics.usage import Usage, unknown

from .grafana_dashboard import (
    DASHBOARD_PATH,
    FILTER_VARIABLES,
    TARGET_LABELS,
    iter_panels,
    legend_labels,
    load_dashboard,
    panel_queries,
    promql_names,
    variable_queries,
)

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


def exported_series() -> dict[str, set[str]]:
    """Return every sample name the plugin exports with its label names, from the code's metric definitions.

    One exchange with every field set and one with unknown usage fill the AI metrics.
    Every other labelled metric of ``Metrics`` gets one child, so no family is missed.
    """
    metrics = Metrics(prefix=DEFAULT_PREFIX, registry=CollectorRegistry())
    full_usage = Usage(
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        cached_tokens=50,
        cache_write_tokens=10,
        reasoning_tokens=5,
    )
    metrics.record(
        Exchange(
            provider="openai",
            model="gpt-4o-mini",
            workspace="default",
            usage=full_usage,
            cost=0.01,
            latency_ms=300.0,
            cache_status="hit",
            vector_db="redis",
            embeddings_provider="openai",
            embeddings_model="text-embedding-3-small",
            cache_fetch_latency_ms=4.0,
            cache_embeddings_latency_ms=40.0,
        )
    )
    metrics.record(Exchange(provider="openai", model="gpt-4o-mini", workspace="default", usage=unknown("upstream_error")))
    for wrapper in vars(metrics).values():
        # prometheus_client keeps the label names in _labelnames and has no public accessor.
        label_names = getattr(wrapper, "_labelnames", None) if isinstance(wrapper, MetricWrapperBase) else None
        if label_names:
            wrapper.labels(*(["placeholder"] * len(label_names)))

    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        assert family.samples, f"{family.name} has no samples; record an exchange that fills it"
        for sample in family.samples:
            # The plugin server turns _created series off (server.py calls disable_created_metrics).
            if sample.name.endswith("_created"):
                continue
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def name_problems(expr: str, series: dict[str, set[str]]) -> list[str]:
    """List the metric and label names in ``expr`` that the plugin does not export."""
    problems = []
    names = promql_names(expr)
    used_labels: set[str] = set(TARGET_LABELS)
    for metric in sorted(names.metrics):
        if metric not in series:
            problems.append(f"unknown metric {metric}")
            continue
        used_labels |= series[metric]
        for label in sorted(names.matchers.get(metric, set()) - series[metric] - TARGET_LABELS):
            problems.append(f"{metric} has no label {label}")
    for label in sorted(names.grouping - used_labels):
        problems.append(f"grouping by {label}, which none of {sorted(names.metrics)} has")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return exported_series()


# ---------------------------------------------------------------------------------
# Names


def test_name_check_catches_wrong_names(series: dict[str, set[str]]) -> None:
    assert name_problems('sum by (ai_model) (rate(kong_ai_llm_requests_total{ai_provider="x"}[5m]))', series) == []
    assert name_problems("rate(kong_ai_llm_request_total[5m])", series) == ["unknown metric kong_ai_llm_request_total"]
    assert name_problems('kong_ai_llm_cost_total{token_type="x"}', series) == ["kong_ai_llm_cost_total has no label token_type"]
    assert name_problems("sum by (provider) (kong_ai_llm_cost_total)", series) == [
        "grouping by provider, which none of ['kong_ai_llm_cost_total'] has"
    ]


def test_panel_queries_use_exported_names(dashboard: dict[str, Any], series: dict[str, set[str]]) -> None:
    problems = {f"{q.panel} {q.ref_id}": name_problems(q.expr, series) for q in panel_queries(dashboard)}
    assert {key: found for key, found in problems.items() if found} == {}


def test_variable_queries_use_exported_names(dashboard: dict[str, Any], series: dict[str, set[str]]) -> None:
    for query in variable_queries(dashboard):
        assert name_problems(query.selector, series) == [], query.name
        metric = next(iter(promql_names(query.selector).metrics))
        assert query.label in series[metric] | TARGET_LABELS, query.name


def test_legends_use_labels_left_by_aggregation(dashboard: dict[str, Any]) -> None:
    for query in panel_queries(dashboard):
        kept = promql_names(query.expr).grouping
        assert legend_labels(query.legend) <= kept, f"{query.panel} {query.ref_id}: legend {query.legend!r}"


def test_every_ai_metric_is_on_dashboard(dashboard: dict[str, Any], series: dict[str, set[str]]) -> None:
    used = set().union(*(promql_names(q.expr).metrics for q in panel_queries(dashboard)))
    ai_families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name, labels in series.items() if "ai_provider" in labels}
    shown = {family for family in ai_families if any(name.startswith(family) for name in used)}
    assert shown == ai_families


def test_ai_selectors_apply_every_filter(dashboard: dict[str, Any], series: dict[str, set[str]]) -> None:
    expected = [f'{label}=~"${variable}"' for variable, label in FILTER_VARIABLES.items()]
    for query in panel_queries(dashboard):
        for metric, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", query.expr):
            if "ai_provider" not in series.get(metric, set()):
                continue
            missing = [m for m in expected if m not in matchers]
            assert missing == [], f"{query.panel} {query.ref_id}: {metric} lacks {missing}"


def test_queries_never_group_by_instance(dashboard: dict[str, Any]) -> None:
    for query in panel_queries(dashboard):
        assert "instance" not in promql_names(query.expr).grouping, f"{query.panel} {query.ref_id}"


# ---------------------------------------------------------------------------------
# Panels


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_expanded_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_rows_group_panels(dashboard: dict[str, Any]) -> None:
    titles = []
    for index, panel in enumerate(dashboard["panels"]):
        if panel["type"] != "row":
            continue
        titles.append(panel["title"])
        following = dashboard["panels"][index + 1] if index + 1 < len(dashboard["panels"]) else None
        has_children = bool(panel["panels"]) if panel["collapsed"] else following is not None and following["type"] != "row"
        assert has_children, panel["title"]
    assert titles == [
        "Overview",
        "Requests and cost",
        "Tokens",
        "Provider latency",
        "Unknown usage and plugin errors",
        "Semantic cache",
    ]


def _expected_unit(exprs: list[str]) -> str:
    """Return the unit family a panel's queries call for."""
    text = " ".join(exprs)
    if "latency" in text:
        return "ms"
    if re.search(r"\)\s*/\s*\(?sum", text):
        return "percentunit"
    if "kong_ai_llm_cost_total" in text:
        return "currency"
    if "kong_ai_llm_tokens_total" in text:
        return "tokens"
    if "errors_total" in text:
        return "cps"
    return "reqps"


def test_every_panel_has_a_fitting_unit(dashboard: dict[str, Any]) -> None:
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        assert unit, panel["title"]
        if panel["type"] == "table":
            continue  # tables set units per column
        expected = _expected_unit([t["expr"] for t in panel["targets"]])
        assert expected in unit, f"{panel['title']}: unit {unit!r}, expected {expected}"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "ms"


def test_top_models_table_sets_column_units(dashboard: dict[str, Any]) -> None:
    table = next(p for p in iter_panels(dashboard) if p["title"] == "Top models by cost")
    units = {o["matcher"]["options"]: o["properties"][0]["value"] for o in table["fieldConfig"]["overrides"]}
    assert units["Cost"].startswith("currency")
    assert "tokens" in units["Tokens"]
    assert "topk(10," in table["targets"][0]["expr"]


def test_heatmap_reads_buckets_as_heatmap(dashboard: dict[str, Any]) -> None:
    heatmap = next(p for p in iter_panels(dashboard) if p["type"] == "heatmap")
    target = heatmap["targets"][0]
    assert target["format"] == "heatmap"
    assert target["legendFormat"] == "{{le}}"
    assert heatmap["options"]["calculate"] is False


# ---------------------------------------------------------------------------------
# Importing through the UI and provisioning from a file


def test_datasource_is_an_import_input(dashboard: dict[str, Any]) -> None:
    (only_input,) = dashboard["__inputs"]
    assert only_input["name"] == "DS_PROMETHEUS"
    assert only_input["type"] == "datasource"
    assert only_input["pluginId"] == "prometheus"


def test_only_the_datasource_variable_uses_the_import_input(dashboard: dict[str, Any]) -> None:
    # Provisioning does not fill __inputs, so a panel naming ${DS_PROMETHEUS} would break there.
    text = DASHBOARD_PATH.read_text(encoding="utf-8")
    variable = dashboard["templating"]["list"][0]
    assert variable["type"] == "datasource"
    assert variable["name"] == "datasource"
    assert variable["query"] == "prometheus"
    assert text.count("${DS_PROMETHEUS}") == json.dumps(variable["current"]).count("${DS_PROMETHEUS}") > 0


def test_panels_and_targets_use_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]


def test_filter_variables_come_from_label_values(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    queries = {q.name: q for q in variable_queries(dashboard)}
    assert list(queries) == list(FILTER_VARIABLES)
    for name, label in FILTER_VARIABLES.items():
        assert queries[name].label == label
        assert variables[name]["datasource"] == DATASOURCE_REF
        assert variables[name]["includeAll"] is True
        assert variables[name]["multi"] is True
        assert variables[name]["allValue"] == ".*"


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "kong-ai-metrics"
    assert dashboard["id"] is None
    assert dashboard["schemaVersion"] >= 39
    required_panels = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    used_panels = {p["type"] for p in iter_panels(dashboard)} - {"row"}
    assert required_panels == used_panels
