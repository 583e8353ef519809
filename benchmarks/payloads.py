"""Realistic payloads for the benchmarks: request and answer bodies of typical LLM traffic.

Sizes: a 2 KB chat prompt, a 3 KB whole answer, a 200 KB streamed answer (about 1,100
OpenAI chunks). Provider examples from ``examples/*.har`` are grown to the same sizes by
repeating what grows in real traffic: the longest text of a whole answer, and the
content events in the middle of a stream.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli

from kong_ai_metrics import detect, providers
from kong_ai_metrics.replay import Capture, load_har

from .kong_load import Scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PROMPT_BYTES = 2 * 1024
ANSWER_BYTES = 3 * 1024
STREAM_BYTES = 200 * 1024

_WORDS = (
    "The gateway forwards each request to the provider and records the usage it reports. "
    "Latency, cost and token counts are exported per model so that teams can compare them. "
)


def _text(size: int) -> str:
    return (_WORDS * (size // len(_WORDS) + 1))[:size]


def chat_request(stream: bool | None) -> bytes:
    """Return an OpenAI chat request of about 2 KB; ``stream=None`` leaves the field out, as the SDKs do."""
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise assistant for an internal engineering team."},
            {"role": "user", "content": ""},
        ],
        "temperature": 0.2,
        "max_tokens": 800,
    }
    if stream is not None:
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
    overhead = len(json.dumps(body))
    body["messages"][1]["content"] = _text(PROMPT_BYTES - overhead)
    return json.dumps(body).encode()


def chat_answer() -> bytes:
    """Return a whole OpenAI chat completion of about 3 KB with its usage."""
    body: dict[str, Any] = {
        "id": "chatcmpl-AxB3c9kLmN0pQrStUvWxYz12",
        "object": "chat.completion",
        "created": 1733300000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 512,
            "completion_tokens": 690,
            "total_tokens": 1202,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "system_fingerprint": "fp_0ba0d124f1",
    }
    overhead = len(json.dumps(body))
    body["choices"][0]["message"]["content"] = _text(ANSWER_BYTES - overhead)
    return json.dumps(body).encode()


def chat_stream(size: int = STREAM_BYTES) -> bytes:
    """Return an OpenAI chat completion stream of about ``size`` bytes, ending in its usage chunk."""
    frames = []
    head = {"id": "chatcmpl-AxB3c9kLmN0pQrStUvWxYz12", "object": "chat.completion.chunk", "created": 1733300000, "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"}
    frames.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": None}], "usage": None})
    words = _WORDS.split(" ")
    total = 0
    index = 0
    while total < size - 800:
        chunk = {**head, "choices": [{"index": 0, "delta": {"content": words[index % len(words)] + " "}, "logprobs": None, "finish_reason": None}], "usage": None}
        frames.append(chunk)
        total += len(json.dumps(chunk, separators=(",", ":"))) + 8
        index += 1
    frames.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None})
    frames.append({**head, "choices": [], "usage": {"prompt_tokens": 512, "completion_tokens": index, "total_tokens": 512 + index, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}})
    lines = [b"data: " + json.dumps(frame, separators=(",", ":")).encode() + b"\n\n" for frame in frames]
    return b"".join(lines) + b"data: [DONE]\n\n"


def whole_scenario(stream_field: bool | None = None) -> Scenario:
    return Scenario(
        name="whole",
        upstream_uri="/v1/chat/completions",
        request_body=chat_request(stream_field),
        response_status=200,
        response_headers={"content-type": "application/json", "openai-processing-ms": "804"},
        response_body=chat_answer(),
    )


def stream_scenario() -> Scenario:
    return Scenario(
        name="stream",
        upstream_uri="/v1/chat/completions",
        request_body=chat_request(True),
        response_status=200,
        response_headers={"content-type": "text/event-stream; charset=utf-8", "openai-processing-ms": "231"},
        response_body=chat_stream(),
    )


# ---------------------------------------------------------------------------------
# Provider examples grown to realistic sizes


@dataclass(frozen=True)
class ProviderBody:
    """One response body of a provider format, ready for its parser."""

    provider: str
    label: str
    host: str
    path: str
    route: detect.Route
    headers: dict[str, str]
    body: bytes
    stream: bool
    grown: bool


_ENCODE: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}
_DECODE: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}


def provider_bodies(target_whole: int = ANSWER_BYTES, target_stream: int = STREAM_BYTES) -> list[ProviderBody]:
    """Return one whole and one streamed 200-status body per provider format found in the examples."""
    found: dict[tuple[str, bool], ProviderBody] = {}
    captures = [capture for path in sorted(EXAMPLES.glob("*.har")) for capture in load_har(str(path))]
    # Bodies without Content-Encoding first, so that a format is measured on its own.
    captures.sort(key=lambda capture: bool(capture.response.headers.get("content-encoding")))
    for capture in captures:
        body = _provider_body(capture, target_whole, target_stream)
        if body is None:
            continue
        # An example of an error inside a stream reads no usage; one that does is preferred.
        known = _usage(body.route, body.headers, body.body, body.stream).known
        current = found.get((body.provider, body.stream))
        if current is None or known and not _usage(current.route, current.headers, current.body, current.stream).known:
            found[(body.provider, body.stream)] = body
    return [found[key] for key in sorted(found)]


def _provider_body(capture: Capture, target_whole: int, target_stream: int) -> ProviderBody | None:
    response = capture.response
    if response.status != 200 or not response.body:
        return None
    route = detect.detect(capture.request.service_host, capture.request.upstream_uri)
    if route is None:
        return None
    facts = providers.read_request(capture.request.upstream_uri, capture.request.body, len(capture.request.body) + 1)
    content_type = response.headers.get("content-type", "")
    stream = facts.stream or providers.is_stream_content_type(content_type)
    encoding = (response.headers.get("content-encoding") or "").strip().lower()
    if encoding and encoding not in _DECODE:
        return None

    plain = _DECODE[encoding](response.body) if encoding else response.body
    grown = _grow_stream(plain, content_type, target_stream) if stream else _grow_whole(plain, target_whole)
    candidate = _ENCODE[encoding](grown) if encoding and grown is not None else grown
    # A grown body counts only if its parser still reads the same usage from it.
    if candidate is not None and _usage(route, response.headers, candidate, stream) != _usage(route, response.headers, response.body, stream):
        candidate = None
    body = candidate if candidate is not None else response.body
    label = f"{route.provider} {route.api}"
    request = capture.request
    return ProviderBody(route.provider, label, request.service_host, request.upstream_uri, route, dict(response.headers), body, stream, candidate is not None)


def _usage(route: detect.Route, headers: dict[str, str], body: bytes, stream: bool) -> Any:
    return providers.parse_response(route, 200, headers, body, stream, 64 * 1024 * 1024)


def _grow_whole(body: bytes, target: int) -> bytes | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    path = _longest_string(document, ())
    if path is None or len(body) >= target:
        return None
    keys, text = path
    _set(document, keys, "")
    filler = _text(target - len(json.dumps(document)))
    _set(document, keys, filler)
    return json.dumps(document).encode()


def _longest_string(node: Any, keys: tuple[Any, ...]) -> tuple[tuple[Any, ...], str] | None:
    best: tuple[tuple[Any, ...], str] | None = None
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        items = ()
    for key, value in items:
        candidate = (keys + (key,), value) if isinstance(value, str) else _longest_string(value, keys + (key,))
        if candidate is not None and (best is None or len(candidate[1]) > len(best[1])):
            best = candidate
    return best


def _set(document: Any, keys: tuple[Any, ...], value: Any) -> None:
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value


def _grow_stream(body: bytes, content_type: str, target: int) -> bytes | None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/vnd.amazon.eventstream":
        events = _eventstream_frames(body)
        separator = b""
    elif media_type in ("application/x-ndjson", "application/stream+json"):
        events = [line + b"\n" for line in body.splitlines() if line.strip()]
        separator = b""
    elif media_type == "text/event-stream":
        separator = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
        events = [event + separator for event in body.split(separator) if event.strip()]
        separator = b""
    else:
        return None
    if events is None or len(events) < 3:
        return None
    # The usage usually sits in the last one or two events; the content in between.
    tail_size = 2 if len(events) >= 4 else 1
    head, middle, tail = events[:1], events[1:-tail_size], events[-tail_size:]
    middle_size = sum(len(event) for event in middle)
    if not middle_size:
        return None
    repeats = max(1, (target - len(body)) // middle_size + 1)
    return separator.join(head + middle * repeats + tail)


def _eventstream_frames(body: bytes) -> list[bytes] | None:
    frames = []
    offset = 0
    while offset + 12 <= len(body):
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 16 or offset + length > len(body):
            return None
        frames.append(body[offset : offset + length])
        offset += length
    return frames if offset == len(body) else None
