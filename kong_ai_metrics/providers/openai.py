"""OpenAI-shaped bodies: chat completions, legacy completions, embeddings and the Responses API.

Also serves Azure OpenAI and OpenAI-compatible servers (vLLM, llama.cpp, OpenRouter,
Mistral), which share the same field names. ``prompt_tokens`` already includes cached
tokens and ``completion_tokens`` already includes reasoning tokens, so the numbers are
taken as reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import WireError, iter_sse, loads
from ._common import count_at, dig, text_at


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a whole JSON body or, when ``stream`` is set, an SSE body."""
    if stream:
        return _parse_stream(route, body)
    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")
    model = text_at(document, "model")
    if "error" in document and document.get("error") is not None:
        return u.unknown(u.REASON_UPSTREAM_ERROR, model)
    report = document.get("usage")
    if route.api == "responses" or (isinstance(report, dict) and "input_tokens" in report):
        return _responses_usage(document.get("usage"), model)
    return chat_usage(document.get("usage"), model)


def chat_usage(report: Any, model: str | None) -> u.Usage:
    """Read a chat, completions or embeddings ``usage`` object."""
    if not isinstance(report, dict):
        return u.unknown(u.REASON_NO_USAGE, model)
    cached = count_at(report, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        # DeepSeek splits the prompt into prompt_cache_hit_tokens + prompt_cache_miss_tokens.
        cached = count_at(report, "prompt_cache_hit_tokens")
    return u.finish(
        count_at(report, "prompt_tokens"),
        # Embeddings report no completion; they produced none.
        count_at(report, "completion_tokens") if "completion_tokens" in report else 0,
        count_at(report, "total_tokens"),
        cached=cached,
        reasoning=count_at(report, "completion_tokens_details", "reasoning_tokens"),
        response_model=model,
    )


def _responses_usage(report: Any, model: str | None) -> u.Usage:
    if not isinstance(report, dict):
        return u.unknown(u.REASON_NO_USAGE, model)
    return u.finish(
        count_at(report, "input_tokens"),
        count_at(report, "output_tokens"),
        count_at(report, "total_tokens"),
        cached=count_at(report, "input_tokens_details", "cached_tokens"),
        reasoning=count_at(report, "output_tokens_details", "reasoning_tokens"),
        response_model=model,
    )


def _parse_stream(route: Route, body: bytes) -> u.Usage:
    events, incomplete = iter_sse(body)
    model: str | None = None
    last_usage: u.Usage | None = None
    usage_chunks = 0
    last_usage_final = False
    done = False
    failed = False

    for event in events:
        if event.data.strip() == "[DONE]":
            done = True
            continue
        try:
            chunk = loads(event.data)
        except WireError:
            continue
        if not isinstance(chunk, dict):
            continue
        kind = chunk.get("type")
        if isinstance(kind, str) and kind.startswith("response.") or kind == "error":
            outcome = _responses_event(kind, chunk)
            if outcome is not None:
                model = model or text_at(chunk, "response", "model")
                if kind in ("response.failed", "error"):
                    failed = True
                if outcome.known or last_usage is None:
                    last_usage = outcome
                done = done or kind != "error"
            continue
        if chunk.get("error") is not None and "choices" not in chunk:
            failed = True
            continue
        # Azure sends annotation frames with an empty model; keep the first real name.
        model = model or text_at(chunk, "model")
        report = chunk.get("usage")
        if not isinstance(report, dict):
            # Groq streams put the final usage under x_groq instead.
            report = dig(chunk, "x_groq", "usage")
        if isinstance(report, dict):
            # Servers that repeat usage on every chunk send running totals: keep the last.
            last_usage = chat_usage(report, model)
            usage_chunks += 1
            last_usage_final = _is_closing_chunk(chunk)

    if failed:
        kept = last_usage if last_usage is not None else u.unknown(u.REASON_STREAM_ERROR, model)
        return kept.with_reason(u.REASON_STREAM_ERROR)
    if last_usage is not None and last_usage.known:
        # Usage sent once is the final report. Usage repeated on every chunk (vLLM's
        # continuous_usage_stats) is final only on a closing chunk or before [DONE].
        if usage_chunks > 1 and not last_usage_final and not done:
            return _with_model(last_usage, model).with_reason(u.REASON_TRUNCATED)
        return _with_model(last_usage, model)
    if not done or incomplete:
        return u.unknown(u.REASON_TRUNCATED, model)
    return u.unknown(u.REASON_NO_USAGE, model)


def _responses_event(kind: str, chunk: dict[str, Any]) -> u.Usage | None:
    """Read usage from the terminal events of a Responses API stream."""
    if kind == "error":
        return u.unknown(u.REASON_STREAM_ERROR)
    if kind not in ("response.completed", "response.incomplete", "response.failed"):
        return None
    response = chunk.get("response")
    model = text_at(response, "model")
    return _responses_usage(dig(response, "usage"), model)


def _is_closing_chunk(chunk: dict[str, Any]) -> bool:
    """Return True for the usage chunk (empty ``choices``) or a chunk that finishes a choice."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return True
    return any(isinstance(choice, dict) and choice.get("finish_reason") is not None for choice in choices)


def _with_model(record: u.Usage, model: str | None) -> u.Usage:
    if record.response_model or not model:
        return record
    return replace(record, response_model=model)
