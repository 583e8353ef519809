"""Every metric the plugin exports, defined in one place.

Names, label names, label order and histogram buckets follow Kong's prometheus plugin
(``kong/plugins/prometheus/exporter.lua``, Kong 3.10), so dashboards written for Kong's
AI metrics work unchanged. The ``kong_`` prefix is Kong's default; an empty prefix
gives the names shown on Kong's documentation page.

Metrics of this plugin's own (unknown usage, handler errors, collapsed model labels,
events in progress) carry the same prefix. Label values are bounded as ``labels``
describes: at most 128 bytes each, and at most ``max_models`` distinct models.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from greenlet import greenlet
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .labels import COLLAPSED_MAX_MODELS, COLLAPSED_NOT_ALLOWED, DEFAULT_MAX_MODELS, OTHER_MODEL, ModelLimit, bound_label
from .usage import Usage

DEFAULT_PREFIX = "kong_"

# Kong's AI_LLM_PROVIDER_LATENCY_BUCKETS, in milliseconds. Kong gives the two cache
# latency histograms no buckets of their own, so they use the same ones.
LATENCY_BUCKETS_MS = (250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 10000, 30000, 60000)

AI_LABELS = ("ai_provider", "ai_model", "cache_status", "vector_db", "embeddings_provider", "embeddings_model", "workspace")
TOKEN_LABELS = AI_LABELS[:6] + ("token_type", "workspace")
UNKNOWN_LABELS = ("ai_provider", "ai_model", "workspace", "reason")

# token_type values. The first three are Kong's; the rest are subsets of them, so
# summing over every token type counts those tokens twice.
TOKEN_TYPES = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True)
class Exchange:
    """One LLM exchange, ready to be recorded: labels, usage, cost and latencies."""

    provider: str
    model: str
    workspace: str
    usage: Usage
    cost: float | None = None
    latency_ms: float | None = None
    cache_status: str = ""
    vector_db: str = ""
    embeddings_provider: str = ""
    embeddings_model: str = ""
    cache_fetch_latency_ms: float | None = None
    cache_embeddings_latency_ms: float | None = None
    # False when the plugin config's allowed_models list does not match the model.
    model_allowed: bool = True

    def ai_labels(self) -> tuple[str, ...]:
        return (
            self.provider,
            self.model,
            self.cache_status,
            self.vector_db,
            self.embeddings_provider,
            self.embeddings_model,
            self.workspace,
        )


class Metrics:
    """The plugin's collectors, registered in their own registry.

    ``max_models`` caps the distinct ``ai_model`` values of this process; exchanges of
    models beyond it are recorded as ``other``.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, registry: CollectorRegistry | None = None, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.models = ModelLimit(max_models)
        # Labelled children by (metric, label values), because prometheus_client's labels()
        # takes a lock and checks every value on each call. The series count bounds it.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        p = prefix
        r = self.registry

        self.requests = Counter(
            f"{p}ai_llm_requests_total",
            "LLM requests seen by the ai-metrics plugin, per provider and model.",
            AI_LABELS,
            registry=r,
        )
        self.cost = Counter(
            f"{p}ai_llm_cost_total",
            "Cost of LLM requests, in the currency of the configured prices.",
            AI_LABELS,
            registry=r,
        )
        self.tokens = Counter(
            f"{p}ai_llm_tokens_total",
            "LLM tokens by token_type; cached, cache-write and reasoning tokens are subsets of prompt and completion.",
            TOKEN_LABELS,
            registry=r,
        )
        self.provider_latency = Histogram(
            f"{p}ai_llm_provider_latency_ms",
            "LLM provider latency in milliseconds.",
            AI_LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.cache_fetch_latency = Histogram(
            f"{p}ai_cache_fetch_latency",
            "AI semantic cache fetch latency in milliseconds.",
            AI_LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.cache_embeddings_latency = Histogram(
            f"{p}ai_cache_embeddings_latency",
            "AI semantic cache embeddings generation latency in milliseconds.",
            AI_LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.usage_unknown = Counter(
            f"{p}ai_llm_usage_unknown_total",
            "LLM requests whose token usage could not be read, by reason; they are counted in requests too.",
            UNKNOWN_LABELS,
            registry=r,
        )
        self.errors = Counter(
            f"{p}ai_metrics_errors_total",
            "Errors caught inside the plugin's phase handlers; traffic is never affected.",
            ("phase",),
            registry=r,
        )
        self.model_collapsed = Counter(
            f"{p}ai_metrics_model_label_collapsed_total",
            'LLM exchanges recorded with ai_model="other": reason max_models when the per-process '
            "maximum of distinct models was reached, not_allowed when allowed_models does not list the model.",
            ("reason",),
            registry=r,
        )
        self.events_in_progress = Gauge(
            f"{p}ai_metrics_events_in_progress",
            "Phase handler calls that started and have not returned; an event that Kong abandoned "
            "stays here until the plugin server ends it.",
            ("phase",),
            registry=r,
        )
        self.abandoned_events = Counter(
            f"{p}ai_metrics_abandoned_events_total",
            "Events that Kong stopped stepping (a Lua error on Kong's side) and that the plugin server ended after its event timeout.",
            ("phase",),
            registry=r,
        )
        self._debug_gauges: _DebugCollector | None = None
        self.in_progress = {phase: self.events_in_progress.labels(phase) for phase in ("access", "log")}

    def enable_debug_gauges(self) -> None:
        """Register gauges for diagnosing leaks: the live greenlets of the process.

        Counting them walks every object the garbage collector tracks, so each scrape
        costs time in proportion to the heap. Leave this off in production.
        """
        if self._debug_gauges is None:
            self._debug_gauges = _DebugCollector(self.prefix)
            self.registry.register(self._debug_gauges)

    def record(self, exchange: Exchange) -> None:
        """Add one exchange to every metric it concerns, with bounded label values."""
        labels = self._bounded_labels(exchange)
        provider, model, workspace = labels[0], labels[1], labels[6]
        self._child(self.requests, labels).inc()

        usage = exchange.usage
        if usage.known:
            self._record_tokens(labels, usage)
        else:
            reason = usage.unknown_reason or "unknown"
            self._child(self.usage_unknown, (provider, model, workspace, reason)).inc()

        if exchange.cost is not None and exchange.cost > 0 and math.isfinite(exchange.cost):
            self._child(self.cost, labels).inc(exchange.cost)
        self._observe(self.provider_latency, labels, exchange.latency_ms)
        self._observe(self.cache_fetch_latency, labels, exchange.cache_fetch_latency_ms)
        self._observe(self.cache_embeddings_latency, labels, exchange.cache_embeddings_latency_ms)

    def _child(self, metric: Counter | Histogram, values: tuple[str, ...]) -> Any:
        """Return ``metric.labels(*values)``, looked up once per series."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _observe(self, histogram: Histogram, labels: tuple[str, ...], value: float | None) -> None:
        if value is not None and math.isfinite(value) and value >= 0:
            self._child(histogram, labels).observe(value)

    def _bounded_labels(self, exchange: Exchange) -> tuple[str, ...]:
        labels = [bound_label(value) for value in exchange.ai_labels()]
        if not exchange.model_allowed:
            labels[1] = OTHER_MODEL
            self.model_collapsed.labels(COLLAPSED_NOT_ALLOWED).inc()
        elif not self.models.admit(labels[1]):
            labels[1] = OTHER_MODEL
            self.model_collapsed.labels(COLLAPSED_MAX_MODELS).inc()
        return tuple(labels)

    def _record_tokens(self, labels: tuple[str, ...], usage: Usage) -> None:
        base = labels[:6]
        workspace = labels[6]
        counts = (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        )
        for token_type, count in zip(TOKEN_TYPES, counts):
            # Kong adds nothing for a zero count, so no zero series appears either. A
            # negative count can only come from a parser bug, and Counter.inc raises on it.
            if count is not None and count > 0:
                self._child(self.tokens, (*base, token_type, workspace)).inc(count)


class _DebugCollector(Collector):
    """Gauges for leak diagnosis, computed at scrape time."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
        yield GaugeMetricFamily(
            f"{self.prefix}ai_metrics_debug_greenlets",
            "Live greenlets in the plugin server process (debug gauge; each scrape walks the heap).",
            value=live,
        )
