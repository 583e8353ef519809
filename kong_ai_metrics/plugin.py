"""The ``ai-metrics`` plugin as kong-pdk sees it: ``Plugin``, ``Schema``, ``version``, ``priority``.

The phase methods only make PDK calls and hand the results to pure modules. Each is
wrapped in one broad ``except``: an exception escaping a handler would stall kong-pdk
(before the first PDK call it blocks every later event; after one, Kong waits 60 s for
a Step that never comes), so errors are logged, counted, and the request goes on.

PDK round trips, each a Unix-socket request from Kong:
- access, ``ai_metrics`` false: none beyond HandleEvent.
- access, ``ai_metrics`` true: upstream URI, request body, storing the request facts,
  and enabling buffering when the answer will be parsed.
- log: the serialized log; then, only when this plugin enabled buffering and no Kong
  AI statistics are present, the buffering flag and the buffered body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import __version__
from .config import SCHEMA, PluginConfig
from .exchange import REQUEST_FACTS_KEY, build_exchanges, has_kong_statistics, request_facts
from .metrics import Metrics
from .providers import read_request

NAME = "ai-metrics"
# Below ai-proxy (770) so that the access phase reads the request body in the
# provider's format, as ai-proxy forwards it, and after authentication and rate
# limiting plugins (priority 900 and up), so that rejected requests never reach it.
PRIORITY = 760

Schema = SCHEMA
version = __version__
priority = PRIORITY

log = logging.getLogger("kong_ai_metrics")

_metrics: Metrics | None = None


def use_metrics(metrics: Metrics) -> None:
    """Set the metrics that every plugin instance of this process records into."""
    global _metrics
    _metrics = metrics


def current_metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = PluginConfig.from_kong(config if isinstance(config, dict) else {})

    def access(self, kong: Any) -> None:
        if not self.config.ai_metrics:
            return
        try:
            self._access(kong)
        except Exception:  # noqa: BLE001 - intentional: nothing may escape a phase handler
            log.exception("ai-metrics access phase failed; the request continues unmeasured")
            current_metrics().errors.labels("access").inc()

    def log(self, kong: Any) -> None:
        try:
            self._log(kong)
        except Exception:  # noqa: BLE001 - intentional: nothing may escape a phase handler
            log.exception("ai-metrics log phase failed; this exchange is not recorded")
            current_metrics().errors.labels("log").inc()

    def _access(self, kong: Any) -> None:
        upstream_uri = kong.nginx.get_var("upstream_uri")
        # 0 means "no size limit": with any other value Kong returns nil for a body
        # spooled to disk, and packing that nil raises a Lua error (a 500 for the client).
        body = kong.request.get_raw_body(0)
        facts = read_request(
            upstream_uri if isinstance(upstream_uri, str) else "",
            body if isinstance(body, bytes) else b"",
            self.config.max_body_size,
        )
        buffered = not facts.stream or self.config.buffer_streaming_responses
        kong.log.set_serialize_value(
            REQUEST_FACTS_KEY,
            {"model": facts.model or "", "stream": facts.stream, "buffered": buffered},
        )
        if buffered:
            kong.service.request.enable_buffering()

    def _log(self, kong: Any) -> None:
        raw = kong.log.serialize()
        try:
            serialized = json.loads(raw) if isinstance(raw, (str, bytes)) else None
        except ValueError:
            serialized = None
        if not isinstance(serialized, dict):
            log.warning("kong.log.serialize() returned no JSON object; exchange not recorded")
            current_metrics().errors.labels("log").inc()
            return

        body: bytes | None = None
        facts = request_facts(serialized)
        wants_body = facts is not None and facts.get("buffered") is True and self.config.ai_metrics
        if wants_body and not has_kong_statistics(serialized):
            # Buffering can be switched off after access (upgrade, early exit, upstream
            # error); get_raw_body raises a Lua error then, so ask first.
            if kong.nginx.get_ctx("buffered_proxying"):
                raw_body = kong.service.response.get_raw_body()
                body = raw_body if isinstance(raw_body, bytes) else None

        metrics = current_metrics()
        for exchange in build_exchanges(serialized, self.config, body):
            metrics.record(exchange)
