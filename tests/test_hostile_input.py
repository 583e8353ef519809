"""Hostile and broken payloads against every registered parser and every stream decoder.

Property-based (hypothesis): random bytes, usage-shaped JSON with hostile numbers, SSE,
NDJSON, JSON arrays and AWS event streams, truncated, corrupted, duplicated, compressed
or falsely labelled. Whatever arrives, ``providers.parse_response`` returns a usage record
whose counts are None or finite non-negative integers, recording it never raises, and
memory stays within a stated bound. The parsers are taken from ``providers.PARSERS`` when
the tests run, so a parser added later is covered without a change here.
"""

from __future__ import annotations

import base64
import gzip
import importlib
import json
import math
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import Any

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kong_ai_metrics import detect, providers, wire
from kong_ai_metrics.kong_emulator import KongRequest, KongWorker, UpstreamResponse
from kong_ai_metrics.metrics import Exchange, Metrics
from kong_ai_metrics.replay import load_har
from kong_ai_metrics.usage import MAX_TOKEN_COUNT, UNKNOWN_REASONS, Usage

from .conftest import EXAMPLES, FIGURES, PluginServer, start_server
from .traffic import DISPATCHER_ARGS

# ---------------------------------------------------------------------------------
# Routes: one or more per registered parser


# Upstream host and path of each API shape that the detector recognises, so that every
# parser gets every API it may be asked to parse.
SAMPLE_UPSTREAMS = [
    ("api.openai.com", "/v1/chat/completions"),
    ("api.openai.com", "/v1/completions"),
    ("api.openai.com", "/v1/embeddings"),
    ("api.openai.com", "/v1/responses"),
    ("contoso.openai.azure.com", "/openai/deployments/chat-01/chat/completions"),
    ("api.anthropic.com", "/v1/messages"),
    ("us-east5-aiplatform.googleapis.com", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"),
    ("api.cohere.com", "/v1/chat"),
    ("api.cohere.com", "/v1/generate"),
    ("api.cohere.com", "/v2/chat"),
    ("api.cohere.com", "/v2/embed"),
    ("api.mistral.ai", "/v1/chat/completions"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-embedding-001:embedContent"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream"),
    ("api-inference.huggingface.co", "/models/mistralai/Mistral-7B-Instruct-v0.3"),
    ("tgi.endpoints.huggingface.cloud", "/generate"),
    ("tgi.endpoints.huggingface.cloud", "/generate_stream"),
    ("router.huggingface.co", "/v1/chat/completions"),
    ("localhost", "/api/chat"),
    ("localhost", "/api/generate"),
    ("localhost", "/api/embed"),
    ("llama.internal", "/completion"),
    ("llama.internal", "/embedding"),
    ("vllm.internal", "/v1/chat/completions"),
]


def all_routes() -> list[detect.Route]:
    """Return the routes of SAMPLE_UPSTREAMS plus a chat route for any parser they miss."""
    routes = {route for host, path in SAMPLE_UPSTREAMS if (route := detect.detect(host, path)) is not None}
    for provider in providers.PARSERS:
        if not any(route.provider == provider for route in routes):
            routes.add(detect.Route(provider, "chat"))
    return sorted(routes, key=lambda route: (route.provider, route.api, str(route.model), str(route.stream)))


ROUTES = all_routes()


def test_hostile_routes_cover_every_parser() -> None:
    covered = {route.provider for route in ROUTES}
    assert set(providers.PARSERS) <= covered
    assert len(providers.PARSERS) >= 5


# ---------------------------------------------------------------------------------
# What every outcome must satisfy


COUNT_FIELDS = [f.name for f in fields(Usage) if f.name.endswith("_tokens")]


def check_usage(usage: Usage) -> None:
    assert isinstance(usage, Usage)
    for name in COUNT_FIELDS:
        value = getattr(usage, name)
        if value is None:
            continue
        assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        # Derived counts add at most three reported ones.
        assert 0 <= value <= 3 * MAX_TOKEN_COUNT, (name, value)
    assert usage.unknown_reason is None or usage.unknown_reason in UNKNOWN_REASONS
    assert usage.response_model is None or isinstance(usage.response_model, str)


def check_recorded(usage: Usage, model: str = "m") -> None:
    """Record ``usage`` into fresh metrics and check that no sample is negative or not finite."""
    metrics = Metrics()
    metrics.record(Exchange(provider="p", model=model, workspace="w", usage=usage, cost=None, latency_ms=10.0))
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert math.isfinite(sample.value), sample
            assert sample.value >= 0, sample


def parse(route: detect.Route, body: bytes, headers: dict[str, str], stream: bool = False, status: int = 200, limit: int = 1 << 20) -> Usage:
    usage = providers.parse_response(route, status, headers, body, stream, limit)
    check_usage(usage)
    return usage


# ---------------------------------------------------------------------------------
# Strategies


class Raw(str):
    """JSON text inserted as it is: numbers no encoder writes, such as 1e400."""


USAGE_KEYS = sorted(
    {
        "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
        "promptTokenCount", "candidatesTokenCount", "totalTokenCount", "thoughtsTokenCount",
        "cachedContentTokenCount", "inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens",
        "cacheWriteInputTokens", "inputTokenCount", "outputTokenCount", "prompt_eval_count", "eval_count",
        "generated_tokens", "input_length", "prompt_token_count", "generation_token_count",
        "inputTextTokenCount", "tokens_evaluated", "tokens_predicted", "cache_n", "prompt_n", "predicted_n",
        "prompt_cache_hit_tokens", "tokenCount",
    }
)  # fmt: skip
CONTAINER_KEYS = [
    "usage", "usageMetadata", "meta", "billed_units", "tokens", "metadata", "details", "timings", "message",
    "response", "delta", "choices", "candidates", "prompt_tokens_details", "completion_tokens_details",
    "input_tokens_details", "output_tokens_details", "amazon-bedrock-invocationMetrics", "error", "results",
]  # fmt: skip
OTHER_KEYS = ["model", "modelVersion", "type", "event_type", "done", "stream", "finish_reason", "stopReason", "object", "id"]
EVENT_NAMES = [
    "", "message_start", "message_delta", "message_stop", "error", "ping", "response.created",
    "response.completed", "response.failed", "response.incomplete", "stream-start", "stream-end",
    "message-start", "message-end", "content-delta", "text-generation",
]  # fmt: skip

hostile_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 7, 2**53, 2**53 + 1, 2**63, 2**64 + 1, 12.0, 12.5, -0.0, 1e308]),
    st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1" + "0" * 5000), Raw("1E+2")]),
)
scalars = st.one_of(
    hostile_numbers,
    st.text(max_size=12),
    st.sampled_from(["12", "-3", "", "[DONE]", "message_delta", "done"]),
    st.booleans(),
    st.none(),
)
json_keys = st.one_of(st.sampled_from(USAGE_KEYS + CONTAINER_KEYS + OTHER_KEYS), st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=6)),
    max_leaves=24,
)
documents = st.dictionaries(json_keys, json_values, max_size=6)

# Mostly plausible counts, sometimes hostile ones, so that parsers reach their usage code.
counts = st.one_of(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6), hostile_numbers, st.none())
models = st.one_of(st.sampled_from(["gpt-4o-mini", "claude-sonnet-4-20250514", "gemini-2.5-pro", ""]), st.text(max_size=300))


# Usage-carrying documents in each provider's shape; ``c`` draws a count, ``m`` is the model.
USAGE_TEMPLATES: list[Callable[[Callable[[], Any], str], Any]] = [
    lambda c, m: {"model": m, "choices": [], "usage": {"prompt_tokens": c(), "completion_tokens": c(), "total_tokens": c(),
                  "prompt_tokens_details": {"cached_tokens": c()}, "completion_tokens_details": {"reasoning_tokens": c()}}},
    lambda c, m: {"type": "response.completed", "response": {"model": m, "usage": {"input_tokens": c(), "output_tokens": c(),
                  "total_tokens": c(), "input_tokens_details": {"cached_tokens": c()}, "output_tokens_details": {"reasoning_tokens": c()}}}},
    lambda c, m: {"type": "message_start", "message": {"model": m, "usage": {"input_tokens": c(), "cache_creation_input_tokens": c(),
                  "cache_read_input_tokens": c(), "output_tokens": c()}}},
    lambda c, m: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": c()}},
    lambda c, m: {"type": "message", "model": m, "usage": {"input_tokens": c(), "output_tokens": c(), "cache_read_input_tokens": c()}},
    lambda c, m: {"modelVersion": m, "candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": c(),
                  "candidatesTokenCount": c(), "totalTokenCount": c(), "thoughtsTokenCount": c(), "cachedContentTokenCount": c()}},
    lambda c, m: {"stopReason": "end_turn", "usage": {"inputTokens": c(), "outputTokens": c(), "totalTokens": c(),
                  "cacheReadInputTokens": c(), "cacheWriteInputTokens": c()}, "metrics": {"latencyMs": c()}},
    lambda c, m: {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": c(), "outputTokenCount": c()}},
    lambda c, m: {"id": "c", "finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": c(), "output_tokens": c()},
                  "tokens": {"input_tokens": c(), "output_tokens": c()}}},
    lambda c, m: {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": c(), "output_tokens": c()}}}},
    lambda c, m: {"event_type": "stream-end", "is_finished": True, "response": {"meta": {"billed_units": {"input_tokens": c(), "output_tokens": c()}}}},
    lambda c, m: {"model": m, "done": True, "done_reason": "stop", "prompt_eval_count": c(), "eval_count": c()},
    lambda c, m: {"generated_text": "x", "details": {"finish_reason": "length", "generated_tokens": c(), "input_length": c()}},
    lambda c, m: {"content": "x", "stop": True, "tokens_evaluated": c(), "tokens_predicted": c(), "timings": {"cache_n": c()}},
    lambda c, m: {"prompt_token_count": c(), "generation_token_count": c(), "stop_reason": "stop"},
]  # fmt: skip


@st.composite
def usage_documents(draw: st.DrawFn) -> Any:
    template = draw(st.sampled_from(USAGE_TEMPLATES))
    return template(lambda: draw(counts), draw(models))


def to_json(value: Any) -> str:
    """Serialize ``value`` as JSON text, keeping ``Raw`` values and writing NaN and infinities as tokens."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


def header_entry(name: str, value: str) -> bytes:
    encoded = name.encode()
    data = value.encode()
    return bytes([len(encoded)]) + encoded + b"\x07" + struct.pack(">H", len(data)) + data


def eventstream_message(event_type: str, payload: bytes, message_type: str = "event") -> bytes:
    """Encode one AWS event stream message (big-endian prelude, string headers, two CRC-32s)."""
    headers = header_entry(":event-type", event_type) + header_entry(":content-type", "application/json")
    headers += header_entry(":message-type", message_type)
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


FRAMINGS = ("json", "sse", "sse_crlf", "ndjson", "json_array", "eventstream", "eventstream_chunk", "random")


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    framing = draw(st.sampled_from(FRAMINGS))
    if framing == "random":
        return draw(st.binary(max_size=2048))
    docs = [to_json(doc) for doc in draw(st.lists(st.one_of(usage_documents(), usage_documents(), documents), min_size=1, max_size=5))]
    if draw(st.booleans()):
        # A usage event sent twice, as servers that repeat running totals do.
        docs.append(docs[-1])
    if framing == "json":
        body = docs[0].encode()
    elif framing in ("sse", "sse_crlf"):
        newline = "\r\n" if framing == "sse_crlf" else "\n"
        names = draw(st.lists(st.sampled_from(EVENT_NAMES), min_size=len(docs), max_size=len(docs)))
        events = [(f"event: {name}{newline}" if name else "") + f"data: {doc}{newline}{newline}" for name, doc in zip(names, docs)]
        body = "".join(events).encode()
        if draw(st.booleans()):
            body += f"data: [DONE]{newline}{newline}".encode()
    elif framing == "ndjson":
        body = "\n".join(docs).encode() + b"\n"
    elif framing == "json_array":
        body = ("[" + ",\r\n".join(docs) + "]").encode()
    elif framing == "eventstream":
        kinds = draw(st.lists(st.sampled_from(["messageStart", "contentBlockDelta", "messageStop", "metadata", "throttlingException"]), min_size=len(docs), max_size=len(docs)))
        body = b"".join(eventstream_message(kind, doc.encode(), "exception" if kind.endswith("Exception") else "event") for kind, doc in zip(kinds, docs))
    else:
        body = b"".join(eventstream_message("chunk", json.dumps({"bytes": base64.b64encode(doc.encode()).decode()}).encode()) for doc in docs)
    return draw(mutated(body))


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "invalid_utf8", "drop_middle"]))
    if not body or mutation == "none":
        return body
    position = draw(st.integers(min_value=0, max_value=len(body) - 1))
    if mutation == "truncate":
        return body[:position]
    if mutation == "flip":
        return body[:position] + bytes([body[position] ^ draw(st.integers(1, 255))]) + body[position + 1 :]
    if mutation == "invalid_utf8":
        return body[:position] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"])) + body[position:]
    end = draw(st.integers(min_value=position, max_value=len(body)))
    return body[:position] + body[end:]


CONTENT_TYPES = [
    "application/json", "text/event-stream", "text/event-stream; charset=utf-8", "application/x-ndjson",
    "application/stream+json", "application/vnd.amazon.eventstream", "text/html", "text/plain", "", "garbage/;;",
]  # fmt: skip
ENCODINGS = ["", "gzip", "x-gzip", "deflate", "raw-deflate", "br", "gzip, br", "identity", "zstd", "claimed-gzip", "truncated-gzip", "bomb-gzip", "bomb-br"]
HEADER_VALUES = ["12", "-5", "1e400", "NaN", "99999999999999999999999", "12.5", " 7 ", "", "²", "0x10"]


def encode(body: bytes, encoding: str) -> tuple[bytes, str]:
    """Return the body as sent with ``encoding`` and the Content-Encoding header value."""
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(body), encoding
    if encoding == "deflate":
        return zlib.compress(body), "deflate"
    if encoding == "raw-deflate":
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush(), "deflate"
    if encoding == "br":
        return brotli.compress(body), "br"
    if encoding == "gzip, br":
        return brotli.compress(gzip.compress(body)), "gzip, br"
    if encoding == "claimed-gzip":
        return body, "gzip"
    if encoding == "truncated-gzip":
        compressed = gzip.compress(body)
        return compressed[: len(compressed) // 2], "gzip"
    if encoding == "bomb-gzip":
        return BOMBS["gzip"], "gzip"
    if encoding == "bomb-br":
        return BOMBS["br"], "br"
    return body, encoding


# Far larger inflated than any max_body_size, tiny compressed.
_BOMB_PLAINTEXT = b'{"usage": {"prompt_tokens": 1}, "pad": "' + b" " * (64 * 1024 * 1024) + b'"}'
BOMBS = {
    "gzip": gzip.compress(_BOMB_PLAINTEXT),
    "deflate": zlib.compress(_BOMB_PLAINTEXT),
    "br": brotli.compress(_BOMB_PLAINTEXT, quality=5),
}
del _BOMB_PLAINTEXT


# ---------------------------------------------------------------------------------
# Properties of every parser


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.sampled_from(ROUTES),
    body=hostile_bodies(),
    stream=st.booleans(),
    content_type=st.sampled_from(CONTENT_TYPES),
    encoding=st.sampled_from(ENCODINGS),
    status=st.sampled_from([200, 200, 200, 201, 204, 400, 429, 500, 0]),
    limit=st.sampled_from([1024, 64 * 1024, 10 * 1024 * 1024]),
    count_headers=st.dictionaries(
        st.sampled_from(["x-prompt-tokens", "x-generated-tokens", "x-amzn-bedrock-input-token-count", "x-amzn-bedrock-output-token-count", "x-amzn-bedrock-cache-read-input-token-count"]),
        st.sampled_from(HEADER_VALUES),
        max_size=3,
    ),
)
def test_hostile_payloads_never_raise(
    route: detect.Route, body: bytes, stream: bool, content_type: str, encoding: str, status: int, limit: int, count_headers: dict[str, str]
) -> None:
    sent, content_encoding = encode(body, encoding)
    headers = {"content-type": content_type, **count_headers}
    if content_encoding:
        headers["content-encoding"] = content_encoding
    usage = parse(route, sent, headers, stream, status, limit)
    check_recorded(usage, usage.response_model or "m")


@st.composite
def usage_streams(draw: st.DrawFn) -> tuple[bytes, bool, str]:
    """Usage documents framed the way their stream flag expects, unmutated: the parsers' usage paths."""
    docs = [to_json(doc) for doc in draw(st.lists(usage_documents(), min_size=1, max_size=4))]
    framing = draw(st.sampled_from(["json", "sse", "ndjson", "eventstream"]))
    if framing == "json":
        return docs[-1].encode(), False, "application/json"
    if framing == "sse":
        return "".join(f"data: {doc}\n\n" for doc in docs).encode() + b"data: [DONE]\n\n", True, "text/event-stream"
    if framing == "ndjson":
        return "\n".join(docs).encode() + b"\n", True, "application/x-ndjson"
    kinds = draw(st.lists(st.sampled_from(["messageStart", "metadata", "messageStop"]), min_size=len(docs), max_size=len(docs)))
    return b"".join(eventstream_message(kind, doc.encode()) for kind, doc in zip(kinds, docs)), True, "application/vnd.amazon.eventstream"


@settings(max_examples=600, deadline=None)
@given(route=st.sampled_from(ROUTES), framed=usage_streams())
def test_hostile_counts_in_usage_shaped_bodies(route: detect.Route, framed: tuple[bytes, bool, str]) -> None:
    body, stream, content_type = framed
    usage = parse(route, body, {"content-type": content_type}, stream)
    check_recorded(usage, usage.response_model or "m")


@settings(max_examples=300, deadline=None)
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=4096), stream=st.booleans())
def test_hostile_random_bytes_each_parser(route: detect.Route, body: bytes, stream: bool) -> None:
    usage = parse(route, body, {"content-type": "application/octet-stream"}, stream)
    check_recorded(usage)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route.provider}-{route.api}")
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000,
        b'{"usage":' * 100_000 + b"1",
        b'{"a":[' * 50_000,
        b"data: " + b"[" * 100_000 + b"\n\n",
        b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}",
        b'{"usage": {"prompt_tokens": 1e400, "completion_tokens": -1e400, "total_tokens": NaN}}',
        b'{"usage": {"prompt_tokens": -5, "completion_tokens": 2.5, "total_tokens": "37"}}',
    ],
    ids=["open-arrays", "nested-usage", "nested-mixed", "sse-nesting", "5000-digit-number", "overflowing-floats", "negative-fraction-string"],
)
def test_hostile_deep_nesting_and_numbers(route: detect.Route, body: bytes) -> None:
    for stream in (False, True):
        for content_type in ("application/json", "text/event-stream", "application/x-ndjson"):
            usage = parse(route, body, {"content-type": content_type}, stream)
            assert usage.prompt_tokens is None or usage.prompt_tokens >= 0
            check_recorded(usage)


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route.provider}-{route.api}")
def test_hostile_body_over_max_body_size(route: detect.Route) -> None:
    body = b'{"usage": {"prompt_tokens": 5, "completion_tokens": 1}, "pad": "' + b"x" * 5000 + b'"}'
    usage = parse(route, body, {"content-type": "application/json"}, limit=4096)
    assert usage.unknown_reason == "body_too_large"
    assert usage.prompt_tokens is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_hostile_compression_bomb_bounded_memory(coding: str) -> None:
    limit = 1024 * 1024
    bomb = BOMBS[coding]
    route = detect.Route(detect.OPENAI, "chat")
    tracemalloc.start()
    try:
        usage = parse(route, bomb, {"content-type": "application/json", "content-encoding": coding}, limit=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    FIGURES.append(f"hostile: a {len(bomb)}-byte {coding} bomb of 64 MiB stopped at max_body_size=1 MiB with a peak of {peak / 2**20:.1f} MiB")
    assert usage.unknown_reason == "body_too_large"
    # The output buffer grows to the limit and is copied once, plus the decoder's own chunk.
    assert peak < 4 * limit


def test_hostile_many_gzip_members_no_recursion() -> None:
    # Each empty gzip member is 20 bytes; recursing per member would exhaust the stack.
    body = gzip.compress(b"") * 5000 + gzip.compress(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}')
    usage = parse(detect.Route(detect.OPENAI, "chat"), body, {"content-type": "application/json", "content-encoding": "gzip"})
    assert usage.prompt_tokens == 3
    assert usage.total_tokens == 7


# Inputs of at most this many bytes, built to cost the most memory per byte.
MEMORY_BODY_SIZE = 64 * 1024
# Stated bound: parsing a body of N bytes (after decompression) peaks below 100 N + 4 MiB
# of Python allocations, measured with tracemalloc. Decoded JSON costs far more than its
# text: an array of empty objects is 3 bytes per object in the body and about 70 bytes
# per object in memory, and the llama.cpp parser keeps one more record per object.
MEMORY_FACTOR = 100
MEMORY_BASE = 4 * 1024 * 1024
_USAGE_EVENT = b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n'
ADVERSARIAL_BODIES: dict[str, Callable[[int], bytes]] = {
    "random": lambda n: bytes((i * 7919 + 13) % 256 for i in range(n)),
    "small-objects-array": lambda n: b"[" + b"{}," * (n // 3 - 1) + b"{}]",
    "small-ints-array": lambda n: b"[" + b"0," * (n // 2 - 2) + b"0]",
    "sse-tiny-events": lambda n: b"data: {}\n\n" * (n // 10),
    "sse-one-long-line": lambda n: b"data: " + b"x" * (n - 6),
    "sse-many-data-lines": lambda n: b"data: 1\n" * (n // 8),
    "ndjson-tiny-lines": lambda n: b"{}\n" * (n // 3),
    "usage-repeated": lambda n: _USAGE_EVENT * (n // len(_USAGE_EVENT)),
    "eventstream-tiny": lambda n: eventstream_message("metadata", b"{}") * (n // len(eventstream_message("metadata", b"{}"))),
}


@pytest.mark.parametrize("shape", list(ADVERSARIAL_BODIES))
def test_hostile_memory_bounded_per_parser(shape: str) -> None:
    body = ADVERSARIAL_BODIES[shape](MEMORY_BODY_SIZE)
    assert len(body) <= MEMORY_BODY_SIZE
    worst = 0
    for route in ROUTES:
        variants = [(False, "application/json"), (True, "text/event-stream")]
        if route.provider == detect.BEDROCK:
            variants.append((True, "application/vnd.amazon.eventstream"))
        for stream, content_type in variants:
            tracemalloc.start()
            try:
                parse(route, body, {"content-type": content_type}, stream)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            worst = max(worst, peak)
            assert peak < MEMORY_FACTOR * len(body) + MEMORY_BASE, (route, stream, peak)
    FIGURES.append(f"hostile memory: {shape} body of {len(body)} bytes, worst parser peak {worst / 2**20:.1f} MiB ({worst / len(body):.1f} bytes per body byte)")


# ---------------------------------------------------------------------------------
# Real captures, truncated, corrupted and with every event sent twice


def seed_captures() -> list[tuple[str, detect.Route, bool, dict[str, str], bytes]]:
    seeds = []
    for path in sorted(EXAMPLES.glob("*.har")):
        for capture in load_har(str(path)):
            request = capture.request
            route = detect.detect(request.service_host, request.upstream_uri) or detect.Route(detect.OPENAI_COMPATIBLE, "chat")
            stream = providers.read_request(request.upstream_uri, request.body, 1 << 20).stream
            headers = {k.lower(): v for k, v in capture.response.headers.items()}
            seeds.append((capture.source, route, stream, headers, capture.response.body))
    return seeds


SEEDS = seed_captures()


@settings(max_examples=400, deadline=None)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_hostile_truncated_and_corrupted_captures(seed: tuple[str, detect.Route, bool, dict[str, str], bytes], data: st.DataObject) -> None:
    _, route, stream, headers, body = seed
    plain_headers = {k: v for k, v in headers.items() if k != "content-encoding"}
    plain = wire.decode_content(body, headers.get("content-encoding"), 1 << 24)
    broken = data.draw(mutated(plain))
    usage = parse(route, broken, plain_headers, stream)
    check_recorded(usage)
    # The same broken body, compressed as the provider sent it, gives the same usage.
    if headers.get("content-encoding") == "gzip":
        assert parse(route, gzip.compress(broken), headers, stream) == usage


def duplicate_events(body: bytes, content_type: str) -> bytes | None:
    """Return the body with every SSE event or NDJSON line sent twice, or None for other framings."""
    if content_type.startswith("text/event-stream"):
        text = body.replace(b"\r\n", b"\n")
        events = [event for event in text.split(b"\n\n") if event.strip()]
        return b"".join(event + b"\n\n" + event + b"\n\n" for event in events)
    if content_type.startswith(("application/x-ndjson", "application/stream+json")):
        lines = [line for line in body.splitlines() if line.strip()]
        return b"".join(line + b"\n" + line + b"\n" for line in lines)
    return None


def streamed_seeds() -> list[tuple[str, detect.Route, bool, dict[str, str], bytes]]:
    found = []
    for source, route, stream, headers, body in SEEDS:
        plain = wire.decode_content(body, headers.get("content-encoding"), 1 << 24)
        if duplicate_events(plain, headers.get("content-type", "")) is not None:
            found.append((source, route, stream, {k: v for k, v in headers.items() if k != "content-encoding"}, plain))
    return found


@pytest.mark.parametrize("seed", streamed_seeds(), ids=lambda seed: seed[0])
def test_hostile_duplicated_events_count_once(seed: tuple[str, detect.Route, bool, dict[str, str], bytes]) -> None:
    _, route, stream, headers, body = seed
    doubled = duplicate_events(body, headers.get("content-type", ""))
    assert doubled is not None
    # Stream usage is a running total wherever it repeats: a repeated event is the same
    # total again, never more tokens.
    assert parse(route, doubled, headers, stream) == parse(route, body, headers, stream)


def test_hostile_seeds_include_every_streaming_framing() -> None:
    content_types = {seed[3].get("content-type", "").split(";")[0] for seed in SEEDS}
    assert {"application/json", "text/event-stream"} <= content_types
    assert len(streamed_seeds()) >= 3


# ---------------------------------------------------------------------------------
# The stream decoders


sse_alphabet = st.sampled_from([b"data:", b"data: ", b"event: x", b"id: 1", b":c", b"\n", b"\r", b"\r\n", b"{}", b"x", b"\xff", b"\xe2\x82", b" "])
sse_bodies = st.lists(sse_alphabet, max_size=60).map(b"".join)


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    positions = sorted({cut % (len(body) + 1) for cut in cuts})
    pieces, start = [], 0
    for position in positions:
        pieces.append(body[start:position])
        start = position
    pieces.append(body[start:])
    return pieces


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(sse_bodies, st.binary(max_size=512)), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_hostile_sse_decoder_any_split_same_events(body: bytes, cuts: list[int]) -> None:
    whole, whole_incomplete = wire.iter_sse(body)
    decoder = wire.SSEDecoder()
    events = []
    for piece in split_at(body, cuts):
        events += decoder.feed(piece)
    tail, incomplete = decoder.flush()
    assert events + tail == whole
    assert incomplete == whole_incomplete


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=1024))
def test_hostile_ndjson_and_json_raise_only_wire_error(body: bytes) -> None:
    try:
        list(wire.iter_ndjson(body))
    except wire.WireError as exc:
        assert exc.reason in UNKNOWN_REASONS
    try:
        wire.loads(body)
    except wire.WireError as exc:
        assert exc.reason in UNKNOWN_REASONS


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=1024), st.binary(max_size=512).map(gzip.compress), st.binary(max_size=512).map(brotli.compress), st.binary(max_size=512).map(zlib.compress)),
    encoding=st.sampled_from(["gzip", "deflate", "br", "gzip, deflate", "identity", "x-gzip", "compress", ""]),
    limit=st.integers(min_value=1, max_value=4096),
)
def test_hostile_decode_content_bounded(body: bytes, encoding: str, limit: int) -> None:
    try:
        decoded = wire.decode_content(body, encoding, limit)
    except wire.WireError as exc:
        assert exc.reason in ("decode_failed", "body_too_large")
        return
    assert len(decoded) <= limit


def eventstream_module() -> ModuleType | None:
    """Return the AWS event stream decoder module when the package has one."""
    for name in ("kong_ai_metrics.eventstream", "kong_ai_metrics.providers.eventstream"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    return None


EVENTSTREAM = eventstream_module()
STREAM_DECODERS = ["sse", "ndjson"] + (["eventstream"] if EVENTSTREAM is not None else [])


def test_hostile_stream_decoders_listed() -> None:
    # The figures line names the decoders under property tests, so a missing one shows in CI output.
    FIGURES.append(f"hostile: stream decoders under property tests: {', '.join(STREAM_DECODERS)}")
    assert STREAM_DECODERS[:2] == ["sse", "ndjson"]


eventstream_bodies = st.lists(
    st.tuples(st.sampled_from(["messageStart", "metadata", "chunk"]), st.binary(max_size=64)), max_size=6
).map(lambda messages: b"".join(eventstream_message(kind, payload) for kind, payload in messages))


if EVENTSTREAM is not None:
    # Defined only when the decoder exists, so that the suite runs against package
    # versions without one. The figures line above lists the decoders that were covered.

    @settings(max_examples=400, deadline=None)
    @given(
        body=st.one_of(eventstream_bodies, eventstream_bodies.flatmap(mutated), st.binary(max_size=512)),
        cuts=st.lists(st.integers(min_value=0), max_size=8),
    )
    def test_hostile_eventstream_decoder_any_split(body: bytes, cuts: list[int]) -> None:
        module: Any = EVENTSTREAM
        try:
            whole = module.decode_all(body)
        except module.EventStreamError:
            whole = None
        decoder = module.EventStreamDecoder()
        messages: list[Any] = []
        try:
            for piece in split_at(body, cuts):
                messages += decoder.feed(piece)
            pieces = (messages, decoder.flush())
        except module.EventStreamError:
            pieces = None
        # Corruption is found whatever the split; a clean body decodes to the same messages.
        assert (whole is None) == (pieces is None)
        if whole is not None:
            assert pieces == whole


# ---------------------------------------------------------------------------------
# Through the real process: the handler never fails and every request is counted


@pytest.fixture(scope="module", params=list(DISPATCHER_ARGS))
def hostile_server(plugin_info: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    servers = start_server(plugin_info, extra_args=DISPATCHER_ARGS[request.param])
    server = next(servers)
    worker = KongWorker(server.socket_path, plugin_info, {"ai_metrics": True, "buffer_streaming_responses": True}, read_timeout=10)
    yield server, worker
    worker.close()
    servers.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    upstream=st.sampled_from(SAMPLE_UPSTREAMS),
    body=hostile_bodies(),
    content_type=st.sampled_from(CONTENT_TYPES),
    encoding=st.sampled_from(ENCODINGS),
    request_body=st.one_of(documents.map(lambda doc: to_json(doc).encode()), st.binary(max_size=256)),
)
def test_hostile_payloads_through_real_process(
    hostile_server: tuple[PluginServer, KongWorker], upstream: tuple[str, str], body: bytes, content_type: str, encoding: str, request_body: bytes
) -> None:
    server, worker = hostile_server
    _, before = server.scrape()
    sent, content_encoding = encode(body, encoding)
    headers = {"content-type": content_type}
    if content_encoding:
        headers["content-encoding"] = content_encoding
    host, path = upstream
    request = KongRequest(method="POST", path=path, body=request_body, service_host=host)
    outcome = worker.exchange(request, UpstreamResponse(200, headers, sent))
    assert outcome.access.status == "ok", outcome.access.error
    assert outcome.log.status == "ok", outcome.log.error

    _, after = server.scrape()

    def total(samples: dict[Any, float], name: str) -> float:
        return sum(value for (sample, _), value in samples.items() if sample == name)

    assert total(after, "kong_ai_llm_requests_total") == total(before, "kong_ai_llm_requests_total") + 1
    assert total(after, "kong_ai_metrics_errors_total") == 0
    for (name, _), value in after.items():
        assert math.isfinite(value), name
        assert value >= 0, name
