"""Cohere v1 chat and generate, v2 chat, v1 and v2 embed: whole and streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.providers import parse_response, read_request
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

V1_CHAT = Route("cohere", "v1_chat")
V1_GENERATE = Route("cohere", "v1_generate")
V1_EMBED = Route("cohere", "v1_embed")
V2_CHAT = Route("cohere", "v2_chat")
V2_EMBED = Route("cohere", "v2_embed")
JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/stream+json"}
SSE = {"content-type": "text/event-stream"}


def parse(route: Route, body: bytes, stream: bool, headers: dict[str, str]) -> Usage:
    return parse_response(route, 200, headers, body, stream, 1 << 20)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_lines(*values: dict[str, Any]) -> bytes:
    return b"".join(compact(value) + b"\n" for value in values)


def sse_events(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + compact(e) + b"\n\n" for e in events)


# --- v1 chat ----------------------------------------------------------------------

V1_META: dict[str, Any] = {
    "api_version": {"version": "1"},
    "billed_units": {"input_tokens": 8, "output_tokens": 9},
    # Everything the model processed, Cohere's prompt template included: not billed.
    "tokens": {"input_tokens": 74, "output_tokens": 9},
}
V1_CHAT_RESPONSE: dict[str, Any] = {
    "response_id": "6c1e0f0b-3c5a-4a77-9f3e-0f6d1c2b8e41",
    "text": "The capital of Norway is Oslo.",
    "generation_id": "b7e3a2d1-6f4c-4c0e-8d5b-2a9f1e3c7d60",
    "chat_history": [
        {"role": "USER", "message": "What is the capital of Norway?"},
        {"role": "CHATBOT", "message": "The capital of Norway is Oslo."},
    ],
    "finish_reason": "COMPLETE",
    "meta": V1_META,
}
V1_STREAM_START = {"is_finished": False, "event_type": "stream-start", "generation_id": "b7e3a2d1-6f4c-4c0e-8d5b-2a9f1e3c7d60"}
V1_TEXT = [{"is_finished": False, "event_type": "text-generation", "text": piece} for piece in ("The", " capital", " of", " Norway", " is", " Oslo", ".")]


def test_v1_chat_billed_units_not_tokens() -> None:
    usage = parse(V1_CHAT, compact(V1_CHAT_RESPONSE), False, JSON)
    # 74 processed input tokens, 8 billed: the bill is what counts.
    assert numbers(usage) == (8, 9, 17, None, None, None, None)


def test_v1_token_count_not_billed() -> None:
    older = {
        "text": "The sum of 1 + 1 is 2.",
        "generation_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "token_count": {"prompt_tokens": 102, "response_tokens": 258, "total_tokens": 360, "billed_tokens": 339},
    }
    assert numbers(parse(V1_CHAT, compact(older), False, JSON)) == (None, None, None, None, None, None, "no_usage")


def test_v1_chat_stream_usage_in_stream_end() -> None:
    end = {"is_finished": True, "event_type": "stream-end", "response": V1_CHAT_RESPONSE, "finish_reason": "COMPLETE"}
    usage = parse(V1_CHAT, json_lines(V1_STREAM_START, *V1_TEXT, end), True, NDJSON)
    assert numbers(usage) == (8, 9, 17, None, None, None, None)


def test_v1_chat_stream_end_with_error_finish() -> None:
    failed = {**V1_CHAT_RESPONSE, "text": "The capital", "finish_reason": "ERROR", "meta": {**V1_META, "billed_units": {"input_tokens": 8, "output_tokens": 2}}}
    end = {"is_finished": True, "event_type": "stream-end", "response": failed, "finish_reason": "ERROR"}
    usage = parse(V1_CHAT, json_lines(V1_STREAM_START, *V1_TEXT[:2], end), True, NDJSON)
    assert numbers(usage) == (8, 2, 10, None, None, None, "stream_error")


def test_v1_chat_stream_truncated_mid_line() -> None:
    body = json_lines(V1_STREAM_START, *V1_TEXT[:4]) + b'{"is_finished":true,"event_type":"stream-end","respo'
    usage = parse(V1_CHAT, body, True, NDJSON)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_v1_cached_tokens_in_meta() -> None:
    response = {**V1_CHAT_RESPONSE, "meta": {**V1_META, "billed_units": {"input_tokens": 1310, "output_tokens": 9}, "cached_tokens": 1024}}
    assert numbers(parse(V1_CHAT, compact(response), False, JSON)) == (1310, 9, 1319, 1024, None, None, None)


# --- v1 generate ------------------------------------------------------------------

GENERATION = {
    "id": "3d7f2b1a-9c4e-4b8a-a2f1-6e5d4c3b2a10",
    "prompt": "Write a haiku about autumn.",
    "generations": [
        {
            "id": "8a1c9e2f-5b7d-4f3a-9e6c-1d2b3a4c5e6f",
            "index": 0,
            "finish_reason": "COMPLETE",
            "text": " Crimson leaves drifting\nWhispers of the cooling wind\nAutumn says goodbye",
        }
    ],
    "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 6, "output_tokens": 19}},
}
GENERATE_TEXT = [{"text": piece, "is_finished": False, "event_type": "text-generation"} for piece in (" Crimson", " leaves", " drifting")]


def test_v1_generate_whole() -> None:
    assert numbers(parse(V1_GENERATE, compact(GENERATION), False, JSON)) == (6, 19, 25, None, None, None, None)


def test_v1_generate_stream_end() -> None:
    end = {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE", "response": GENERATION}
    usage = parse(V1_GENERATE, json_lines(*GENERATE_TEXT, end), True, NDJSON)
    assert numbers(usage) == (6, 19, 25, None, None, None, None)


def test_v1_generate_stream_end_without_meta() -> None:
    response = {key: value for key, value in GENERATION.items() if key != "meta"}
    end = {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE", "response": response}
    usage = parse(V1_GENERATE, json_lines(*GENERATE_TEXT, end), True, NDJSON)
    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_v1_generate_stream_error_event() -> None:
    error = {"is_finished": True, "event_type": "stream-error", "index": 0, "finish_reason": "ERROR", "err": "internal server error, this has been reported to our developers"}
    usage = parse(V1_GENERATE, json_lines(*GENERATE_TEXT, error), True, NDJSON)
    assert numbers(usage) == (None, None, None, None, None, None, "stream_error")


def test_v1_generate_stream_flag_from_body() -> None:
    # /v1/generate must not be taken for TGI's /generate, which never streams.
    facts = read_request("/v1/generate", compact({"model": "command", "prompt": "Write a haiku.", "stream": True}), 1 << 20)
    assert facts.stream is True


# --- v2 chat ----------------------------------------------------------------------

V2_USAGE = {
    "billed_units": {"input_tokens": 21, "output_tokens": 105},
    "tokens": {"input_tokens": 186, "output_tokens": 105},
}
V2_RESPONSE = {
    "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "Coca-Cola is a carbonated soft drink ..."}]},
    "finish_reason": "COMPLETE",
    "usage": V2_USAGE,
}
V2_OPENING = (
    {
        "id": "29f14a5a-11de-4cae-9800-25e4747408ea",
        "type": "message-start",
        "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}},
    },
    {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Coca"}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "-Cola"}}}},
)
V2_CLOSING = (
    {"type": "content-end", "index": 0},
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": V2_USAGE}},
)


def test_v2_chat_billed_units_not_tokens() -> None:
    assert numbers(parse(V2_CHAT, compact(V2_RESPONSE), False, JSON)) == (21, 105, 126, None, None, None, None)


def test_v2_chat_cached_tokens() -> None:
    usage = {"billed_units": {"input_tokens": 1310, "output_tokens": 42}, "tokens": {"input_tokens": 1506, "output_tokens": 42}, "cached_tokens": 448}
    response = {**V2_RESPONSE, "usage": usage}
    assert numbers(parse(V2_CHAT, compact(response), False, JSON)) == (1310, 42, 1352, 448, None, None, None)


def test_v2_chat_stream_usage_in_message_end() -> None:
    body = sse_events(*V2_OPENING, *V2_CLOSING) + b"data: [DONE]\n\n"
    assert numbers(parse(V2_CHAT, body, True, SSE)) == (21, 105, 126, None, None, None, None)


def test_v2_chat_stream_as_json_lines() -> None:
    body = json_lines(*V2_OPENING, *V2_CLOSING)
    assert numbers(parse(V2_CHAT, body, True, SSE)) == (21, 105, 126, None, None, None, None)


def test_v2_chat_stream_message_end_error() -> None:
    failed = {"type": "message-end", "delta": {"error": "An internal error occurred during generation.", "finish_reason": "ERROR", "usage": {"billed_units": {"input_tokens": 21, "output_tokens": 2}}}}
    usage = parse(V2_CHAT, sse_events(*V2_OPENING, failed), True, SSE)
    assert numbers(usage) == (21, 2, 23, None, None, None, "stream_error")


def test_v2_chat_stream_truncated() -> None:
    usage = parse(V2_CHAT, sse_events(*V2_OPENING), True, SSE)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


# --- embed, rerank and errors -----------------------------------------------------


def test_v1_embed_has_zero_completion() -> None:
    body = {
        "id": "e7a91c3d-2b4f-4e6a-8c1d-9f0e2a3b4c5d",
        "texts": ["hello", "goodbye"],
        "embeddings": [[0.0165, -0.0412, 0.0287], [-0.0093, 0.0351, -0.0214]],
        "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 2}},
        "response_type": "embeddings_floats",
    }
    assert numbers(parse(V1_EMBED, compact(body), False, JSON)) == (2, 0, 2, None, None, None, None)


def test_v2_embed_by_type() -> None:
    body = {
        "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
        "embeddings": {"float": [[0.016296387, 0.008354187, -0.04699707]]},
        "texts": ["hello world"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 5}},
        "response_type": "embeddings_by_type",
    }
    assert numbers(parse(V2_EMBED, compact(body), False, JSON)) == (5, 0, 5, None, None, None, None)


def test_image_embed_bills_images_not_tokens() -> None:
    body = {
        "id": "5807ee2e-0cda-445a-9ec8-864c60a06606",
        "embeddings": {"float": [[-0.007247925, -0.041229248, -0.023223877]]},
        "texts": [],
        "images": [{"width": 400, "height": 400, "format": "jpeg", "bit_depth": 24}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"images": 1}},
        "response_type": "embeddings_by_type",
    }
    assert numbers(parse(V2_EMBED, compact(body), False, JSON)) == (None, None, None, None, None, None, "no_usage")


def test_rerank_search_units_are_not_tokens() -> None:
    body = {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "results": [{"index": 2, "relevance_score": 0.9998}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }
    route = detect("api.cohere.com", "/v2/rerank") or V2_CHAT
    assert numbers(parse(route, compact(body), False, JSON)) == (None, None, None, None, None, None, "no_usage")


def test_trial_key_rate_limit_error() -> None:
    body = compact({"id": "d2f1c7a0-5e3b-4a9d-8c6f-1b2e3d4c5a69", "message": "You are using a Trial key, which is limited to 10 API calls / minute."})
    usage = parse_response(V2_CHAT, 429, JSON, body, False, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_error_body_with_status_200() -> None:
    body = compact({"id": "d2f1c7a0-5e3b-4a9d-8c6f-1b2e3d4c5a69", "message": "invalid request: message must be at least 1 token long."})
    assert numbers(parse(V1_CHAT, body, False, JSON)) == (None, None, None, None, None, None, "upstream_error")


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat", "v1_chat"),
        ("/v1/generate", "v1_generate"),
        ("/v1/embed", "v1_embed"),
        ("/v2/chat", "v2_chat"),
        ("/v2/embed", "v2_embed"),
    ],
)
def test_detect_cohere_paths(path: str, api: str) -> None:
    assert detect("api.cohere.com", path) == Route("cohere", api)
