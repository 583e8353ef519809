"""Amazon Bedrock bodies: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream.

Shapes follow the Bedrock runtime API reference (Converse ``TokenUsage``, the
ConverseStream events, the event stream framing) and the native request/response
formats of each model family on InvokeModel.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kong_ai_metrics.config import Price
from kong_ai_metrics.cost import compute_cost
from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.eventstream import EventStreamDecoder, decode_all
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.providers.bedrock import converse_usage
from kong_ai_metrics.usage import Usage

from .eventstream_frames import chunk, event, exception
from .test_openai import numbers

SONNET = "us.anthropic.claude-sonnet-4-20250514-v1:0"
CONVERSE = Route("bedrock", "converse", model=SONNET, stream=False)
CONVERSE_STREAM = Route("bedrock", "converse", model=SONNET, stream=True)
INVOKE = Route("bedrock", "invoke", model=SONNET, stream=False)
INVOKE_STREAM = Route("bedrock", "invoke", model=SONNET, stream=True)
JSON_TYPE = {"content-type": "application/json"}
EVENT_STREAM_TYPE = {"content-type": "application/vnd.amazon.eventstream"}


def parse(route: Route, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> Usage:
    # The stream flag is what the access phase derives from the URL.
    default = EVENT_STREAM_TYPE if route.stream else JSON_TYPE
    return parse_response(route, status, headers or default, body, bool(route.stream), 1 << 20)


def converse_body(usage: dict[str, int]) -> bytes:
    return json.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "The invoice total is 1,240.00 EUR."}]}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 2210},
        }
    ).encode()


CACHED_USAGE = {
    "inputTokens": 23,
    "outputTokens": 187,
    "totalTokens": 3402,
    "cacheReadInputTokens": 3000,
    "cacheWriteInputTokens": 192,
}

STREAM_EVENTS = [
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Three prime numbers"}}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": ": 2, 3 and 5."}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("messageStop", {"stopReason": "end_turn"}),
]
STREAM_METADATA = event(
    "metadata",
    {"usage": dict(CACHED_USAGE), "metrics": {"latencyMs": 1874}},
    padding="abcdefghijklmnopqrstuvwxyzABCDEF",
)
CONVERSE_STREAM_BODY = b"".join(STREAM_EVENTS) + STREAM_METADATA


def claude_events(metrics: dict[str, int] | None) -> list[dict[str, Any]]:
    """Anthropic stream events as Claude on InvokeModelWithResponseStream sends them."""
    stop: dict[str, Any] = {"type": "message_stop"}
    if metrics is not None:
        stop["amazon-bedrock-invocationMetrics"] = metrics
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bdrk_01HvQ8bXn3T6bC4eYq1kA7fJ",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-20250514",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 23, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3000, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " !"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 187}},
        stop,
    ]


INVOCATION_METRICS = {
    "inputTokenCount": 23,
    "outputTokenCount": 187,
    "invocationLatency": 2140,
    "firstByteLatency": 380,
    "cacheReadInputTokenCount": 3000,
    "cacheWriteInputTokenCount": 0,
}


def invoke_stream(events: list[dict[str, Any]]) -> bytes:
    return b"".join(chunk(e) for e in events)


# ---------------------------------------------------------------------------------
# Converse


def test_bedrock_cache_tokens_inside_prompt() -> None:
    usage = parse(CONVERSE, converse_body(CACHED_USAGE))

    # 23 uncached + 3000 read + 192 written; totalTokens is taken as reported.
    assert numbers(usage) == (3215, 187, 3402, 3000, 192, None, None)


def test_bedrock_converse_without_cache_fields() -> None:
    usage = parse(CONVERSE, converse_body({"inputTokens": 12, "outputTokens": 40, "totalTokens": 52}))

    assert numbers(usage) == (12, 40, 52, None, None, None, None)


def test_bedrock_converse_without_usage() -> None:
    body = json.dumps({"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "end_turn"}).encode()

    assert numbers(parse(CONVERSE, body)) == (None, None, None, None, None, None, "no_usage")


def test_bedrock_throttling_error_is_upstream_error() -> None:
    body = b'{"message":"Too many requests, please wait before trying again."}'
    headers = {"content-type": "application/json", "x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"}

    assert numbers(parse(CONVERSE, body, headers, status=429)) == (None, None, None, None, None, None, "upstream_error")


# ---------------------------------------------------------------------------------
# ConverseStream


def test_bedrock_converse_stream_usage_from_metadata() -> None:
    usage = parse(CONVERSE_STREAM, CONVERSE_STREAM_BODY)

    assert numbers(usage) == (3215, 187, 3402, 3000, 192, None, None)


def test_bedrock_eventstream_frames_split_byte_by_byte() -> None:
    expected, _ = decode_all(CONVERSE_STREAM_BODY)
    decoder = EventStreamDecoder()

    messages = []
    for index in range(len(CONVERSE_STREAM_BODY)):
        messages.extend(decoder.feed(CONVERSE_STREAM_BODY[index : index + 1]))

    assert messages == expected
    assert decoder.flush() == 0
    assert numbers(converse_usage(json.loads(messages[-1].payload)["usage"])) == (3215, 187, 3402, 3000, 192, None, None)


@pytest.mark.parametrize("seed", range(20))
def test_bedrock_eventstream_frames_split_randomly(seed: int) -> None:
    expected, _ = decode_all(CONVERSE_STREAM_BODY)
    rng = random.Random(seed)
    decoder = EventStreamDecoder()

    messages = []
    position = 0
    while position < len(CONVERSE_STREAM_BODY):
        size = rng.randint(1, 120)
        messages.extend(decoder.feed(CONVERSE_STREAM_BODY[position : position + size]))
        position += size

    assert messages == expected
    assert [m.header_text(":event-type") for m in messages][-1] == "metadata"
    assert decoder.flush() == 0


def test_bedrock_converse_stream_exception_frame() -> None:
    body = b"".join(STREAM_EVENTS[:2]) + exception("modelStreamErrorException", "The model stream was interrupted.")

    assert numbers(parse(CONVERSE_STREAM, body)) == (None, None, None, None, None, None, "stream_error")


def test_bedrock_converse_stream_truncated_inside_metadata() -> None:
    body = CONVERSE_STREAM_BODY[:-25]

    assert numbers(parse(CONVERSE_STREAM, body)) == (None, None, None, None, None, None, "truncated_stream")


def test_bedrock_converse_stream_ends_before_metadata() -> None:
    body = b"".join(STREAM_EVENTS)

    assert numbers(parse(CONVERSE_STREAM, body)) == (None, None, None, None, None, None, "truncated_stream")


def test_bedrock_frame_with_bad_crc_is_malformed() -> None:
    corrupted = bytearray(STREAM_METADATA)
    corrupted[len(corrupted) // 2] ^= 0x20
    body = b"".join(STREAM_EVENTS) + bytes(corrupted)

    # Damage, not truncation: the reason differs from a stream that stops early.
    assert numbers(parse(CONVERSE_STREAM, body)) == (None, None, None, None, None, None, "malformed_body")


# ---------------------------------------------------------------------------------
# InvokeModel


ANTHROPIC_BODY = json.dumps(
    {
        "id": "msg_bdrk_01Xq8vN2mK7pR4tY6wZ9aB3c",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Here is the summary you asked for."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 18, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2900, "output_tokens": 95},
    }
).encode()
ANTHROPIC_HEADERS = {
    "content-type": "application/json",
    "x-amzn-bedrock-invocation-latency": "1630",
    "x-amzn-bedrock-input-token-count": "18",
    "x-amzn-bedrock-output-token-count": "95",
    "x-amzn-bedrock-cache-read-input-token-count": "2900",
    "x-amzn-bedrock-cache-write-input-token-count": "0",
}


def test_bedrock_invoke_headers_and_body_counted_once() -> None:
    usage = parse(INVOKE, ANTHROPIC_BODY, ANTHROPIC_HEADERS)

    assert numbers(usage) == (2918, 95, 3013, 2900, 0, None, None)
    assert usage.response_model == "claude-sonnet-4-20250514"


def test_bedrock_invoke_anthropic_body_without_headers() -> None:
    usage = parse(INVOKE, ANTHROPIC_BODY)

    assert numbers(usage) == (2918, 95, 3013, 2900, 0, None, None)


def test_bedrock_invoke_header_counts_win_over_body() -> None:
    # Bedrock's meter is the count it bills; the native Llama count is only a fallback.
    body = json.dumps(
        {"generation": "Paris.", "prompt_token_count": 20, "generation_token_count": 3, "stop_reason": "stop"}
    ).encode()
    headers = {"content-type": "application/json", "x-amzn-bedrock-input-token-count": "21", "x-amzn-bedrock-output-token-count": "3"}
    route = Route("bedrock", "invoke", model="meta.llama3-1-70b-instruct-v1:0", stream=False)

    assert numbers(parse(route, body, headers)) == (21, 3, 24, None, None, None, None)


def test_bedrock_invoke_llama_body() -> None:
    body = json.dumps(
        {
            "generation": "The mitochondria is the powerhouse of the cell.",
            "prompt_token_count": 18,
            "generation_token_count": 42,
            "stop_reason": "stop",
        }
    ).encode()
    route = Route("bedrock", "invoke", model="meta.llama3-1-70b-instruct-v1:0", stream=False)

    assert numbers(parse(route, body)) == (18, 42, 60, None, None, None, None)


def test_bedrock_invoke_mistral_usage_only_in_headers() -> None:
    body = json.dumps({"outputs": [{"text": " Bonjour tout le monde.", "stop_reason": "stop"}]}).encode()
    route = Route("bedrock", "invoke", model="mistral.mistral-large-2402-v1:0", stream=False)
    headers = {"content-type": "application/json", "x-amzn-bedrock-input-token-count": "14", "x-amzn-bedrock-output-token-count": "9"}

    assert numbers(parse(route, body, headers)) == (14, 9, 23, None, None, None, None)
    assert numbers(parse(route, body)) == (None, None, None, None, None, None, "no_usage")


def test_bedrock_invoke_titan_text_counts_results() -> None:
    body = json.dumps(
        {
            "inputTextTokenCount": 9,
            "results": [{"tokenCount": 58, "outputText": "Titan is a family of models built by Amazon.", "completionReason": "FINISH"}],
        }
    ).encode()
    route = Route("bedrock", "invoke", model="amazon.titan-text-express-v1", stream=False)

    assert numbers(parse(route, body)) == (9, 58, 67, None, None, None, None)


def test_bedrock_invoke_titan_embeddings() -> None:
    body = json.dumps(
        {"embedding": [0.021, -0.117, 0.064], "embeddingsByType": {"float": [0.021, -0.117, 0.064]}, "inputTextTokenCount": 7}
    ).encode()
    route = Route("bedrock", "invoke", model="amazon.titan-embed-text-v2:0", stream=False)

    assert numbers(parse(route, body)) == (7, 0, 7, None, None, None, None)


def test_bedrock_invoke_nova_body() -> None:
    body = json.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Sure."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 41, "outputTokens": 102, "totalTokens": 143, "cacheReadInputTokenCount": 0, "cacheWriteInputTokenCount": 0},
        }
    ).encode()
    route = Route("bedrock", "invoke", model="us.amazon.nova-pro-v1:0", stream=False)

    assert numbers(parse(route, body)) == (41, 102, 143, 0, 0, None, None)


def test_bedrock_invalid_header_count_falls_back_to_body() -> None:
    headers = dict(ANTHROPIC_HEADERS, **{"x-amzn-bedrock-input-token-count": "-18"})

    assert numbers(parse(INVOKE, ANTHROPIC_BODY, headers)) == (2918, 95, 3013, 2900, 0, None, None)


# ---------------------------------------------------------------------------------
# InvokeModelWithResponseStream


def test_bedrock_invocation_metrics_not_double_counted() -> None:
    usage = parse(INVOKE_STREAM, invoke_stream(claude_events(INVOCATION_METRICS)))

    # Native events and invocationMetrics report the same 23 + 3000 input, 187 output.
    assert numbers(usage) == (3023, 187, 3210, 3000, 0, None, None)
    assert usage.response_model == "claude-sonnet-4-20250514"


def test_bedrock_invoke_stream_native_counts_without_metrics() -> None:
    usage = parse(INVOKE_STREAM, invoke_stream(claude_events(None)))

    # message_start's output_tokens of 1 is a placeholder replaced by message_delta's 187.
    assert numbers(usage) == (3023, 187, 3210, 3000, 0, None, None)


def test_bedrock_invoke_stream_truncated_before_message_delta() -> None:
    events = claude_events(INVOCATION_METRICS)[:4]

    assert numbers(parse(INVOKE_STREAM, invoke_stream(events))) == (None, None, None, None, None, None, "truncated_stream")


def test_bedrock_invoke_stream_llama_metrics() -> None:
    events = [
        {"generation": "The", "prompt_token_count": 18, "generation_token_count": 1, "stop_reason": None},
        {"generation": " mitochondria", "prompt_token_count": None, "generation_token_count": 3, "stop_reason": None},
        {
            "generation": "",
            "prompt_token_count": None,
            "generation_token_count": 42,
            "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 18, "outputTokenCount": 42, "invocationLatency": 950, "firstByteLatency": 210},
        },
    ]
    route = Route("bedrock", "invoke", model="meta.llama3-1-70b-instruct-v1:0", stream=True)

    assert numbers(parse(route, invoke_stream(events))) == (18, 42, 60, None, None, None, None)


def test_bedrock_invoke_stream_exception_frame() -> None:
    body = invoke_stream(claude_events(INVOCATION_METRICS)[:3]) + exception("throttlingException", "Too many tokens, please wait before trying again.")

    assert numbers(parse(INVOKE_STREAM, body)) == (None, None, None, None, None, None, "stream_error")


def _corrupt_last(frames: list[bytes]) -> bytes:
    corrupted = bytearray(frames[-1])
    corrupted[-1] ^= 0x01
    return b"".join(frames[:-1]) + bytes(corrupted)


def test_bedrock_bad_crc_before_final_malformed() -> None:
    frames = [chunk(e) for e in claude_events(INVOCATION_METRICS)][:6]

    assert numbers(parse(INVOKE_STREAM, _corrupt_last(frames))) == (None, None, None, None, None, None, "malformed_body")


def test_bedrock_bad_crc_after_final_keeps_counts() -> None:
    frames = [chunk(e) for e in claude_events(INVOCATION_METRICS)]

    # message_delta passed its CRC before the damaged message_stop, and it is final for Claude.
    assert numbers(parse(INVOKE_STREAM, _corrupt_last(frames))) == (3023, 187, 3210, 3000, 0, None, None)


# ---------------------------------------------------------------------------------
# Model id from the URL


@pytest.mark.parametrize(
    ("path", "model", "api", "stream"),
    [
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fq7x2k9m4w1zd/converse",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/q7x2k9m4w1zd",
            "converse",
            False,
        ),
        (
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/q7x2k9m4w1zd/converse-stream",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/q7x2k9m4w1zd",
            "converse",
            True,
        ),
        ("/model/eu.anthropic.claude-3-7-sonnet-20250219-v1%3A0/invoke", "eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "invoke", False),
        (
            "/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "invoke",
            True,
        ),
    ],
)
def test_bedrock_url_encoded_arn_model_id(path: str, model: str, api: str, stream: bool) -> None:
    assert detect("bedrock-runtime.us-east-1.amazonaws.com", path) == Route("bedrock", api, model=model, stream=stream)


# ---------------------------------------------------------------------------------
# Cost


def test_bedrock_cached_tokens_billed_once() -> None:
    usage = parse(CONVERSE, converse_body(CACHED_USAGE))
    price = Price(SONNET, input_cost=3.00, output_cost=15.00, cached_input_cost=0.30, cache_write_cost=3.75)

    split = compute_cost(usage, price)

    assert split.uncached_input == pytest.approx(23 * 3.00 / 1e6)
    assert split.cached_input == pytest.approx(3000 * 0.30 / 1e6)
    assert split.cache_write == pytest.approx(192 * 3.75 / 1e6)
    assert split.output == pytest.approx(187 * 15.00 / 1e6)
    assert split.total == pytest.approx((23 * 3.00 + 3000 * 0.30 + 192 * 3.75 + 187 * 15.00) / 1e6)


def test_bedrock_invoke_stream_cost_counts_cache_once() -> None:
    usage = parse(INVOKE_STREAM, invoke_stream(claude_events(INVOCATION_METRICS)))
    price = Price(SONNET, input_cost=3.00, output_cost=15.00, cached_input_cost=0.30, cache_write_cost=3.75)

    assert compute_cost(usage, price).total == pytest.approx((23 * 3.00 + 3000 * 0.30 + 187 * 15.00) / 1e6)
