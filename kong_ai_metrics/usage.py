"""The normalised usage record that every provider parser returns.

The meaning is the same for every provider, so that OpenAI, Anthropic, Gemini and the
rest can share one set of counters:

* ``prompt_tokens`` counts every input token processed, cache reads and cache writes
  included (Anthropic and Bedrock report those apart, so their parsers add them).
* ``completion_tokens`` counts every output token billed, reasoning included.
* ``total_tokens`` is the provider's own total when it reports one, otherwise
  ``prompt_tokens + completion_tokens``.
* ``cached_tokens``, ``cache_write_tokens`` and ``reasoning_tokens`` are subsets of the
  counts above and stay ``None`` when the provider does not report them.

A parser never estimates. When no final usage report was seen, ``unknown_reason`` gives
the reason and the counts hold only what the provider did report, if anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# Reasons for unknown usage. They become the `reason` label of the unknown-usage
# counter, so the set is closed and every value is documented in the README.
REASON_NO_USAGE = "no_usage"
REASON_MALFORMED = "malformed_body"
REASON_TRUNCATED = "truncated_stream"
REASON_STREAM_ERROR = "stream_error"
REASON_UPSTREAM_ERROR = "upstream_error"
REASON_EMPTY_BODY = "empty_body"
REASON_NOT_BUFFERED = "body_not_buffered"
REASON_TOO_LARGE = "body_too_large"
REASON_DECODE_FAILED = "decode_failed"
REASON_UNSUPPORTED = "unsupported_format"
REASON_INTERNAL = "internal_error"

UNKNOWN_REASONS = (
    REASON_NO_USAGE,
    REASON_MALFORMED,
    REASON_TRUNCATED,
    REASON_STREAM_ERROR,
    REASON_UPSTREAM_ERROR,
    REASON_EMPTY_BODY,
    REASON_NOT_BUFFERED,
    REASON_TOO_LARGE,
    REASON_DECODE_FAILED,
    REASON_UNSUPPORTED,
    REASON_INTERNAL,
)

# Counts above this are treated as garbage. No provider reports anywhere near 2**53
# tokens for one request, and larger values lose precision as float64 in Prometheus.
MAX_TOKEN_COUNT = 2**53


@dataclass(frozen=True)
class Usage:
    """Token usage of one exchange, normalised as described in the module docstring."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    response_model: str | None = None
    unknown_reason: str | None = None

    @property
    def known(self) -> bool:
        return self.unknown_reason is None

    def with_reason(self, reason: str) -> Usage:
        return replace(self, unknown_reason=reason)


def unknown(reason: str, response_model: str | None = None) -> Usage:
    """Return a usage record with no counts, marked unknown for ``reason``."""
    return Usage(unknown_reason=reason, response_model=response_model)


def token_count(value: object) -> int | None:
    """Return ``value`` as a token count, or None when it is not a plausible count.

    JSON numbers arrive as int or float; a float with no fractional part is accepted
    because some servers write ``12.0``. Booleans, negatives, NaN, infinities,
    fractions and absurdly large values are rejected.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKEN_COUNT else None
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or value > MAX_TOKEN_COUNT:
            return None
        if value != int(value):
            return None
        return int(value)
    return None


def add_counts(*values: int | None) -> int | None:
    """Add the counts that are known; return None only when none of them is."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return sum(known)


def finish(
    prompt: int | None,
    completion: int | None,
    total: int | None = None,
    *,
    cached: int | None = None,
    cache_write: int | None = None,
    reasoning: int | None = None,
    response_model: str | None = None,
) -> Usage:
    """Build a known usage record, deriving the total when the provider gave none.

    A record with neither prompt nor completion counts is not a usage report at all,
    so it comes back unknown with reason ``no_usage``.
    """
    if prompt is None and completion is None and total is None:
        return unknown(REASON_NO_USAGE, response_model)
    if total is None:
        total = add_counts(prompt, completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        response_model=response_model,
    )
