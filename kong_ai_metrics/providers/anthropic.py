"""Anthropic Messages API bodies, whole and streamed.

Anthropic reports ``input_tokens`` without the tokens read from or written to the
prompt cache, so the prompt count is the sum of the three input fields. Stream usage
is cumulative: ``message_start`` carries the input counts and a placeholder
``output_tokens``, and each ``message_delta`` carries running totals that replace the
earlier values field by field. Adding them would count the placeholder twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import WireError, iter_sse, loads
from ._common import count_at, dig, text_at

_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a whole Messages response or, when ``stream`` is set, its SSE stream."""
    if stream:
        return _parse_stream(body)
    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")
    model = text_at(document, "model")
    if document.get("type") == "error":
        return u.unknown(u.REASON_UPSTREAM_ERROR, model)
    report = document.get("usage")
    if not isinstance(report, dict):
        return u.unknown(u.REASON_NO_USAGE, model)
    return usage_from_counts(_read_fields(report), model)


def usage_from_counts(counts: dict[str, int | None], model: str | None) -> u.Usage:
    """Build the normalised record from Anthropic's four usage fields."""
    uncached = counts.get("input_tokens")
    cache_write = counts.get("cache_creation_input_tokens")
    cache_read = counts.get("cache_read_input_tokens")
    return u.finish(
        u.add_counts(uncached, cache_write, cache_read) if uncached is not None else None,
        counts.get("output_tokens"),
        cached=cache_read,
        cache_write=cache_write,
        response_model=model,
    )


def _read_fields(report: dict[str, Any]) -> dict[str, int | None]:
    return {name: count_at(report, name) for name in _USAGE_FIELDS if name in report}


def _parse_stream(body: bytes) -> u.Usage:
    events, _ = iter_sse(body)
    counts: dict[str, int | None] = {}
    model: str | None = None
    started = False
    final_seen = False
    failed = False

    for event in events:
        try:
            payload = loads(event.data)
        except WireError:
            continue
        kind = event.event or (payload.get("type") if isinstance(payload, dict) else None)
        if kind == "message_start":
            started = True
            model = text_at(payload, "message", "model") or model
            report = dig(payload, "message", "usage")
            if isinstance(report, dict):
                counts.update(_read_fields(report))
        elif kind == "message_delta":
            report = dig(payload, "usage")
            if isinstance(report, dict):
                # Running totals: overwrite, never add.
                counts.update({k: v for k, v in _read_fields(report).items() if v is not None})
                final_seen = True
        elif kind == "error":
            failed = True

    if not final_seen:
        # message_start's output count is a placeholder; only the input side is real.
        counts.pop("output_tokens", None)
    record = usage_from_counts(counts, model)
    if failed:
        return replace(record, total_tokens=None, unknown_reason=u.REASON_STREAM_ERROR)
    if not final_seen:
        reason = u.REASON_TRUNCATED if started else u.REASON_NO_USAGE
        return replace(record, total_tokens=None, unknown_reason=reason)
    return record
