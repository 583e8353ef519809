"""OpenAI-shaped bodies: chat, legacy completions, embeddings and Responses, whole and streamed."""

from __future__ import annotations

import json

from kong_ai_metrics.detect import Route
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.usage import Usage

CHAT = Route("openai", "chat")
RESPONSES = Route("openai", "responses")
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def numbers(usage: Usage) -> tuple[object, ...]:
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.unknown_reason,
    )


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def parse(route: Route, body: bytes, stream: bool = False, headers: dict[str, str] | None = None) -> Usage:
    return parse_response(route, 200, headers or (SSE if stream else JSON), body, stream, 1 << 20)


def test_chat_whole_reports_details() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
            },
        }
    ).encode()
    usage = parse(CHAT, body)
    assert numbers(usage) == (2006, 300, 2306, 1920, None, 64, None)
    assert usage.response_model == "gpt-4o-2024-08-06"


def test_reported_total_wins_over_sum() -> None:
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 16}}).encode()
    assert parse(CHAT, body).total_tokens == 16


def test_embeddings_have_zero_completion() -> None:
    body = json.dumps({"object": "list", "data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
    assert numbers(parse(Route("openai", "embeddings"), body)) == (8, 0, 8, None, None, None, None)


def test_null_usage_is_unknown_not_zero() -> None:
    body = json.dumps({"model": "m", "choices": [], "usage": None}).encode()
    assert numbers(parse(CHAT, body)) == (None, None, None, None, None, None, "no_usage")


def test_error_body_is_upstream_error() -> None:
    body = json.dumps({"error": {"message": "prompt is too long: 210000 tokens > 200000 maximum", "type": "invalid_request_error"}}).encode()
    assert parse(CHAT, body).unknown_reason == "upstream_error"


def test_stream_usage_chunk_before_done() -> None:
    body = sse(
        {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None},
        {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
        b"[DONE]",
    )
    usage = parse(CHAT, body, stream=True)
    assert numbers(usage) == (9, 2, 11, None, None, None, None)
    assert usage.response_model == "gpt-4o-mini"


def test_stream_without_include_usage_is_no_usage() -> None:
    body = sse({"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}, b"[DONE]")
    assert numbers(parse(CHAT, body, stream=True)) == (None, None, None, None, None, None, "no_usage")


def test_stream_cut_before_usage_is_truncated() -> None:
    body = sse({"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None})[:-1]
    assert parse(CHAT, body, stream=True).unknown_reason == "truncated_stream"


def test_azure_annotation_frame_keeps_real_model() -> None:
    body = sse(
        {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": []},
        {"choices": [{"delta": {"content": "x"}, "index": 0}], "id": "c", "model": "gpt-4o-2024-11-20", "usage": None},
        {"choices": [], "id": "c", "model": "gpt-4o-2024-11-20", "usage": {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19}},
        b"[DONE]",
    )
    usage = parse(Route("azure", "chat", model="team-chat-01"), body, stream=True)
    assert numbers(usage) == (11, 8, 19, None, None, None, None)
    assert usage.response_model == "gpt-4o-2024-11-20"


def test_responses_whole() -> None:
    body = json.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "model": "o4-mini-2025-04-16",
            "output": [{"type": "reasoning", "summary": []}, {"type": "message", "content": [{"type": "output_text", "text": "4"}]}],
            "usage": {
                "input_tokens": 36,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 87,
                "output_tokens_details": {"reasoning_tokens": 64},
                "total_tokens": 123,
            },
        }
    ).encode()
    assert numbers(parse(RESPONSES, body)) == (36, 87, 123, 0, None, 64, None)


def test_responses_stream_usage_in_completed_event() -> None:
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_2", "model": "gpt-4.1", "usage": None}}
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"}
    completed = {
        "type": "response.completed",
        "sequence_number": 2,
        "response": {"id": "resp_2", "model": "gpt-4.1", "usage": {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15, "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}},
    }
    body = b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (created, delta, completed)
    )
    assert numbers(parse(RESPONSES, body, stream=True)) == (12, 3, 15, 0, None, 0, None)


def test_responses_stream_failed_is_stream_error() -> None:
    failed = {"type": "response.failed", "sequence_number": 3, "response": {"id": "r", "model": "gpt-4.1", "status": "failed", "usage": None}}
    body = f"event: response.failed\ndata: {json.dumps(failed)}\n\n".encode()
    assert parse(RESPONSES, body, stream=True).unknown_reason == "stream_error"


def test_usage_not_an_object_is_no_usage() -> None:
    for value in (b"5", b"true", b'"12"', b"[1, 2]"):
        usage = parse(CHAT, b'{"model": "gpt-4o", "usage": ' + value + b"}")
        assert usage.unknown_reason == "no_usage", value


def test_groq_usage_under_x_groq() -> None:
    body = sse(
        {"id": "c", "model": "llama-3.1-8b-instant", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "x_groq": {"id": "req_1"}},
        {
            "id": "c",
            "model": "llama-3.1-8b-instant",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}},
        },
        b"[DONE]",
    )
    assert numbers(parse(Route("openai_compatible", "chat"), body, stream=True)) == (12, 2, 14, None, None, None, None)


def test_whole_json_answer_to_stream_request() -> None:
    body = json.dumps({"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}).encode()
    usage = parse_response(CHAT, 200, JSON, body, True, 1 << 20)
    assert numbers(usage) == (9, 3, 12, None, None, None, None)


def test_parser_bug_becomes_internal_error(monkeypatch: object) -> None:
    from kong_ai_metrics import providers

    def broken(*_: object) -> Usage:
        raise KeyError("bug")

    monkeypatch.setitem(providers.PARSERS, "openai", broken)  # type: ignore[attr-defined]
    assert parse(CHAT, b'{"usage": {}}').unknown_reason == "internal_error"
