"""Gemini API and Vertex AI Gemini bodies: whole, SSE with CRLF, and streamed JSON arrays.

Payload shapes follow Google's GenerateContentResponse and UsageMetadata types
(https://googleapis.github.io/js-genai/release_docs/classes/types.GenerateContentResponseUsageMetadata.html).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kong_ai_metrics.config import Price
from kong_ai_metrics.cost import compute_cost
from kong_ai_metrics.detect import Route
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.providers.gemini import JSONArrayStreamDecoder, scan_array
from kong_ai_metrics.usage import Usage
from kong_ai_metrics.wire import WireError

from .test_openai import numbers

FLASH = Route("gemini", "generate", model="gemini-2.5-flash", stream=False)
FLASH_STREAM = Route("gemini", "generate", model="gemini-2.5-flash", stream=True)
PRO_STREAM = Route("gemini", "generate", model="gemini-2.5-pro", stream=True)
EMBED = Route("gemini", "embeddings", model="gemini-embedding-001", stream=False)
JSON_TYPE = {"content-type": "application/json; charset=UTF-8"}
SSE_TYPE = {"content-type": "text/event-stream"}


def parse(route: Route, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> Usage:
    # The stream flag is what the access phase derives from the URL.
    return parse_response(route, status, headers or JSON_TYPE, body, bool(route.stream), 1 << 20)


def candidate(text: str, finish: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        entry["finishReason"] = finish
    return entry


def sse(*chunks: dict[str, Any]) -> bytes:
    """Frame chunks as the Gemini API does with ``alt=sse``: CRLF line endings."""
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks)


def json_array(*chunks: dict[str, Any], closed: bool = True) -> bytes:
    """Frame chunks as ``streamGenerateContent`` does without ``alt=sse``: one pretty-printed array."""
    text = "[" + "\r\n,\r\n".join(json.dumps(chunk, indent=2) for chunk in chunks)
    return (text + "]" if closed else text).encode()


THINKING_WHOLE = {
    "candidates": [candidate("Lisbon's trams date from 1873; line 28 still runs the original route.", "STOP")],
    "usageMetadata": {
        "promptTokenCount": 2312,
        "candidatesTokenCount": 187,
        "totalTokenCount": 3455,
        "cachedContentTokenCount": 2048,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2312}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 2048}],
        "thoughtsTokenCount": 956,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "kF4xaPq1LImW1MkP8ZqY6Qs",
}

# A thinking model streamed with alt=sse: every chunk repeats usageMetadata with the
# running totals so far, and the last chunk carries finishReason.
SSE_CHUNKS = [
    {
        "candidates": [candidate("Photosynthesis turns light")],
        "usageMetadata": {
            "promptTokenCount": 14,
            "candidatesTokenCount": 3,
            "totalTokenCount": 456,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 14}],
            "thoughtsTokenCount": 439,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "7l8xaYDZMPWvgLUP7c7N0Ac",
    },
    {
        "candidates": [candidate(" into chemical energy stored in sugars,")],
        "usageMetadata": {
            "promptTokenCount": 14,
            "candidatesTokenCount": 12,
            "totalTokenCount": 465,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 14}],
            "thoughtsTokenCount": 439,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "7l8xaYDZMPWvgLUP7c7N0Ac",
    },
    {
        "candidates": [candidate(" releasing oxygen as a by-product.", "STOP")],
        "usageMetadata": {
            "promptTokenCount": 14,
            "candidatesTokenCount": 25,
            "totalTokenCount": 478,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 14}],
            "thoughtsTokenCount": 439,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "7l8xaYDZMPWvgLUP7c7N0Ac",
    },
]

# Vertex AI without alt=sse: a JSON array whose text contains brackets, braces and escaped
# quotes, so that only string-aware bracket counting splits it right. Usage comes
# with the last element only.
ARRAY_CHUNKS = [
    {
        "candidates": [candidate('Here is the config: {"retries": [1, 2, 4], "note": "say \\"hi\\" }"}')],
        "usageMetadata": {"trafficType": "ON_DEMAND"},
        "modelVersion": "gemini-2.5-pro",
        "createTime": "2026-12-04T10:00:02.417853Z",
        "responseId": "0m8xaY3xGcSPgLUPw8q5sAo",
    },
    {
        "candidates": [candidate(" and a closing bracket ] on its own.")],
        "modelVersion": "gemini-2.5-pro",
        "createTime": "2026-12-04T10:00:02.417853Z",
        "responseId": "0m8xaY3xGcSPgLUPw8q5sAo",
    },
    {
        "candidates": [candidate("", "STOP")],
        "usageMetadata": {
            "promptTokenCount": 1180,
            "candidatesTokenCount": 41,
            "totalTokenCount": 1893,
            "trafficType": "ON_DEMAND",
            "cachedContentTokenCount": 1024,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1180}],
            "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 41}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
            "thoughtsTokenCount": 672,
        },
        "modelVersion": "gemini-2.5-pro",
        "createTime": "2026-12-04T10:00:02.417853Z",
        "responseId": "0m8xaY3xGcSPgLUPw8q5sAo",
    },
]


# ---------------------------------------------------------------------------------
# Whole responses


def test_gemini_thoughts_inside_completion() -> None:
    usage = parse(FLASH, json.dumps(THINKING_WHOLE).encode())

    # 187 visible + 956 thinking tokens, both billed as output.
    assert numbers(usage) == (2312, 1143, 3455, 2048, None, 956, None)
    assert usage.response_model == "gemini-2.5-flash"


def test_gemini_cached_content_already_in_prompt() -> None:
    body = {
        "candidates": [candidate("The contract's renewal date is 1 March.", "STOP")],
        "usageMetadata": {
            "promptTokenCount": 48213,
            "candidatesTokenCount": 12,
            "totalTokenCount": 48225,
            "cachedContentTokenCount": 48000,
            "trafficType": "ON_DEMAND",
        },
        "modelVersion": "gemini-2.0-flash-001",
        "createTime": "2026-12-04T10:01:00.000000Z",
        "responseId": "aG8xaZ2eB4ePgLUP2aeW4AE",
    }
    usage = parse(Route("gemini", "generate", model="gemini-2.0-flash-001", stream=False), json.dumps(body).encode())

    assert numbers(usage) == (48213, 12, 48225, 48000, None, None, None)


def test_gemini_tool_use_prompt_inside_prompt() -> None:
    # Grounding with Google Search feeds the search results back as input.
    body = {
        "candidates": [candidate("Yesterday's match ended 2-1.", "STOP")],
        "usageMetadata": {
            "promptTokenCount": 12,
            "candidatesTokenCount": 180,
            "totalTokenCount": 1234,
            "toolUsePromptTokenCount": 987,
            "thoughtsTokenCount": 55,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "Qm8xaeXgA5-vgLUP1Lq2mQk",
    }
    usage = parse(FLASH, json.dumps(body).encode())

    assert numbers(usage) == (999, 235, 1234, None, None, 55, None)


def test_gemini_blocked_prompt_has_zero_completion() -> None:
    # Proto3 JSON leaves out the zero candidatesTokenCount.
    body = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {
            "promptTokenCount": 9,
            "totalTokenCount": 9,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
        },
        "modelVersion": "gemini-2.0-flash",
        "responseId": "dG8xaaKzC8WvgLUPpNmQsAs",
    }
    usage = parse(Route("gemini", "generate", model="gemini-2.0-flash", stream=False), json.dumps(body).encode())

    assert numbers(usage) == (9, 0, 9, None, None, None, None)


def test_gemini_http_error_is_upstream_error() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}],
        }
    }
    usage = parse(FLASH, json.dumps(body).encode(), status=429)

    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_gemini_error_object_in_200_is_upstream_error() -> None:
    body = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
    usage = parse(FLASH, json.dumps(body).encode())

    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_gemini_embed_content_has_no_usage() -> None:
    body = {"embedding": {"values": [0.0132, -0.0087, 0.0411, -0.0263]}}
    usage = parse(EMBED, json.dumps(body).encode())

    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_gemini_batch_embed_contents_has_no_usage() -> None:
    body = {"embeddings": [{"values": [0.0132, -0.0087]}, {"values": [0.0204, 0.0019]}]}
    usage = parse(EMBED, json.dumps(body).encode())

    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_vertex_embed_content_usage_metadata() -> None:
    body = {
        "embedding": {"values": [0.0132, -0.0087, 0.0411]},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "truncated": False,
    }
    usage = parse(EMBED, json.dumps(body).encode())

    assert numbers(usage) == (9, 0, 9, None, None, None, None)


def test_gemini_count_tokens_is_not_usage() -> None:
    body = {"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]}
    usage = parse(FLASH, json.dumps(body).encode())

    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_gemini_negative_count_is_malformed() -> None:
    body = {"candidates": [candidate("ok", "STOP")], "usageMetadata": {"promptTokenCount": -4, "totalTokenCount": 2}}
    usage = parse(FLASH, json.dumps(body).encode())

    assert numbers(usage) == (None, None, None, None, None, None, "malformed_body")


def test_gemini_invalid_json_is_malformed() -> None:
    usage = parse(FLASH, b'{"candidates": [')

    assert numbers(usage) == (None, None, None, None, None, None, "malformed_body")


def test_gemini_openai_compatible_endpoint_uses_openai_fields() -> None:
    body = {
        "id": "b28xaZvTM9WvgLUP6aW4sAQ",
        "object": "chat.completion",
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 406, "total_tokens": 411},
    }
    usage = parse(Route("gemini", "chat"), json.dumps(body).encode())

    assert numbers(usage) == (5, 406, 411, None, None, None, None)


# ---------------------------------------------------------------------------------
# SSE streams (alt=sse)


def test_gemini_running_totals_not_summed() -> None:
    usage = parse(FLASH_STREAM, sse(*SSE_CHUNKS), SSE_TYPE)

    # The last chunk's 14 / 25 + 439 / 478, not the sum over three chunks.
    assert numbers(usage) == (14, 464, 478, None, None, 439, None)
    assert usage.response_model == "gemini-2.5-flash"


def test_gemini_final_chunk_without_candidate_count_means_zero() -> None:
    # The whole output budget went to thinking; proto3 JSON omits candidatesTokenCount: 0.
    final = {
        "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 27, "totalTokenCount": 226, "thoughtsTokenCount": 199},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "3m8xaZrJK4ePgLUP8ey2sAc",
    }
    usage = parse(FLASH_STREAM, sse(final), SSE_TYPE)

    assert numbers(usage) == (27, 199, 226, None, None, 199, None)


def test_gemini_sse_truncated_before_final_chunk() -> None:
    usage = parse(FLASH_STREAM, sse(*SSE_CHUNKS[:2]), SSE_TYPE)

    # The prompt count is final from the first chunk; the output was still growing.
    assert numbers(usage) == (14, None, None, None, None, None, "truncated_stream")


def test_gemini_sse_cut_inside_final_event() -> None:
    body = sse(*SSE_CHUNKS)
    usage = parse(FLASH_STREAM, body[:-40], SSE_TYPE)

    assert numbers(usage) == (14, None, None, None, None, None, "truncated_stream")


def test_gemini_sse_error_after_200_is_stream_error() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}
    usage = parse(FLASH_STREAM, sse(SSE_CHUNKS[0], error), SSE_TYPE)

    assert numbers(usage) == (14, None, None, None, None, None, "stream_error")


def test_gemini_sse_blocked_prompt_is_final() -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 31, "totalTokenCount": 31},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "Bm8xabqXOfWvgLUPj8qQqAo",
    }
    usage = parse(FLASH_STREAM, sse(blocked), SSE_TYPE)

    assert numbers(usage) == (31, 0, 31, None, None, None, None)


# ---------------------------------------------------------------------------------
# JSON-array streams (no alt=sse), sent as application/json


def test_gemini_json_array_stream() -> None:
    usage = parse(PRO_STREAM, json_array(*ARRAY_CHUNKS))

    assert numbers(usage) == (1180, 713, 1893, 1024, None, 672, None)
    assert usage.response_model == "gemini-2.5-pro"


def test_gemini_json_array_missing_closing_bracket_tolerated() -> None:
    usage = parse(PRO_STREAM, json_array(*ARRAY_CHUNKS, closed=False))

    assert numbers(usage) == (1180, 713, 1893, 1024, None, 672, None)


def test_gemini_json_array_truncated_inside_element() -> None:
    body = json_array(*ARRAY_CHUNKS)
    usage = parse(PRO_STREAM, body[: body.index(b'"promptTokenCount": 1180')])

    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_gemini_json_array_running_totals_not_summed() -> None:
    usage = parse(FLASH_STREAM, json_array(*SSE_CHUNKS))

    assert numbers(usage) == (14, 464, 478, None, None, 439, None)


def test_gemini_json_array_error_element_is_stream_error() -> None:
    error = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
    usage = parse(FLASH_STREAM, json_array(SSE_CHUNKS[0], error))

    assert numbers(usage) == (14, None, None, None, None, None, "stream_error")


def test_gemini_json_array_garbage_between_elements_is_malformed() -> None:
    body = json_array(*SSE_CHUNKS).replace(b"\r\n,\r\n", b"\r\n;\r\n", 1)
    usage = parse(FLASH_STREAM, body)

    assert numbers(usage) == (None, None, None, None, None, None, "malformed_body")


def test_json_array_decoder_random_splits() -> None:
    body = json_array(*ARRAY_CHUNKS)
    whole = JSONArrayStreamDecoder().feed(body)
    assert whole == ARRAY_CHUNKS

    for seed in range(40):
        rng = random.Random(seed)
        decoder = JSONArrayStreamDecoder()
        elements: list[Any] = []
        position = 0
        while position < len(body):
            size = rng.randint(1, 64)
            elements.extend(decoder.feed(body[position : position + size]))
            position += size
        assert elements == ARRAY_CHUNKS, f"seed {seed}"
        assert decoder.flush() is False


def test_json_array_decoder_returns_elements_as_they_complete() -> None:
    body = json_array(*ARRAY_CHUNKS)
    first_end = body.index(b"\r\n,\r\n")
    decoder = JSONArrayStreamDecoder()

    assert decoder.feed(body[:first_end - 1]) == []
    assert decoder.feed(body[first_end - 1 : first_end + 3]) == [ARRAY_CHUNKS[0]]
    assert decoder.flush() is True


def test_json_array_decoder_split_inside_escape() -> None:
    body = b'[{"text": "a\\"]}"}]'
    split = body.index(b"\\") + 1
    decoder = JSONArrayStreamDecoder()

    assert decoder.feed(body[:split]) == []
    assert decoder.feed(body[split:]) == [{"text": 'a"]}'}]
    assert decoder.flush() is False


def reference_elements(body: bytes) -> tuple[list[Any], bool] | str:
    decoder = JSONArrayStreamDecoder()
    try:
        return decoder.feed(body), decoder.flush()
    except WireError as exc:
        return exc.reason


def fast_elements(body: bytes) -> tuple[list[Any], bool] | str:
    elements: list[Any] = []
    try:
        cut_off = scan_array(body, elements.append)
    except WireError as exc:
        return exc.reason
    return elements, cut_off


def test_scan_array_matches_decoder_every_cut() -> None:
    # Raw non-ASCII text, so that byte and character offsets differ and some cuts fall
    # inside a UTF-8 sequence.
    chunks = [{"candidates": [candidate("Grüße, 東京 😀 [ok] {x}")]}, *ARRAY_CHUNKS]
    body = ("[" + "\r\n,\r\n".join(json.dumps(chunk, indent=2, ensure_ascii=False) for chunk in chunks) + "]").encode()
    for cut in range(len(body) + 1):
        assert fast_elements(body[:cut]) == reference_elements(body[:cut]), f"cut at {cut}"


@pytest.mark.parametrize(
    "body",
    [
        b'[{"a": 1}, {"b": "\xff"}, {"c": 3}]',  # invalid UTF-8 inside the second element
        b'[{"a": 1}, 7, {"c": 3}]',  # an element that is not an object
        b'[{"a": 1}, {"b": 2]',  # a bracket that does not match
        b'[{"a": 1}] trailing',
        b'{"a": 1}',
        b"",
        b"  [  ",
    ],
)
def test_scan_array_matches_decoder_bad_input(body: bytes) -> None:
    assert fast_elements(body) == reference_elements(body)


def test_scan_array_cut_off_tiny_elements() -> None:
    result = fast_elements(b"[" + b"{}," * 1000)
    assert result == ([{}] * 1000, True)


# ---------------------------------------------------------------------------------
# Cost


def test_gemini_cached_tokens_billed_once() -> None:
    usage = parse(FLASH, json.dumps(THINKING_WHOLE).encode())
    price = Price("gemini-2.5-flash", input_cost=0.30, output_cost=2.50, cached_input_cost=0.075)

    split = compute_cost(usage, price)

    assert split.uncached_input == pytest.approx((2312 - 2048) * 0.30 / 1e6)
    assert split.cached_input == pytest.approx(2048 * 0.075 / 1e6)
    assert split.cache_write == 0
    assert split.output == pytest.approx(1143 * 2.50 / 1e6)
    assert split.total == pytest.approx((264 * 0.30 + 2048 * 0.075 + 1143 * 2.50) / 1e6)
