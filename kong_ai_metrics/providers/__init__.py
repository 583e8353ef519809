"""Provider parsers: request facts in the access phase, usage from the response in the log phase.

Everything here is pure: bytes and plain values in, a small record out, no PDK and no
metrics. Each provider family has its own module with a
``parse_response(route, body, stream, headers) -> Usage`` function: ``body`` has already
had its ``Content-Encoding`` removed, and ``headers`` are the response headers with
lower-case names (some providers report counts there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import detect
from .. import usage as u
from ..detect import Route
from ..wire import WireError, decode_content, loads
from . import anthropic, bedrock, gemini, openai
from . import cohere, huggingface, llamacpp, ollama

log = logging.getLogger("kong_ai_metrics.providers")

ResponseParser = Callable[[Route, bytes, bool, Mapping[str, str]], u.Usage]

# Provider label value -> parser of its response bodies.
PARSERS: dict[str, ResponseParser] = {
    detect.OPENAI: openai.parse_response,
    detect.AZURE: openai.parse_response,
    detect.OPENAI_COMPATIBLE: openai.parse_response,
    detect.MISTRAL: openai.parse_response,
    detect.ANTHROPIC: anthropic.parse_response,
    detect.GEMINI: gemini.parse_response,
    detect.BEDROCK: bedrock.parse_response,
    detect.COHERE: cohere.parse_response,
    detect.HUGGINGFACE: huggingface.parse_response,
    detect.OLLAMA: ollama.parse_response,
    detect.LLAMA_CPP: llamacpp.parse_response,
}

# Streaming response content types (Kong lists the same in its shared LLM driver).
_STREAM_CONTENT_TYPES = (
    "text/event-stream",
    "application/x-ndjson",
    "application/stream+json",
    "application/vnd.amazon.eventstream",
)


@dataclass(frozen=True)
class RequestFacts:
    """Model and stream flag of a request, from its body and upstream path."""

    model: str | None = None
    stream: bool = False


@dataclass(frozen=True)
class RequestBody:
    """Model and ``stream`` flag as a request body states them, None when absent."""

    model: str | None = None
    stream: bool | None = None
    # False for an empty, multipart or otherwise non-JSON body, which no parser's API takes.
    json_object: bool = False


def read_request(path: str, body: bytes, limit: int) -> RequestFacts:
    """Take the model and stream flag from a request body and its upstream path.

    A body that is not a JSON object (or is larger than ``limit``) yields no model;
    the stream flag then comes from the path alone.
    """
    stated = read_request_body(body, limit)
    return RequestFacts(stated.model, stream_mode(path, stated.stream))


def read_request_body(body: bytes, limit: int) -> RequestBody:
    """Return the model and stream flag that a request body states.

    A JSON object states them in ``model`` and ``stream``, but OpenAI's speech API
    requests a stream with ``"stream_format": "sse"`` instead. A multipart form (OpenAI's
    transcription API) states only the stream flag, in a ``stream`` field.
    """
    if not body or len(body) > limit:
        return RequestBody()
    try:
        document = loads(body)
    except WireError:
        field = _MULTIPART_STREAM_FIELD.search(body) if body.startswith(b"--") else None
        return RequestBody(stream=field.group(1).lower() == b"true" if field else None)
    if not isinstance(document, dict):
        return RequestBody()
    model = document.get("model")
    stream = document.get("stream")
    if stream is None and document.get("stream_format") == "sse":
        stream = True
    return RequestBody(
        model if isinstance(model, str) and model else None,
        stream if isinstance(stream, bool) else None,
        json_object=True,
    )


# A form field named "stream": its part's headers, a blank line, then the value.
_MULTIPART_STREAM_FIELD = re.compile(
    rb'\nContent-Disposition:[ \t]*form-data;[ \t]*name="stream"[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n(true|false)\r?\n',
    re.IGNORECASE,
)


def stream_mode(path: str, body_stream: bool | None) -> bool:
    """Decide whether a request streams: by its path where the path decides, else by the body's flag, else by the API's default."""
    path_stream = detect.url_stream(path)
    if path_stream is not None:
        return path_stream
    if body_stream is not None:
        return body_stream
    return detect.streams_by_default(path)


def is_stream_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in _STREAM_CONTENT_TYPES


def parse_response(
    route: Route,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    stream: bool,
    limit: int,
) -> u.Usage:
    """Return the usage of one upstream response; never raises for bad input.

    ``headers`` must have lower-case names. ``stream`` is the request's stream flag;
    a streaming content type on the response also counts as a stream.
    """
    if status >= 400:
        return u.unknown(u.REASON_UPSTREAM_ERROR)
    if not body:
        return u.unknown(u.REASON_EMPTY_BODY)
    parser = PARSERS.get(route.provider)
    if parser is None:
        return u.unknown(u.REASON_UNSUPPORTED)
    content_type = headers.get("content-type")
    stream = stream or is_stream_content_type(content_type)
    try:
        decoded = decode_content(body, headers.get("content-encoding"), limit)
        if not decoded:
            # A compressed empty body is as empty as an empty one.
            return u.unknown(u.REASON_EMPTY_BODY)
        if stream and _is_whole_json(content_type, decoded) and route.provider not in _OWN_STREAM_DETECTION:
            # A server that ignored the request's stream flag sent one JSON document.
            stream = False
        return parser(route, decoded, stream, headers)
    except WireError as exc:
        return u.unknown(exc.reason)
    except Exception:  # noqa: BLE001 - intentional: a parser bug must not escape into a phase handler
        log.exception("parser for %s failed on a %d-byte body; usage counted as unknown", route.provider, len(body))
        return u.unknown(u.REASON_INTERNAL)


# Parsers that tell a stream from a whole body by its bytes: Gemini streams JSON arrays
# as application/json, and Bedrock's event stream is binary.
_OWN_STREAM_DETECTION = frozenset({detect.GEMINI, detect.BEDROCK})


def _is_whole_json(content_type: str | None, body: bytes) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" and body.lstrip()[:1] == b"{"
