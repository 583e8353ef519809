"""The ``ai-metrics`` plugin in the form kong-pdk loads: ``Plugin``, ``Schema``, ``version``, ``priority``.

The phase methods only make PDK calls and hand the results to pure modules. Each is
wrapped in one broad ``except``: an exception escaping a handler would stall kong-pdk
(before the first PDK call it blocks every later event; after one, Kong waits 60 s for
a Step that never comes), so errors are logged, counted, and the request goes on.

Every PDK call is a Unix-socket round trip from Kong, on top of the HandleEvent that
starts the event, so the handlers make as few as they can:

- access, ``ai_metrics`` false: none.
- access, ``ai_metrics`` true: the request body; the upstream URI only when the body
  does not state ``stream``, streamed responses are not buffered, and neither the
  ``provider`` setting nor the Service's host rules out a stream flag in the URL; then
  one call to pass the request facts on. The Service's host comes from this instance's
  earlier log events, and only when the plugin is configured on a route or a Service:
  Kong then puts ``route_id`` or ``service_id`` in the config, and every request of the
  instance goes to that one Service. For a response that will be parsed, that call is
  ``kong.nginx.set_ctx("buffered_proxying", facts)``: Kong tests that ctx field for
  truth (``kong/init.lua``, ``kong/pdk/service/response.lua``), so the facts table
  turns buffering on exactly as ``enable_buffering()`` does, and it reaches the log
  timer in the ctx copy. A streamed response left unbuffered gets its facts through
  ``kong.log.set_serialize_value`` instead.
- log: the serialized log. When it holds no Kong AI statistics and no facts, and the
  request reached the balancer, the buffering field (the facts, and the guard that keeps
  ``get_raw_body`` from raising a Lua error when Kong switched buffering off), then the
  buffered body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import __version__, detect
from .config import SCHEMA, PluginConfig
from .exchange import REQUEST_FACTS_KEY, build_exchanges, has_kong_statistics, request_facts
from .labels import bound_label
from .metrics import Metrics
from .providers import read_request_body, stream_mode
from .wire import WireError, loads

NAME = "ai-metrics"
# Below ai-proxy (770) so that the access phase reads the request body in the
# provider's format, as ai-proxy forwards it, and after authentication and rate
# limiting plugins (priority 900 and up), so that rejected requests never reach it.
PRIORITY = 760

Schema = SCHEMA
version = __version__
priority = PRIORITY

log = logging.getLogger("kong_ai_metrics")

# The ngx.ctx field behind kong.service.request.enable_buffering(); see the module docstring.
BUFFERING_CTX_KEY = "buffered_proxying"

# Providers whose APIs take the stream flag from the body alone, false when absent.
# Gemini, Bedrock, TGI and Anthropic on Vertex put it in the URL; Ollama streams by default.
_BODY_FLAG_PROVIDERS = frozenset({detect.OPENAI, detect.AZURE, detect.MISTRAL, detect.COHERE, detect.OPENAI_COMPATIBLE, detect.LLAMA_CPP})

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
        conf = config if isinstance(config, dict) else {}
        self.config = PluginConfig.from_kong(conf)
        # A global or consumer-wide plugin runs for many Services, so it learns no host.
        self._one_service = bool(conf.get("route_id") or conf.get("service_id"))
        # The provider of the Service's host, from the latest proxied log event, when that
        # host takes the stream flag from the request body alone. Otherwise None.
        self._body_flag_host_provider: str | None = None
        # True once a log event carries Kong's AI statistics, because ai-proxy picks the
        # upstream itself. Adding or removing ai-proxy makes Kong start a new instance.
        self._ai_proxy_seen = False

    def access(self, kong: Any) -> None:
        if not self.config.ai_metrics:
            return
        _run_guarded("access", self._access, kong, "the request continues unmeasured")

    def log(self, kong: Any) -> None:
        _run_guarded("log", self._log, kong, "this exchange is not recorded")

    def _access(self, kong: Any) -> None:
        # 0 means "no size limit": with any other value Kong returns nil for a body
        # spooled to disk, and packing that nil raises a Lua error (a 500 for the client).
        body = kong.request.get_raw_body(0)
        stated = read_request_body(body if isinstance(body, bytes) else b"", self.config.max_body_size)
        # The model is a client-chosen string: bounded here, it cannot bloat Kong's memory either.
        facts: dict[str, Any] = {"model": bound_label(stated.model or "")}

        if self.config.buffer_streaming_responses:
            # Every response is buffered, so the stream flag is settled in the log phase.
            buffered = True
        elif stated.stream is not None or (stated.json_object and self._body_decides_stream()):
            buffered = not stated.stream
        else:
            upstream_uri = kong.nginx.get_var("upstream_uri")
            buffered = not stream_mode(upstream_uri if isinstance(upstream_uri, str) else "", stated.stream)
        if stated.stream is not None:
            facts["stream"] = stated.stream

        if buffered:
            kong.nginx.set_ctx(BUFFERING_CTX_KEY, facts)
        else:
            kong.log.set_serialize_value(REQUEST_FACTS_KEY, {**facts, "stream": True, "buffered": False})

    def _body_decides_stream(self) -> bool:
        """Return True when a request body without ``stream`` requests a non-streamed response."""
        provider = self.config.provider
        if provider in _BODY_FLAG_PROVIDERS:
            return True
        # The Service's host counts when no provider is set or the setting names the same
        # provider, such as anthropic on api.anthropic.com (but not on Vertex).
        learned = self._body_flag_host_provider
        return learned is not None and provider in (None, learned)

    def _learn_service_host(self, serialized: dict[str, Any]) -> None:
        """Record from a log event whether the Service's host takes the stream flag from the body."""
        if self._ai_proxy_seen:
            return
        if has_kong_statistics(serialized):
            self._ai_proxy_seen = True
            self._body_flag_host_provider = None
            return
        if not serialized.get("tries"):
            # An earlier plugin ended the request before the upstream, so ai-proxy may not have run.
            return
        service = serialized.get("service")
        host = service.get("host") if isinstance(service, dict) else None
        self._body_flag_host_provider = detect.body_flag_provider(host) if isinstance(host, str) else None

    def _log(self, kong: Any) -> None:
        raw = kong.log.serialize()
        try:
            serialized = loads(raw) if isinstance(raw, (str, bytes)) else None
        except WireError:
            serialized = None
        if not isinstance(serialized, dict):
            log.warning("kong.log.serialize() returned no JSON object; exchange not recorded")
            current_metrics().errors.labels("log").inc()
            return
        if self._one_service:
            self._learn_service_host(serialized)

        body: bytes | None = None
        # A request that never reached the balancer (an earlier plugin's exit, no Service)
        # has no upstream response to measure.
        wants_body = self.config.ai_metrics and serialized.get("tries") and request_facts(serialized) is None and not has_kong_statistics(serialized)
        if wants_body:
            carried = kong.nginx.get_ctx(BUFFERING_CTX_KEY)
            if carried:
                raw_body = kong.service.response.get_raw_body()
                body = raw_body if isinstance(raw_body, bytes) else None
            serialized[REQUEST_FACTS_KEY] = _buffered_facts(serialized, carried)

        metrics = current_metrics()
        for exchange in build_exchanges(serialized, self.config, body):
            metrics.record(exchange)


def _run_guarded(phase: str, handler: Callable[[Any], None], kong: Any, consequence: str) -> None:
    """Run a phase handler as an event in progress, logging and counting any exception instead of raising it."""
    metrics = current_metrics()
    in_progress = metrics.in_progress[phase]
    in_progress.inc()
    try:
        handler(kong)
    except Exception:  # noqa: BLE001 - intentional: nothing may escape a phase handler
        log.exception("ai-metrics %s phase failed; %s", phase, consequence)
        metrics.errors.labels(phase).inc()
    finally:
        in_progress.dec()


def _buffered_facts(serialized: dict[str, Any], carried: Any) -> dict[str, Any]:
    """Return the request facts of a proxied request that the access phase chose to buffer.

    ``carried`` is the buffering ctx field as the log timer reads it: the facts table
    while buffering is on, or nil once Kong switched buffering off (an upstream failure
    handled by Kong, an upgrade), which takes the facts with it. True means that a later
    plugin called ``enable_buffering()`` and replaced the table. The request reached the
    balancer, so every access handler ran and it is an exchange all the same; without
    the table its model comes from the URL, the answer or the ``model`` setting instead
    of the request body.
    """
    facts = carried if isinstance(carried, dict) else {}
    path = serialized.get("upstream_uri")
    body_stream = facts.get("stream")
    stream = stream_mode(path if isinstance(path, str) else "", body_stream if isinstance(body_stream, bool) else None)
    return {"model": facts.get("model") or "", "stream": stream, "buffered": True}
