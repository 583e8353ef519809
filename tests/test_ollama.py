"""Ollama's native /api/chat, /api/generate and /api/embed, whole and streamed, and its /v1 routes."""

from __future__ import annotations

import json
from typing import Any

from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.providers import parse_response, read_request
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

CHAT = Route("ollama", "chat")
GENERATE = Route("ollama", "generate")
EMBED = Route("ollama", "embeddings")
JSON = {"content-type": "application/json; charset=utf-8"}
NDJSON = {"content-type": "application/x-ndjson"}


def parse(route: Route, body: bytes, stream: bool, headers: dict[str, str] | None = None) -> Usage:
    return parse_response(route, 200, headers or (NDJSON if stream else JSON), body, stream, 1 << 20)


def lines(*values: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(value, separators=(",", ":")).encode() + b"\n" for value in values)


def chat_piece(content: str) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": "2026-12-04T10:20:00.412345Z", "message": {"role": "assistant", "content": content}, "done": False}


CHAT_PIECES = [chat_piece(text) for text in ("The", " sky", " is", " blue", " because")]
TIMINGS = {"total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_duration": 342546000, "eval_duration": 4535599000}
CHAT_DONE = {
    "model": "llama3.2",
    "created_at": "2026-12-04T10:20:05.295928Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    **TIMINGS,
    "prompt_eval_count": 26,
    "eval_count": 282,
}
CHAT_REQUEST = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}).encode()


def test_streaming_with_no_stream_field() -> None:
    facts = read_request("/api/chat", CHAT_REQUEST, 1 << 20)
    usage = parse(CHAT, lines(*CHAT_PIECES, CHAT_DONE), facts.stream)
    assert facts.stream is True
    assert numbers(usage) == (26, 282, 308, None, None, None, None)
    assert usage.response_model == "llama3.2"


def test_streaming_flag_false_whole_body() -> None:
    request = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": False}).encode()
    whole = {**CHAT_DONE, "message": {"role": "assistant", "content": "The sky is blue because of Rayleigh scattering."}}
    facts = read_request("/api/chat", request, 1 << 20)
    assert facts.stream is False
    assert numbers(parse(CHAT, json.dumps(whole).encode(), facts.stream)) == (26, 282, 308, None, None, None, None)


def test_generate_context_is_token_ids_not_a_count() -> None:
    body = {
        "model": "llama3.2",
        "created_at": "2026-12-04T10:21:00.000000Z",
        "response": "The sky is blue because of Rayleigh scattering.",
        "done": True,
        "done_reason": "stop",
        "context": [128006, 9125, 128007, 271, 38766, 1303, 33025, 2696, 25, 6790, 220, 2366, 18],
        **TIMINGS,
        "prompt_eval_count": 31,
        "eval_count": 12,
    }
    assert numbers(parse(GENERATE, json.dumps(body).encode(), False)) == (31, 12, 43, None, None, None, None)


def test_missing_prompt_eval_count_is_not_reported() -> None:
    # Older Ollama dropped prompt_eval_count when the whole prompt came from the KV cache.
    done = {key: value for key, value in CHAT_DONE.items() if key != "prompt_eval_count"}
    usage = parse(CHAT, lines(*CHAT_PIECES, done), True)
    assert numbers(usage) == (None, 282, None, None, None, None, None)


def test_load_answer_reports_nothing() -> None:
    body = {"model": "llama3.2", "created_at": "2026-12-04T10:22:00.000000Z", "response": "", "done": True, "done_reason": "load"}
    assert numbers(parse(GENERATE, json.dumps(body).encode(), False)) == (None, None, None, None, None, None, "no_usage")


def test_embed_prompt_count_only() -> None:
    body = {
        "model": "all-minilm",
        "embeddings": [[0.010071029, -0.0017594862, 0.05007221], [-0.0098027075, 0.06042469, 0.025257962]],
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": 8,
    }
    facts = read_request("/api/embed", json.dumps({"model": "all-minilm", "input": ["Why is the sky blue?", "Why is the grass green?"]}).encode(), 1 << 20)
    assert facts.stream is False
    assert numbers(parse(EMBED, json.dumps(body).encode(), facts.stream)) == (8, 0, 8, None, None, None, None)


def test_legacy_embeddings_without_counts() -> None:
    body = {"embedding": [0.5670403838157654, 0.009260174818336964, 0.23178744316101074]}
    assert numbers(parse(EMBED, json.dumps(body).encode(), False)) == (None, None, None, None, None, None, "no_usage")


def test_model_not_found_error() -> None:
    body = json.dumps({"error": 'model "llama3.3" not found, try pulling it first'}).encode()
    usage = parse_response(CHAT, 404, JSON, body, True, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_error_line_inside_stream() -> None:
    error = {"error": "an error was encountered while running the model: unexpected EOF"}
    usage = parse(CHAT, lines(*CHAT_PIECES[:2], error), True)
    assert numbers(usage) == (None, None, None, None, None, None, "stream_error")


def test_stream_truncated_before_done() -> None:
    usage = parse(CHAT, lines(*CHAT_PIECES), True)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_stream_truncated_inside_final_line() -> None:
    body = lines(*CHAT_PIECES) + lines(CHAT_DONE)[:90]
    usage = parse(CHAT, body, True)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_openai_compatible_route_with_provider_override() -> None:
    route = detect("gpu-box.example:11434", "/v1/chat/completions", "ollama")
    assert route == CHAT
    base = {"id": "chatcmpl-417", "object": "chat.completion.chunk", "created": 1764852400, "model": "llama3.2", "system_fingerprint": "fp_ollama"}
    pieces = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Blue"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}},
    ]
    body = b"".join(b"data: " + json.dumps(piece).encode() + b"\n\n" for piece in pieces) + b"data: [DONE]\n\n"
    usage = parse(route, body, True, {"content-type": "text/event-stream"})
    assert numbers(usage) == (26, 282, 308, None, None, None, None)


def test_openai_compatible_whole_with_provider_override() -> None:
    body = {
        "id": "chatcmpl-418",
        "object": "chat.completion",
        "created": 1764852410,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Blue."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29},
    }
    assert numbers(parse(CHAT, json.dumps(body).encode(), False)) == (26, 3, 29, None, None, None, None)


def test_detect_native_paths() -> None:
    assert detect("localhost", "/api/chat") == CHAT
    assert detect("localhost", "/api/generate") == GENERATE
    assert detect("localhost", "/api/embed") == EMBED
