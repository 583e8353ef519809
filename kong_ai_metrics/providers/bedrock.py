"""Amazon Bedrock runtime bodies: Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream.

Converse reports ``usage.inputTokens`` without the tokens read from or written to the
prompt cache (``cacheReadInputTokens``, ``cacheWriteInputTokens``), while
``totalTokens`` includes them. The prompt is therefore the sum of the three input
fields, and the total is taken as reported. Field reference:
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html

InvokeModel bodies are in the model family's own format. Bedrock also reports its own
token counts for them, in the same form for every family. A whole response carries them
in the ``x-amzn-bedrock-input-token-count`` and ``x-amzn-bedrock-output-token-count``
headers, with cache reads and writes in ``x-amzn-bedrock-cache-read-input-token-count``
and ``x-amzn-bedrock-cache-write-input-token-count``. A stream carries them in the
``amazon-bedrock-invocationMetrics`` object of its last chunk. Like Converse, the input
count there excludes the cache.

Bedrock's counts win whenever they are present, because they are Bedrock's own meter,
mean the same for every model family, and exist for formats whose body reports no usage
(Mistral's text completions). The native body counts are the fallback for a response
without them. Only one source is read, because for Claude both report the same tokens.

Streams use the AWS event stream framing (``kong_ai_metrics.eventstream``). ConverseStream
reports usage only in its final ``metadata`` event. An exception message
(``:message-type`` = ``exception``) can replace the rest of a stream after the 200.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..eventstream import EventStreamError, Message, decode_all
from ..wire import WireError, loads
from . import anthropic, openai
from ._common import count_at, dig, text_at

_HEADER_INPUT = "x-amzn-bedrock-input-token-count"
_HEADER_OUTPUT = "x-amzn-bedrock-output-token-count"
_HEADER_CACHE_READ = "x-amzn-bedrock-cache-read-input-token-count"
_HEADER_CACHE_WRITE = "x-amzn-bedrock-cache-write-input-token-count"
_INVOCATION_METRICS = "amazon-bedrock-invocationMetrics"
_EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
_ANTHROPIC_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a whole JSON body or an event stream, recognised by content type and first byte."""
    start = body.lstrip()[:1]
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if start != b"{" and (content_type == _EVENT_STREAM_TYPE or route.stream):
        if route.api == "invoke":
            return _parse_invoke_stream(body)
        return _parse_converse_stream(body)
    if start in (b"d", b"e", b":"):
        # Bedrock's OpenAI-compatible chat endpoint streams OpenAI-shaped SSE.
        return openai.parse_response(route, body, True, headers)

    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")
    if route.api == "invoke":
        return _invoke_usage(document, headers)
    return _converse_usage(document)


def converse_usage(report: Any, model: str | None = None) -> u.Usage:
    """Read a Converse ``usage`` object (also the shape of Amazon Nova's native body)."""
    if not isinstance(report, dict):
        return u.unknown(u.REASON_NO_USAGE, model)
    uncached = count_at(report, "inputTokens")
    # Nova's native InvokeModel body spells the cache fields with a "Count" suffix.
    cache_read = _first_count(report, "cacheReadInputTokens", "cacheReadInputTokenCount")
    cache_write = _first_count(report, "cacheWriteInputTokens", "cacheWriteInputTokenCount")
    return u.finish(
        u.add_counts(uncached, cache_read, cache_write) if uncached is not None else None,
        count_at(report, "outputTokens"),
        count_at(report, "totalTokens"),
        cached=cache_read,
        cache_write=cache_write,
        response_model=model,
    )


def _converse_usage(document: dict[str, Any]) -> u.Usage:
    if "choices" in document:
        return openai.chat_usage(document.get("usage"), text_at(document, "model"))
    return converse_usage(document.get("usage"))


def _first_count(report: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if name in report:
            return count_at(report, name)
    return None


# ---------------------------------------------------------------------------------
# InvokeModel


def _invoke_usage(document: dict[str, Any], headers: Mapping[str, str]) -> u.Usage:
    model = text_at(document, "model")
    metered = _usage_from_headers(headers, model)
    if metered is not None:
        return metered
    return _native_usage(document, model)


def _usage_from_headers(headers: Mapping[str, str], model: str | None) -> u.Usage | None:
    """Read Bedrock's token count headers; None when the input count header is missing or invalid."""
    uncached = _header_count(headers, _HEADER_INPUT)
    if uncached is None:
        return None
    # NOTE: cache tokens that only the body reports (no cache headers) are not counted.
    # Whether Bedrock ever omits the cache headers for a model that caches is not verified.
    cache_read = _header_count(headers, _HEADER_CACHE_READ)
    cache_write = _header_count(headers, _HEADER_CACHE_WRITE)
    return u.finish(
        u.add_counts(uncached, cache_read, cache_write),
        _header_count(headers, _HEADER_OUTPUT),
        cached=cache_read,
        cache_write=cache_write,
        response_model=model,
    )


def _header_count(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "").strip()
    # Twenty digits exceed any valid count, and the bound keeps int() from rejecting
    # a huge digit string with its own error.
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return u.token_count(int(value))


def _native_usage(document: dict[str, Any], model: str | None) -> u.Usage:
    """Read the usage of a native InvokeModel body, whatever the model family."""
    report = document.get("usage")
    if isinstance(report, dict) and "input_tokens" in report:
        # Anthropic Messages.
        fields = {name: count_at(report, name) for name in _ANTHROPIC_FIELDS if name in report}
        return anthropic.usage_from_counts(fields, model)
    if isinstance(report, dict) and "inputTokens" in report:
        # Amazon Nova.
        return converse_usage(report, model)
    if isinstance(report, dict) and "prompt_tokens" in report:
        # OpenAI-shaped formats, such as OpenAI's gpt-oss models.
        return openai.chat_usage(report, model)
    if "prompt_token_count" in document or "generation_token_count" in document:
        # Meta Llama.
        return u.finish(
            count_at(document, "prompt_token_count"),
            count_at(document, "generation_token_count"),
            response_model=model,
        )
    if "inputTextTokenCount" in document:
        return _titan_usage(document, model)
    return u.unknown(u.REASON_NO_USAGE, model)


def _titan_usage(document: dict[str, Any], model: str | None) -> u.Usage:
    """Read Amazon Titan text (``results[].tokenCount``) and embeddings bodies."""
    prompt = count_at(document, "inputTextTokenCount")
    results = document.get("results")
    if not isinstance(results, list):
        # Titan embeddings produce no output tokens.
        return u.finish(prompt, 0, response_model=model)
    counts = [count_at(result, "tokenCount") for result in results]
    completion = None if any(count is None for count in counts) else sum(c for c in counts if c is not None)
    return u.finish(prompt, completion, response_model=model)


# ---------------------------------------------------------------------------------
# Streams


def _decode_stream(body: bytes) -> tuple[list[Message], bool, bool]:
    """Return the stream's messages, whether it ended mid-message, and whether a message was corrupt."""
    try:
        messages, leftover = decode_all(body)
    except EventStreamError as exc:
        return exc.messages, False, True
    return messages, leftover > 0, False


def _is_exception(message: Message) -> bool:
    return message.header_text(":message-type") in ("exception", "error")


def _json_payload(data: bytes) -> dict[str, Any] | None:
    try:
        document = loads(data)
    except WireError:
        return None
    return document if isinstance(document, dict) else None


def _stream_outcome(final: u.Usage | None, *, started: bool, cut_off: bool, corrupt: bool, failed: bool) -> u.Usage:
    if failed:
        return u.unknown(u.REASON_STREAM_ERROR)
    if final is not None:
        return final
    if corrupt:
        # A checksum failure is damage, not a stream that simply stopped early.
        return u.unknown(u.REASON_MALFORMED)
    if started or cut_off:
        return u.unknown(u.REASON_TRUNCATED)
    return u.unknown(u.REASON_NO_USAGE)


def _parse_converse_stream(body: bytes) -> u.Usage:
    messages, cut_off, corrupt = _decode_stream(body)
    final: u.Usage | None = None
    started = False
    failed = False

    for message in messages:
        if _is_exception(message):
            failed = True
            break
        started = True
        if message.header_text(":event-type") != "metadata":
            continue
        payload = _json_payload(message.payload)
        # The event's members are the payload; an SDK-style wrapper is accepted too.
        report = dig(payload, "usage") if dig(payload, "metadata") is None else dig(payload, "metadata", "usage")
        if isinstance(report, dict):
            final = converse_usage(report)

    return _stream_outcome(final, started=started, cut_off=cut_off, corrupt=corrupt, failed=failed)


def _parse_invoke_stream(body: bytes) -> u.Usage:
    messages, cut_off, corrupt = _decode_stream(body)
    metered: u.Usage | None = None
    native: dict[str, int | None] = {}
    native_final = False
    model: str | None = None
    started = False
    failed = False

    for message in messages:
        if _is_exception(message):
            failed = True
            break
        started = True
        event = _chunk_event(message)
        if event is None:
            continue
        kind = event.get("type")
        if kind == "message_start":
            model = text_at(event, "message", "model") or model
            _update_counts(native, dig(event, "message", "usage"), keep_missing=True)
        elif kind == "message_delta":
            # Running totals, as on Anthropic's own API: overwrite, never add.
            _update_counts(native, event.get("usage"), keep_missing=False)
            native_final = True
        elif kind == "error":
            failed = True
        metrics = event.get(_INVOCATION_METRICS)
        if isinstance(metrics, dict):
            metered = _usage_from_metrics(metrics) or metered

    final = replace(metered, response_model=model) if metered is not None else None
    if final is None and native_final:
        final = anthropic.usage_from_counts(native, model)
    return _stream_outcome(final, started=started, cut_off=cut_off, corrupt=corrupt, failed=failed)


def _chunk_event(message: Message) -> dict[str, Any] | None:
    """Return the native model event carried base64-encoded in a ``chunk`` message."""
    if message.header_text(":event-type") != "chunk":
        return None
    encoded = dig(_json_payload(message.payload), "bytes")
    if not isinstance(encoded, str):
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _json_payload(raw)


def _update_counts(counts: dict[str, int | None], report: Any, *, keep_missing: bool) -> None:
    if not isinstance(report, dict):
        return
    for name in _ANTHROPIC_FIELDS:
        if name in report:
            value = count_at(report, name)
            if value is not None or keep_missing:
                counts[name] = value


def _usage_from_metrics(metrics: dict[str, Any]) -> u.Usage | None:
    """Read ``amazon-bedrock-invocationMetrics``; its input count excludes the cache, like Converse."""
    uncached = count_at(metrics, "inputTokenCount")
    if uncached is None:
        return None
    cache_read = count_at(metrics, "cacheReadInputTokenCount")
    cache_write = count_at(metrics, "cacheWriteInputTokenCount")
    return u.finish(
        u.add_counts(uncached, cache_read, cache_write),
        count_at(metrics, "outputTokenCount"),
        cached=cache_read,
        cache_write=cache_write,
    )
