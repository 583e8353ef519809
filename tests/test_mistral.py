"""Mistral chat, FIM and embeddings, whole and streamed.

Mistral uses OpenAI's field names, so its bodies go through the OpenAI parser. These
tests pin the differences: stream usage arrives by default on the last content chunk
(no separate ``choices: []`` chunk), and embeddings report ``completion_tokens: 0``.
"""

from __future__ import annotations

import json
from typing import Any

from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

CHAT = Route("mistral", "chat")
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
CHAT_ID = "cmpl-e5cc70bb28c444948073e77776eb30ef"


def parse(route: Route, body: bytes, stream: bool = False) -> Usage:
    return parse_response(route, 200, SSE if stream else JSON, body, stream, 1 << 20)


def chunk(content: str, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    value: dict[str, Any] = {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1764852000,
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage is not None:
        value["usage"] = usage
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


STREAM_USAGE = {"prompt_tokens": 13, "total_tokens": 41, "completion_tokens": 28}
STREAM_OPENING = chunk("") + chunk("Bonjour") + chunk(" ! Comment")
FINAL_CHUNK = chunk(" puis-je vous aider ?", "stop", STREAM_USAGE)


def test_detect_mistral_host() -> None:
    assert detect("api.mistral.ai", "/v1/chat/completions") == CHAT
    assert detect("api.mistral.ai", "/v1/fim/completions") == Route("mistral", "completions")
    assert detect("api.mistral.ai", "/v1/embeddings") == Route("mistral", "embeddings")


def test_chat_whole() -> None:
    body = {
        "id": CHAT_ID,
        "object": "chat.completion",
        "model": "mistral-large-latest",
        "usage": {"prompt_tokens": 16, "completion_tokens": 34, "total_tokens": 50},
        "created": 1764852000,
        "choices": [
            {
                "index": 0,
                "message": {"content": "The best French cheese depends on taste ...", "tool_calls": None, "prefix": False, "role": "assistant"},
                "finish_reason": "stop",
            }
        ],
    }
    usage = parse(CHAT, json.dumps(body).encode())
    assert numbers(usage) == (16, 34, 50, None, None, None, None)
    assert usage.response_model == "mistral-large-latest"


def test_stream_usage_in_final_content_chunk() -> None:
    usage = parse(CHAT, STREAM_OPENING + FINAL_CHUNK + b"data: [DONE]\n\n", stream=True)
    assert numbers(usage) == (13, 28, 41, None, None, None, None)


def test_stream_cut_after_final_chunk_keeps_usage() -> None:
    # The usage chunk arrived whole; only the [DONE] terminator is missing.
    usage = parse(CHAT, STREAM_OPENING + FINAL_CHUNK, stream=True)
    assert numbers(usage) == (13, 28, 41, None, None, None, None)


def test_stream_truncated_before_final_chunk() -> None:
    usage = parse(CHAT, STREAM_OPENING + FINAL_CHUNK[:60], stream=True)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_fim_completion() -> None:
    body = {
        "id": "447e3e0d457e42e98248b5d2ef52a2a3",
        "object": "chat.completion",
        "model": "codestral-2508",
        "usage": {"prompt_tokens": 8, "completion_tokens": 91, "total_tokens": 99},
        "created": 1764852100,
        "choices": [{"index": 0, "message": {"content": "    return a + b", "tool_calls": None, "prefix": False, "role": "assistant"}, "finish_reason": "stop"}],
    }
    assert numbers(parse(Route("mistral", "completions"), json.dumps(body).encode())) == (8, 91, 99, None, None, None, None)


def test_embeddings_report_zero_completion() -> None:
    body = {
        "id": "8d6a8e8ee0fa460c9360526480f636d5",
        "object": "list",
        "data": [{"object": "embedding", "embedding": [-0.0165, 0.0719, 0.0315], "index": 0}],
        "model": "mistral-embed",
        "usage": {"prompt_tokens": 6, "total_tokens": 6, "completion_tokens": 0},
    }
    assert numbers(parse(Route("mistral", "embeddings"), json.dumps(body).encode())) == (6, 0, 6, None, None, None, None)


def test_validation_error() -> None:
    body = {
        "object": "error",
        "message": {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {"model": "mistral-small-latest"}}]},
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    usage = parse_response(CHAT, 422, JSON, json.dumps(body).encode(), False, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")
