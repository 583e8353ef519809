"""Every metric the plugin exports, defined in one place.

Names, label names, label order and histogram buckets follow Kong's prometheus plugin
(``kong/plugins/prometheus/exporter.lua``, Kong 3.10), so dashboards written for Kong's
AI metrics work unchanged. The ``kong_`` prefix is Kong's default; an empty prefix
gives the names shown on Kong's documentation page.

Metrics of this plugin's own (unknown usage, handler errors) carry the same prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

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
    """The plugin's collectors, registered in their own registry."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
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

    def record(self, exchange: Exchange) -> None:
        """Add one exchange to every metric it concerns."""
        labels = exchange.ai_labels()
        self.requests.labels(*labels).inc()

        usage = exchange.usage
        if usage.known:
            self._record_tokens(exchange, usage)
        else:
            reason = usage.unknown_reason or "unknown"
            self.usage_unknown.labels(exchange.provider, exchange.model, exchange.workspace, reason).inc()

        if exchange.cost is not None and exchange.cost > 0 and math.isfinite(exchange.cost):
            self.cost.labels(*labels).inc(exchange.cost)
        _observe(self.provider_latency, labels, exchange.latency_ms)
        _observe(self.cache_fetch_latency, labels, exchange.cache_fetch_latency_ms)
        _observe(self.cache_embeddings_latency, labels, exchange.cache_embeddings_latency_ms)

    def _record_tokens(self, exchange: Exchange, usage: Usage) -> None:
        base = exchange.ai_labels()[:6]
        counts = (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        )
        for token_type, count in zip(TOKEN_TYPES, counts):
            # Kong adds nothing for a zero count, so no zero series appears either.
            if count:
                self.tokens.labels(*base, token_type, exchange.workspace).inc(count)


def _observe(histogram: Histogram, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None and math.isfinite(value) and value >= 0:
        histogram.labels(*labels).observe(value)
