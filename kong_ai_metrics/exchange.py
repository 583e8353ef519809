"""Turn what the log phase gathered into exchanges ready to be recorded.

Pure: the serialized log (``kong.log.serialize()`` decoded), the request facts the
access phase stored in it, and the buffered upstream body in; ``Exchange`` records out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import detect
from . import usage as u
from .config import PluginConfig
from .cost import compute_cost
from .metrics import Exchange
from .providers import parse_response
from .providers._common import dig

# Key under which the access phase stores its request facts with
# kong.log.set_serialize_value, so that the log phase gets them with the serialized log.
REQUEST_FACTS_KEY = "ai_metrics_request"


def has_kong_statistics(serialized: Mapping[str, Any]) -> bool:
    """Return True when Kong's AI plugins logged their own statistics for this request."""
    block = serialized.get("ai")
    return isinstance(block, dict) and any(isinstance(v, dict) for v in block.values())


def request_facts(serialized: Mapping[str, Any]) -> dict[str, Any] | None:
    facts = serialized.get(REQUEST_FACTS_KEY)
    return facts if isinstance(facts, dict) else None


def build_exchanges(serialized: Mapping[str, Any], config: PluginConfig, body: bytes | None) -> list[Exchange]:
    """Return the exchanges to record for one logged request (none when it is not LLM traffic).

    Kong's own ``ai`` statistics win over parsing the body, so an exchange that
    ai-proxy already measured is never counted twice. Without them, only requests
    whose access phase stored request facts are LLM exchanges.
    """
    workspace = _text(serialized.get("workspace_name"))
    if has_kong_statistics(serialized):
        return [_from_kong_statistics(block, config, workspace) for block in serialized["ai"].values() if isinstance(block, dict)]

    facts = request_facts(serialized)
    if facts is None:
        return []

    route = _route(serialized, config)
    stream = facts.get("stream") is True
    if body is None:
        # The status is known without the body: an error stays an upstream error.
        reason = u.REASON_UPSTREAM_ERROR if _status(serialized) >= 400 else u.REASON_NOT_BUFFERED
        usage = u.unknown(reason)
    else:
        usage = parse_response(route, _status(serialized), _response_headers(serialized), body, stream, config.max_body_size)

    model = _text(facts.get("model")) or route.model or usage.response_model or config.model or ""
    price = config.price_for(model, usage.response_model) if usage.known else None
    return [
        Exchange(
            provider=route.provider,
            model=model,
            workspace=workspace,
            usage=usage,
            cost=compute_cost(usage, price).total if price is not None else None,
            latency_ms=_number(dig(serialized, "latencies", "proxy")),
            model_allowed=config.allows_model(model),
        )
    ]


def _from_kong_statistics(block: Mapping[str, Any], config: PluginConfig, workspace: str) -> Exchange:
    meta = _record(block.get("meta"))
    cache = _record(block.get("cache"))
    report = block.get("usage")
    request_model = _text(meta.get("request_model"))
    response_model = _text(meta.get("response_model"))

    if isinstance(report, dict):
        usage = u.finish(
            u.token_count(report.get("prompt_tokens")),
            u.token_count(report.get("completion_tokens")),
            u.token_count(report.get("total_tokens")),
            response_model=response_model or None,
        )
    else:
        usage = u.unknown(u.REASON_NO_USAGE, response_model or None)

    price = config.price_for(request_model, response_model) if usage.known else None
    if price is not None:
        cost: float | None = compute_cost(usage, price).total
    else:
        cost = _number(report.get("cost")) if isinstance(report, dict) else None

    model = request_model or response_model or config.model or ""
    return Exchange(
        provider=_text(meta.get("provider_name")),
        model=model,
        workspace=workspace,
        usage=usage,
        cost=cost,
        latency_ms=_number(meta.get("llm_latency")),
        cache_status=_text(cache.get("cache_status")),
        vector_db=_text(cache.get("vector_db")),
        embeddings_provider=_text(cache.get("embeddings_provider")),
        embeddings_model=_text(cache.get("embeddings_model")),
        cache_fetch_latency_ms=_number(cache.get("fetch_latency")),
        cache_embeddings_latency_ms=_number(cache.get("embeddings_latency")),
        model_allowed=config.allows_model(model),
    )


def _route(serialized: Mapping[str, Any], config: PluginConfig) -> detect.Route:
    host = _text(dig(serialized, "service", "host"))
    path = _text(serialized.get("upstream_uri")) or _text(dig(serialized, "request", "uri"))
    route = detect.detect(host, path, config.provider)
    # The operator enabled ai_metrics on this route, so an upstream that matches no
    # known shape is most likely a self-hosted OpenAI-compatible server.
    return route or detect.Route(detect.OPENAI_COMPATIBLE, "chat")


def _status(serialized: Mapping[str, Any]) -> int:
    status = dig(serialized, "response", "status")
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _response_headers(serialized: Mapping[str, Any]) -> dict[str, str]:
    headers = dig(serialized, "response", "headers")
    if not isinstance(headers, dict):
        return {}
    flat = {}
    for name, value in headers.items():
        if isinstance(value, list):
            value = ", ".join(v for v in value if isinstance(v, str))
        if isinstance(name, str) and isinstance(value, str):
            flat[name.lower()] = value
    return flat


def _record(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
