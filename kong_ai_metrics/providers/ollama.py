"""Ollama's native API: ``/api/chat``, ``/api/generate`` and ``/api/embed``, whole and streamed.

Chat and generate stream JSON lines (``application/x-ndjson``) unless the request sets
``"stream": false``. Counts come only on the final object, the one with
``"done": true``: ``prompt_eval_count`` (input) and ``eval_count`` (output); Ollama
gives no total. Its fields are omitted when empty, and older versions dropped
``prompt_eval_count`` when the whole prompt came from the KV cache, so a missing
prompt count means "not reported", never 0. The ``context`` array of
``/api/generate`` holds token ids, not a count. ``/api/embed`` reports
``prompt_eval_count`` only. Errors are ``{"error": "..."}``, also as a line inside a
200 stream.

Ollama's OpenAI-compatible ``/v1`` routes answer in OpenAI's shapes and go to the
OpenAI parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import WireError, loads
from . import openai
from ._common import count_at, text_at
from ._streams import is_json_lines, json_lines

_NATIVE_APIS = ("chat", "generate", "embeddings")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a native Ollama body; OpenAI-shaped bodies from ``/v1`` go to the OpenAI parser."""
    # With the provider override, /v1/chat/completions also has api "chat", so only the
    # body distinguishes the two: OpenAI streams are SSE, and OpenAI objects carry `object`.
    if route.api not in _NATIVE_APIS or (stream and not is_json_lines(body)):
        return openai.parse_response(route, body, stream, headers)
    if stream:
        return _parse_stream(body, embed=route.api == "embeddings")
    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")
    if "object" in document:
        return openai.parse_response(route, body, stream, headers)
    if document.get("error") is not None:
        return u.unknown(u.REASON_UPSTREAM_ERROR, text_at(document, "model"))
    return final_usage(document, embed=route.api == "embeddings")


def final_usage(document: dict[str, Any], embed: bool = False) -> u.Usage:
    """Read the counts of a final (``"done": true``) object or an ``/api/embed`` response."""
    model = text_at(document, "model")
    prompt = count_at(document, "prompt_eval_count")
    completion = 0 if embed else count_at(document, "eval_count")
    if prompt is None and not completion:
        # A load or unload response (`done_reason` "load") reports nothing at all.
        return u.unknown(u.REASON_NO_USAGE, model)
    record = u.finish(prompt, completion, response_model=model)
    if prompt is None:
        # Without the prompt count a total would be the completion alone.
        return replace(record, total_tokens=None)
    return record


def _parse_stream(body: bytes, embed: bool) -> u.Usage:
    lines, cut = json_lines(body)
    model: str | None = None
    record: u.Usage | None = None
    failed = False

    for line in lines:
        if not isinstance(line, dict):
            continue
        model = model or text_at(line, "model")
        if line.get("error") is not None:
            failed = True
        elif line.get("done") is True:
            record = final_usage(line, embed)

    if failed:
        reported = record if record is not None else u.unknown(u.REASON_STREAM_ERROR, model)
        return replace(reported, unknown_reason=u.REASON_STREAM_ERROR)
    if record is None:
        reason = u.REASON_TRUNCATED if lines or cut else u.REASON_NO_USAGE
        return u.unknown(reason, model)
    return record

