"""llama.cpp's ``llama-server``: the native ``/completion`` route and its OpenAI-compatible ones.

The native answer counts the prompt in ``tokens_evaluated`` and the output in
``tokens_predicted``. Its ``timings`` object looks like usage and is not:
``timings.prompt_n`` counts only the prompt tokens evaluated after the KV-cache reuse
(``timings.cache_n`` are the reused ones), so it is read only for the cached count.
Streamed, every SSE chunk repeats the running ``tokens_predicted`` and
``tokens_evaluated``, and the last one has ``"stop": true``.

The OpenAI-compatible routes respond in OpenAI's shapes plus ``timings``, with a usage
chunk at the end of a stream (older builds put usage on the finish chunk instead), so
they go to the OpenAI parser. Source: ``tools/server`` of
https://github.com/ggml-org/llama.cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import loads
from . import openai
from ._common import count_at, text_at
from ._streams import sse_json

_NATIVE_APIS = ("completion", "embedding")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a native ``/completion`` or ``/embedding`` body, or an OpenAI-shaped one."""
    if route.api not in _NATIVE_APIS and not _is_native(body):
        return openai.parse_response(route, body, stream, headers)
    if stream:
        return _parse_stream(body)
    document = loads(body)
    # A prompt given as a list gets one result per prompt, each with its own counts.
    results = [r for r in (document if isinstance(document, list) else [document]) if isinstance(r, dict)]
    if any(result.get("error") is not None for result in results):
        return u.unknown(u.REASON_UPSTREAM_ERROR)
    records = [native_usage(result) for result in results]
    if not records or not all(record.known for record in records):
        # /embedding responses carry no counts at all.
        return u.unknown(u.REASON_NO_USAGE)
    return _sum(records)


def native_usage(result: dict[str, Any]) -> u.Usage:
    """Read ``tokens_evaluated``, ``tokens_predicted`` and ``timings.cache_n`` of one result."""
    model = text_at(result, "model")
    prompt = count_at(result, "tokens_evaluated")
    completion = count_at(result, "tokens_predicted")
    if prompt is None and completion is None:
        return u.unknown(u.REASON_NO_USAGE, model)
    return u.finish(prompt, completion, cached=count_at(result, "timings", "cache_n"), response_model=model)


def _parse_stream(body: bytes) -> u.Usage:
    events, _ = sse_json(body)
    model: str | None = None
    last: u.Usage | None = None
    stopped = False
    failed = False

    for _, chunk in events:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error") is not None:
            failed = True
            continue
        model = text_at(chunk, "model") or model
        record = native_usage(chunk)
        if record.known:
            # Running totals on every chunk: the last one wins, never a sum.
            last = record
        stopped = stopped or chunk.get("stop") is True

    if last is not None:
        last = replace(last, response_model=model)
    if failed:
        reported = last if last is not None else u.unknown(u.REASON_STREAM_ERROR, model)
        return replace(reported, unknown_reason=u.REASON_STREAM_ERROR)
    if last is None:
        return u.unknown(u.REASON_TRUNCATED if events else u.REASON_NO_USAGE, model)
    if not stopped:
        return replace(last, unknown_reason=u.REASON_TRUNCATED)
    return last

def _is_native(body: bytes) -> bool:
    # llama-server also serves the native response on /completions, which detect names
    # like the OpenAI route. A native body has `tokens_predicted` and never `choices`.
    return b'"tokens_predicted"' in body and b'"choices"' not in body


def _sum(records: list[u.Usage]) -> u.Usage:
    if len(records) == 1:
        return records[0]
    return u.finish(
        u.add_counts(*(r.prompt_tokens for r in records)),
        u.add_counts(*(r.completion_tokens for r in records)),
        cached=u.add_counts(*(r.cached_tokens for r in records)),
        response_model=records[0].response_model,
    )
