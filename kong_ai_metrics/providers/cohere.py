"""Cohere bodies: v1 chat and generate, v2 chat, v1 and v2 embed, whole and streamed.

Cohere reports two sets of counts. ``billed_units`` is what Cohere charges. ``tokens``
(and the older ``token_count``) counts everything the model processed, Cohere's own
prompt template included: Cohere's documented example bills 17 input tokens of 215
processed. Only ``billed_units`` is read. Cohere gives no total, so the total is
prompt + completion, and responses name no model, so the model label comes from the
request.

Streams: v1 sends JSON lines (``application/stream+json``) with an ``event_type`` on
each, and the counts come only in ``stream-end`` under ``response.meta.billed_units``.
v2 sends server-sent events with hyphenated names, and the counts come only in
``message-end`` under ``delta.usage``, and a ``delta.error`` there means the
generation failed. Field names follow the types of Cohere's Python SDK
(https://github.com/cohere-ai/cohere-python, ``src/cohere/types``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import WireError, loads
from ._common import count_at, dig
from ._streams import stream_json

_EMBED_APIS = ("v1_embed", "v2_embed")

# v1 stream-end finish reason for a generation that failed on Cohere's side.
_V1_FAILED = "ERROR"


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a whole Cohere response or, when ``stream`` is set, its v1 or v2 stream."""
    if stream:
        return _parse_stream(body)
    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")

    # v2 chat keeps its counts in `usage`; v1 responses and both embed versions in `meta`.
    report = document.get("usage") if isinstance(document.get("usage"), dict) else document.get("meta")
    record = billed_usage(report, embed=route.api in _EMBED_APIS or "embeddings" in document)
    if not record.known and isinstance(document.get("message"), str):
        # Cohere's error body is {"id", "message"}, where a v2 chat reply has a message object.
        return u.unknown(u.REASON_UPSTREAM_ERROR)
    return record


def billed_usage(report: Any, embed: bool = False) -> u.Usage:
    """Read ``billed_units`` (and ``cached_tokens``) from a v1 ``meta`` or v2 ``usage`` object."""
    billed = dig(report, "billed_units")
    prompt = count_at(billed, "input_tokens")
    completion = count_at(billed, "output_tokens")
    if prompt is None and completion is None:
        return u.unknown(u.REASON_NO_USAGE)
    if embed and completion is None:
        completion = 0
    # NOTE: Cohere documents cached_tokens as "prompt tokens that hit the inference
    # cache" without saying whether billed input_tokens includes them.
    return u.finish(prompt, completion, cached=count_at(report, "cached_tokens"))


def _parse_stream(body: bytes) -> u.Usage:
    events, incomplete = stream_json(body)
    record: u.Usage | None = None
    failed = False

    for name, payload in events:
        if not isinstance(payload, dict):
            continue
        kind = payload.get("event_type") or payload.get("type") or name
        if kind == "stream-end":
            # v1 chat and generate: the consolidated response closes the stream.
            # NOTE: the SDK's type for generate's stream-end response lists no `meta`;
            # when Cohere omits it there, that stream counts as no_usage.
            record = billed_usage(dig(payload, "response", "meta"))
            failed = failed or payload.get("finish_reason") == _V1_FAILED
        elif kind == "message-end":
            delta = payload.get("delta")
            record = billed_usage(dig(delta, "usage"))
            failed = failed or bool(dig(delta, "error"))
        elif kind == "stream-error":
            # v1 generate reports a failed generation as its own event.
            failed = True

    if failed:
        reported = record if record is not None else u.unknown(u.REASON_STREAM_ERROR)
        return replace(reported, unknown_reason=u.REASON_STREAM_ERROR)
    if record is None:
        return u.unknown(u.REASON_TRUNCATED if events or incomplete else u.REASON_NO_USAGE)
    return record
