"""Decoding of streamed bodies for parsers whose providers use more than one framing.

Cohere v1 and Ollama stream newline-delimited JSON, Cohere v2, TGI and llama.cpp stream
server-sent events, and some captures of Cohere v2 show plain JSON lines too. These
helpers decode either framing without raising, so that one bad line costs only itself.
"""

from __future__ import annotations

import re
from typing import Any

from ..wire import WireError, iter_sse, loads

_LEADING_SPACE = re.compile(rb"\s*")


def first_byte(body: bytes) -> bytes:
    """Return the first byte that is not whitespace, or ``b""`` for a blank body."""
    start = _LEADING_SPACE.match(body)
    offset = start.end() if start else 0
    return body[offset : offset + 1]


def is_json_lines(body: bytes) -> bool:
    """Tell JSON lines from SSE: a JSON value starts with ``{`` or ``[``, an SSE field never does."""
    return first_byte(body) in (b"{", b"[")


def json_lines(body: bytes) -> tuple[list[Any], bool]:
    """Decode newline-delimited JSON; return the values and whether the body ends inside a line.

    A line that is not valid JSON is skipped. When it is the last line, the stream was
    cut off in the middle of an object, so the second value is True.
    """
    lines = [line for line in body.splitlines() if line.strip()]
    values: list[Any] = []
    cut = False
    for index, line in enumerate(lines):
        try:
            values.append(loads(line))
        except WireError:
            cut = index == len(lines) - 1
    return values, cut


def sse_json(body: bytes) -> tuple[list[tuple[str, Any]], bool]:
    """Decode an SSE body into ``(event name, JSON data)`` pairs and whether it ends mid-event.

    ``[DONE]`` terminators and events whose data is not JSON are skipped.
    """
    events, incomplete = iter_sse(body)
    decoded: list[tuple[str, Any]] = []
    for event in events:
        data = event.data.strip()
        if not data or data == "[DONE]":
            continue
        try:
            decoded.append((event.event, loads(data)))
        except WireError:
            continue
    return decoded, incomplete


def stream_json(body: bytes) -> tuple[list[tuple[str, Any]], bool]:
    """Decode SSE or JSON lines, whichever the body is, into ``(event name, value)`` pairs.

    JSON lines have no event names, so their pairs carry ``""``.
    """
    if is_json_lines(body):
        values, cut = json_lines(body)
        return [("", value) for value in values], cut
    return sse_json(body)
