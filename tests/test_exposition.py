"""``render_text`` against prometheus_client's ``generate_latest``: the same bytes for every registry shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import metrics as client_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, enable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.samples import Sample

from kong_ai_metrics import usage as u
from kong_ai_metrics.exposition import render_text
from kong_ai_metrics.metrics import Exchange, Metrics


@pytest.fixture(autouse=True)
def no_created_series() -> Iterator[None]:
    # The plugin server disables _created series at start-up; the tests do the same
    # and then put back what the rest of the session had.
    before = client_metrics._use_created
    disable_created_metrics()
    yield
    client_metrics._use_created = before


def recorded_metrics() -> Metrics:
    metrics = Metrics(max_models=1000)
    hostile = ['quote " inside', "back\\slash", "new\nline", "ünïcødé 模型", ""]
    for index, model in enumerate(hostile + [f"model-{n}" for n in range(40)]):
        metrics.record(
            Exchange(
                provider="openai",
                model=model,
                workspace="team \"a\"" if index % 2 else "default",
                usage=u.finish(100 + index, 20, cached=index or None, reasoning=5),
                cost=0.001 * (index + 1),
                latency_ms=float(index * 97),
                cache_status="Hit" if index % 3 == 0 else "",
                cache_fetch_latency_ms=12.5,
            )
        )
    metrics.record(Exchange(provider="anthropic", model="claude", workspace="default", usage=u.unknown("no_usage")))
    metrics.errors.labels("log").inc()
    with metrics.events_in_progress.labels("access").track_inprogress():
        pass
    return metrics


def test_plugin_metrics_same_bytes() -> None:
    registry = recorded_metrics().registry
    expected = generate_latest(registry)
    assert expected.count(b"\n") > 1000
    assert render_text(registry) == expected


def test_debug_collector_same_bytes() -> None:
    metrics = recorded_metrics()
    metrics.enable_debug_gauges()
    rendered = render_text(metrics.registry).decode()
    expected = generate_latest(metrics.registry).decode()
    # The greenlet count can change between the two calls; compare every other line.
    assert [line for line in rendered.splitlines() if "greenlets" not in line] == [line for line in expected.splitlines() if "greenlets" not in line]


def test_other_collectors_same_bytes() -> None:
    registry = CollectorRegistry(auto_describe=True)
    Counter("plain_total", "A counter without labels.", registry=registry).inc(3)
    Gauge("plain_gauge", "Help with a back\\slash\nand a new line.", registry=registry).set(float("inf"))
    Histogram("negative_buckets", "Buckets below zero, so no _sum.", ["kind"], buckets=(-5, -1), registry=registry).labels("x").observe(-3)
    Histogram("big_values", "Values that Go prints with exponents.", ["le_side", "zone"], buckets=(1e7, 2.5e9), registry=registry).labels("a", "b").observe(12345678)
    Gauge("empty_family", "A labelled gauge without children.", ["phase"], registry=registry)

    class Custom:
        def collect(self) -> list[GaugeMetricFamily]:
            return [GaugeMetricFamily("custom_value", "From a custom collector.", value=7)]

    registry.register(Custom())  # type: ignore[arg-type]
    assert render_text(registry) == generate_latest(registry)


def test_created_series_fall_back() -> None:
    registry = CollectorRegistry()
    Counter("with_created_total", "Created series are on.", ["kind"], registry=registry).labels("a").inc()
    enable_created_metrics()
    try:
        rendered = render_text(registry)
        assert b"with_created_created" in rendered
        assert rendered == generate_latest(registry)
    finally:
        disable_created_metrics()


def test_unknown_internals_fall_back() -> None:
    registry = CollectorRegistry()
    counter = Counter("changed_total", "A counter whose child lacks the field the fast path reads.", ["kind"], registry=registry)
    counter.labels("b").inc()

    class SamplesOnly:
        # A child as another prometheus_client release might shape it: no _value field.
        def _samples(self) -> tuple[Sample, ...]:
            return (Sample("_total", {}, 5.0, None, None),)

    counter._metrics[("a",)] = SamplesOnly()
    expected = generate_latest(registry)
    assert b'changed_total{kind="a"} 5.0' in expected
    assert render_text(registry) == expected
