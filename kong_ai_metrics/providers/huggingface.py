"""Hugging Face bodies: Text Generation Inference (TGI) native routes and OpenAI-shaped chat.

TGI's ``/generate`` body reports only the generated count, and only when the request
set ``parameters.details``. The prompt count comes in the ``x-prompt-tokens`` response
header, next to ``x-generated-tokens``. TGI always sends both headers, so they win over
the body. ``/generate_stream`` sends SSE written as ``data:{...}`` with no space after the
colon; with ``details`` set, its last event carries ``details.generated_tokens`` and
``details.input_length`` (``prompt_tokens`` in some older versions), and no header
carries counts because TGI sends the headers before generating. Errors are
``{"error", "error_type"}``, also as an SSE event inside a 200 stream. Serverless task
routes (classification, embeddings, images) report no usage at all.

Source: ``router/src/server.rs`` and ``router/src/lib.rs`` of
https://github.com/huggingface/text-generation-inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import loads
from . import openai
from ._common import count_at
from ._streams import is_json_lines, sse_json

_PROMPT_HEADER = "x-prompt-tokens"
_GENERATED_HEADER = "x-generated-tokens"
# Media types of serverless task responses that are not JSON (text-to-image, text-to-speech).
_BINARY_MEDIA_PREFIXES = ("image/", "audio/", "video/", "application/octet-stream")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a TGI ``/generate`` or ``/generate_stream`` body, or an OpenAI-shaped one."""
    if route.api != "tgi_generate":
        return openai.parse_response(route, body, stream, headers)
    content_type = headers.get("content-type", "").lower()
    if content_type.startswith(_BINARY_MEDIA_PREFIXES):
        return u.unknown(u.REASON_NO_USAGE)
    if stream and not is_json_lines(body):
        return _parse_stream(body, headers)
    return _parse_generate(loads(body), headers)


def header_count(headers: Mapping[str, str], name: str) -> int | None:
    """Return the token count in header ``name``, or None when it is absent or not a count."""
    value = headers.get(name, "").strip()
    # isdigit() alone accepts digits such as "²" that int() rejects; 20 digits exceed any count.
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        return None
    return u.token_count(int(value))


def _parse_generate(document: Any, headers: Mapping[str, str]) -> u.Usage:
    # The `/` route and the serverless API wrap one generation in a list.
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if isinstance(document, dict) and document.get("error") is not None:
        return u.unknown(u.REASON_UPSTREAM_ERROR)

    prompt = header_count(headers, _PROMPT_HEADER)
    completion = header_count(headers, _GENERATED_HEADER)
    if completion is None:
        completion = count_at(document, "details", "generated_tokens")
    return _counts(prompt, completion)


def _parse_stream(body: bytes, headers: Mapping[str, str]) -> u.Usage:
    events, _ = sse_json(body)
    prompt = header_count(headers, _PROMPT_HEADER)
    completion = header_count(headers, _GENERATED_HEADER)
    finished = False
    failed = False

    for _, payload in events:
        if not isinstance(payload, dict):
            continue
        if payload.get("error") is not None:
            failed = True
            continue
        details = payload.get("details")
        if isinstance(details, dict):
            completion = count_at(details, "generated_tokens")
            reported_prompt = count_at(details, "input_length")
            if reported_prompt is None:
                reported_prompt = count_at(details, "prompt_tokens")
            prompt = reported_prompt if reported_prompt is not None else prompt
        # Only the last event carries the whole text, so it marks a finished generation.
        if payload.get("generated_text") is not None:
            finished = True

    record = _counts(prompt, completion)
    if failed:
        return replace(record, unknown_reason=u.REASON_STREAM_ERROR)
    if not finished:
        return replace(record, unknown_reason=u.REASON_TRUNCATED)
    return record


def _counts(prompt: int | None, completion: int | None) -> u.Usage:
    if completion is None and prompt is None:
        return u.unknown(u.REASON_NO_USAGE)
    record = u.finish(prompt, completion)
    if prompt is None or completion is None:
        # A total needs both counts, because the one reported alone would undercount.
        return replace(record, total_tokens=None)
    return record
