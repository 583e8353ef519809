"""kong-ai-metrics: a Kong external plugin that exports Kong's AI metrics for Prometheus."""

__version__ = "0.1.0"
