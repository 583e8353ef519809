"""The Gemini and Bedrock example captures, replayed through a real plugin server process.

Each HAR entry goes through the Kong emulator over the server's Unix socket: access,
buffered proxying, then the log timer. Afterwards the sidecar's scrape must contain
exactly the token series that the captured payloads report.
"""

from __future__ import annotations

from typing import Any

import pytest

from kong_ai_metrics.replay import load_har

from .conftest import EXAMPLES, PluginServer

CONFIG: dict[str, Any] = {"ai_metrics": True, "buffer_streaming_responses": True}

SONNET = "us.anthropic.claude-sonnet-4-20250514-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/q7x2k9m4w1zd"
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
LLAMA = "meta.llama3-1-70b-instruct-v1:0"

# Every token series the captures must produce, and no other. Zero counts make no series.
EXPECTED_TOKENS = {
    # generateContent: candidatesTokenCount 187 + thoughtsTokenCount 956 as completion.
    ("gemini", "gemini-2.5-flash"): {
        "prompt_tokens": 2312,
        "completion_tokens": 1143,
        "total_tokens": 3455,
        "cached_tokens": 2048,
        "reasoning_tokens": 956,
    },
    # alt=sse: the last of three running totals (candidates 21 + thoughts 1203), not their sum.
    ("gemini", "gemini-2.5-pro"): {
        "prompt_tokens": 14,
        "completion_tokens": 1224,
        "total_tokens": 1238,
        "reasoning_tokens": 1203,
    },
    # Vertex AI JSON-array stream with an explicit cache.
    ("gemini", "gemini-2.0-flash-001"): {
        "prompt_tokens": 48213,
        "completion_tokens": 57,
        "total_tokens": 48270,
        "cached_tokens": 48000,
    },
    # Converse: inputTokens 23 + cacheReadInputTokens 3000 + cacheWriteInputTokens 192.
    ("bedrock", SONNET): {
        "prompt_tokens": 3215,
        "completion_tokens": 187,
        "total_tokens": 3402,
        "cached_tokens": 3000,
        "cache_write_tokens": 192,
    },
    # ConverseStream through an application inference profile: the metadata event.
    ("bedrock", PROFILE_ARN): {"prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508},
    # InvokeModel: headers and native body agree on 18 / 42, counted once.
    ("bedrock", LLAMA): {"prompt_tokens": 18, "completion_tokens": 42, "total_tokens": 60},
    # InvokeModelWithResponseStream: invocationMetrics 310 + 1536 written to the cache, 64 out.
    ("bedrock", HAIKU): {
        "prompt_tokens": 1846,
        "completion_tokens": 64,
        "total_tokens": 1910,
        "cache_write_tokens": 1536,
    },
}

PRICING = [
    {"model": "gemini-2.5-flash", "input_cost": 0.30, "cached_input_cost": 0.075, "output_cost": 2.50},
    {"model": "*anthropic.claude-sonnet-4-*", "input_cost": 3.0, "cached_input_cost": 0.3, "cache_write_cost": 3.75, "output_cost": 15.0},
    {"model": "*anthropic.claude-3-5-haiku-*", "input_cost": 0.8, "cached_input_cost": 0.08, "cache_write_cost": 1.0, "output_cost": 4.0},
]


def replay(make_worker: Any, config: dict[str, Any]) -> None:
    worker = make_worker(config)
    for capture in load_har(str(EXAMPLES / "gemini.har")) + load_har(str(EXAMPLES / "bedrock.har")):
        outcome = worker.exchange(capture.request, capture.response)
        assert outcome.access.status == "ok", f"{capture.source}: {outcome.access.error}"
        assert outcome.log.status == "ok", f"{capture.source}: {outcome.log.error}"
        assert outcome.buffered, capture.source


def scraped_tokens(server: PluginServer) -> dict[tuple[str, str], dict[str, float]]:
    _, samples = server.scrape()
    found: dict[tuple[str, str], dict[str, float]] = {}
    for (name, labels), value in samples.items():
        if name == "kong_ai_llm_tokens_total":
            label = dict(labels)
            found.setdefault((label["ai_provider"], label["ai_model"]), {})[label["token_type"]] = value
    return found


def test_example_token_series_match_payloads(plugin_server: PluginServer, make_worker: Any) -> None:
    replay(make_worker, CONFIG)

    assert scraped_tokens(plugin_server) == EXPECTED_TOKENS


def test_example_requests_and_unknown_usage(plugin_server: PluginServer, make_worker: Any) -> None:
    replay(make_worker, CONFIG)
    s = plugin_server
    requests = "kong_ai_llm_requests_total"
    unknown = "kong_ai_llm_usage_unknown_total"

    assert s.value(requests, ai_provider="gemini") == 5
    assert s.value(requests, ai_provider="bedrock") == 5
    assert s.value(requests, ai_provider="gemini", ai_model="gemini-2.5-flash") == 2
    assert s.value(requests, ai_provider="bedrock", ai_model=SONNET) == 2
    # The 429 quota error and the embedContent response without usage.
    assert s.value(unknown, ai_provider="gemini", ai_model="gemini-2.5-flash", reason="upstream_error") == 1
    assert s.value(unknown, ai_provider="gemini", ai_model="gemini-embedding-001", reason="no_usage") == 1
    # The throttled Converse call.
    assert s.value(unknown, ai_provider="bedrock", ai_model=SONNET, reason="upstream_error") == 1
    assert s.value(unknown) == 3


def test_example_cost_bills_cached_tokens_once(plugin_server: PluginServer, make_worker: Any) -> None:
    replay(make_worker, dict(CONFIG, pricing=PRICING))
    cost = "kong_ai_llm_cost_total"
    s = plugin_server

    # 2312 prompt tokens: 264 uncached + 2048 cached, plus 1143 output (thoughts included).
    assert s.value(cost, ai_model="gemini-2.5-flash") == pytest.approx((264 * 0.30 + 2048 * 0.075 + 1143 * 2.50) / 1e6)
    assert s.value(cost, ai_model=SONNET) == pytest.approx((23 * 3.0 + 3000 * 0.3 + 192 * 3.75 + 187 * 15.0) / 1e6)
    assert s.value(cost, ai_model=HAIKU) == pytest.approx((310 * 0.8 + 1536 * 1.0 + 64 * 4.0) / 1e6)
    # No price configured for these models.
    assert s.value(cost, ai_model=LLAMA) == 0
    assert s.value(cost, ai_model=PROFILE_ARN) == 0
