"""Provider parsers: request facts in the access phase, usage from the response in the log phase.

Everything here is pure: bytes and plain values in, a small record out, no PDK and no
metrics. Each provider family has its own module with a
``parse_response(route, body, stream, headers) -> Usage`` function: ``body`` has already
had its ``Content-Encoding`` removed, and ``headers`` are the response headers with
lower-case names (some providers report counts there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import detect
from .. import usage as u
from ..detect import Route
from ..wire import WireError, decode_content, loads
from . import anthropic, bedrock, gemini, openai
from . import cohere, huggingface, llamacpp, ollama

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
    """What the access phase learns from the request body."""

    model: str | None = None
    stream: bool = False


def read_request(path: str, body: bytes, limit: int) -> RequestFacts:
    """Take the model and stream flag from a request body and its upstream path.

    A body that is not a JSON object (or is larger than ``limit``) yields no model;
    the stream flag then comes from the path alone.
    """
    path_stream = detect.url_stream(path)
    model: str | None = None
    body_stream: object = None
    if body and len(body) <= limit:
        try:
            document = loads(body)
        except WireError:
            document = None
        if isinstance(document, dict):
            candidate = document.get("model")
            if isinstance(candidate, str) and candidate:
                model = candidate
            body_stream = document.get("stream")
    if path_stream is not None:
        return RequestFacts(model, path_stream)
    if isinstance(body_stream, bool):
        return RequestFacts(model, body_stream)
    # Ollama's native chat and generate endpoints stream unless the request sets "stream": false.
    ollama = detect._OLLAMA_PATH.search(path.split("?", 1)[0])
    if ollama and ollama.group("op") in ("chat", "generate"):
        return RequestFacts(model, True)
    return RequestFacts(model, False)


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
    stream = stream or is_stream_content_type(headers.get("content-type"))
    try:
        decoded = decode_content(body, headers.get("content-encoding"), limit)
        return parser(route, decoded, stream, headers)
    except WireError as exc:
        return u.unknown(exc.reason)
