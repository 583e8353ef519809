"""Byte-level decoding shared by the provider parsers: content encodings, JSON, SSE, NDJSON.

Everything here is pure and bounded: no function reads more than the limit it is given,
and malformed input raises ``WireError`` (never anything else) so that callers can turn
it into an unknown-usage reason.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import brotli

import orjson


class WireError(ValueError):
    """The body could not be decoded; ``reason`` is an unknown-usage reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BodyTooLarge(WireError):
    pass


_CHUNK = 64 * 1024


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, x-gzip, deflate, br, identity), inflating at most ``limit`` bytes.

    Several codings listed with commas are undone in reverse order, as RFC 9110
    section 8.4 prescribes. Output is produced in bounded steps, so a decompression
    bomb stops at ``limit`` instead of filling memory.
    """
    if not encoding:
        return _check_size(body, limit)
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("identity", ""):
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, zlib.MAX_WBITS | 16, limit)
        elif coding == "deflate":
            # RFC 9110 deflate is zlib-wrapped, but some servers send raw deflate.
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit)
            except WireError as exc:
                if isinstance(exc, BodyTooLarge):
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, limit)
        elif coding == "br":
            body = _unbrotli(body, limit)
        else:
            raise WireError("decode_failed", f"unsupported Content-Encoding {coding!r}")
    return _check_size(body, limit)


def _check_size(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise BodyTooLarge("body_too_large", f"body of {len(body)} bytes exceeds max_body_size={limit}")
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    pending = data
    # A gzip body may hold several members back to back (RFC 1952 section 2.2). They are
    # read in a loop, not by recursion, so that thousands of tiny members cannot exhaust
    # the stack.
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            while pending:
                out += inflater.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise BodyTooLarge("body_too_large", f"body inflates past max_body_size={limit}")
                pending = inflater.unconsumed_tail
            out += inflater.flush(limit + 1 - len(out))
        except zlib.error as exc:
            raise WireError("decode_failed", f"invalid compressed body: {exc}") from exc
        if len(out) > limit:
            raise BodyTooLarge("body_too_large", f"body inflates past max_body_size={limit}")
        if not inflater.eof:
            raise WireError("decode_failed", "compressed body ends before its end marker")
        pending = inflater.unused_data
        if not (pending and wbits & 16):
            return bytes(out)


def _unbrotli(data: bytes, limit: int) -> bytes:
    # A few hundred bytes of brotli can inflate to hundreds of megabytes in a single
    # process() call, so every call gets an output limit and the pending output is
    # drained in bounded steps.
    decoder = brotli.Decompressor()
    out = bytearray()
    try:
        for start in range(0, len(data), _CHUNK):
            out += decoder.process(data[start : start + _CHUNK], output_buffer_limit=limit + 1 - len(out))
            while len(out) <= limit and not decoder.can_accept_more_data():
                more = decoder.process(b"", output_buffer_limit=limit + 1 - len(out))
                if not more:
                    break
                out += more
            if len(out) > limit:
                raise BodyTooLarge("body_too_large", f"body inflates past max_body_size={limit}")
        finished = decoder.is_finished()
    except brotli.error as exc:
        raise WireError("decode_failed", f"invalid brotli body: {exc}") from exc
    if not finished:
        raise WireError("decode_failed", "brotli body ends before its end marker")
    return bytes(out)


def loads(data: bytes | str) -> Any:
    """Parse JSON, raising ``WireError('malformed_body')`` for any invalid document.

    Deep nesting, invalid UTF-8 and numbers out of range are all reported the same way.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    # orjson 3.x rejects a number that overflows a double (1e400) while the standard
    # library reads it as infinity, which token_count rejects later. The rest of such
    # a document can still be read, so only a document both reject is invalid.
    try:
        return json.loads(data)
    except (ValueError, RecursionError, TypeError) as exc:
        raise WireError("malformed_body", f"invalid JSON: {exc}") from exc


_COLON = ord(":")


class SSEEvent(NamedTuple):
    event: str
    data: str


class SSEDecoder:
    """Incremental server-sent events decoder (WHATWG rules).

    Lines may end in LF, CRLF or CR. Comment lines (leading ``:``) are skipped, and one
    space after the field colon is removed. Several ``data`` lines join with LF, and an
    event is dispatched at a blank line. Feed bytes as they arrive, in any split, then
    call ``flush``, which reports whether the stream ended in the middle of an event.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._has_field = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buffer + chunk if self._buffer else chunk
        # The complete lines end at the last LF, or at the last CR before the final byte,
        # because a CR at the very end may be the first half of a CRLF still in transit.
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1))
        if end < 0:
            self._buffer = buf
            return []
        self._buffer = buf[end + 1 :]
        # bytes.splitlines breaks at LF, CRLF and CR, exactly the SSE line endings, in
        # one linear pass.
        return self._process_lines(buf[: end + 1].splitlines())

    def flush(self) -> tuple[list[SSEEvent], bool]:
        """Return the events still pending and whether the stream ended mid-event."""
        events: list[SSEEvent] = []
        if self._buffer.endswith(b"\r"):
            # The stream is over, so a trailing CR is a complete line ending.
            events = self.feed(b"\n")
        leftover = bool(self._buffer.strip()) or self._has_field
        self._buffer = b""
        self._event = ""
        self._data = []
        self._has_field = False
        return events, leftover

    def _process_lines(self, lines: list[bytes]) -> list[SSEEvent]:
        # One loop over local variables, because this runs for every line of every stream.
        events: list[SSEEvent] = []
        name, data, has_field = self._event, self._data, self._has_field
        for raw in lines:
            if not raw:
                if has_field:
                    events.append(SSEEvent(name, "\n".join(data)))
                    name, data, has_field = "", [], False
                continue
            if raw[0] == _COLON:
                continue
            field, colon, value = raw.decode("utf-8", errors="replace").partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
                has_field = True
            elif field == "event":
                name = value
                has_field = True
        self._event, self._data, self._has_field = name, data, has_field
        return events


def iter_sse(body: bytes) -> tuple[list[SSEEvent], bool]:
    """Decode a whole SSE body; return its events and whether it ended mid-event."""
    decoder = SSEDecoder()
    events = decoder.feed(body)
    tail, incomplete = decoder.flush()
    return events + tail, incomplete


def iter_ndjson(body: bytes) -> Iterator[Any]:
    """Yield each JSON object of a newline-delimited JSON body, skipping blank lines.

    A line that is not valid JSON raises ``WireError``.
    """
    for line in body.splitlines():
        if line.strip():
            yield loads(line)
