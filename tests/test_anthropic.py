"""Anthropic Messages bodies, whole and streamed."""

from __future__ import annotations

import gzip
import json

from kong_ai_metrics.detect import Route
from kong_ai_metrics.providers import parse_response

from .test_openai import numbers

MESSAGES = Route("anthropic", "messages")


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [],
            "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3100, "output_tokens": 2},
        },
    },
)
DELTA = event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})
FINAL = event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 503}})
STOP = event("message_stop", {"type": "message_stop"})


def parse(body: bytes, stream: bool, headers: dict[str, str] | None = None) -> object:
    content_type = "text/event-stream" if stream else "application/json"
    return parse_response(MESSAGES, 200, headers or {"content-type": content_type}, body, stream, 1 << 20)


def test_cache_tokens_inside_prompt() -> None:
    body = json.dumps(
        {
            "id": "msg_2",
            "type": "message",
            "model": "claude-sonnet-4-20250514",
            "content": [{"type": "text", "text": "ok"}],
            "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188, "cache_read_input_tokens": 1800, "output_tokens": 14},
        }
    ).encode()
    assert numbers(parse(body, False)) == (2009, 14, 2023, 1800, 188, None, None)


def test_stream_running_totals_not_summed() -> None:
    usage = parse(START + DELTA + FINAL + STOP, True)
    # message_start's 2 output tokens are a placeholder; message_delta's 503 is the total.
    assert numbers(usage) == (3572, 503, 4075, 3100, 0, None, None)


def test_stream_delta_with_input_counts_overwrites_start() -> None:
    final = event("message_delta", {"type": "message_delta", "delta": {}, "usage": {"input_tokens": 980, "cache_read_input_tokens": 3100, "output_tokens": 40}})
    usage = parse(START + final + STOP, True)
    assert numbers(usage) == (4080, 40, 4120, 3100, 0, None, None)


def test_stream_error_event_is_stream_error() -> None:
    error = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    usage = parse(START + DELTA + error, True)
    assert numbers(usage) == (3572, None, None, 3100, 0, None, "stream_error")


def test_stream_truncated_before_delta() -> None:
    usage = parse(START + DELTA, True)
    assert numbers(usage) == (3572, None, None, 3100, 0, None, "truncated_stream")


def test_gzip_over_sse() -> None:
    body = gzip.compress(START + DELTA + FINAL + STOP)
    usage = parse(body, True, {"content-type": "text/event-stream", "content-encoding": "gzip"})
    assert numbers(usage) == (3572, 503, 4075, 3100, 0, None, None)


def test_error_body_is_upstream_error() -> None:
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    assert parse(body, False).unknown_reason == "upstream_error"


def test_missing_usage_is_unknown() -> None:
    body = json.dumps({"id": "msg_3", "type": "message", "model": "claude-3-5-haiku-20241022", "content": []}).encode()
    assert numbers(parse(body, False)) == (None, None, None, None, None, None, "no_usage")
