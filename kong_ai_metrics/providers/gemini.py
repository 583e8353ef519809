"""Google Gemini API and Vertex AI Gemini bodies: whole, streamed as SSE, streamed as a JSON array.

Usage is in ``usageMetadata``. ``promptTokenCount`` already includes the cached
content (``cachedContentTokenCount``), but ``candidatesTokenCount`` leaves out the
thinking tokens (``thoughtsTokenCount``) although they are billed as output, and
``toolUsePromptTokenCount`` (tool results fed back to the model) is input reported
apart. So the prompt adds the tool-use prompt to ``promptTokenCount``, and the completion
adds thoughts to the candidates. ``totalTokenCount`` is documented as the sum of all four:
https://googleapis.github.io/js-genai/release_docs/classes/types.GenerateContentResponseUsageMetadata.html

The JSON mapping of proto3 leaves out fields whose value is zero, so a missing count
inside a ``usageMetadata`` object means 0. A response with no ``usageMetadata`` at all
(``embedContent`` on the Gemini API, ``countTokens``) reports no usage.

``streamGenerateContent`` sends one ``GenerateContentResponse`` per chunk, as SSE with
``?alt=sse`` (``data: {...}`` with CRLF line endings) or otherwise as one JSON array
written element by element (content type ``application/json``). Chunks may repeat
``usageMetadata`` as running totals, so the last one wins. The final chunk carries a
``finishReason`` (or ``promptFeedback.blockReason`` when the prompt was blocked); a
stream without one was cut off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .. import usage as u
from ..detect import Route
from ..wire import WireError, iter_sse, loads
from . import openai
from ._common import dig, text_at

_PROMPT_FIELDS = ("promptTokenCount", "toolUsePromptTokenCount")
_COMPLETION_FIELDS = ("candidatesTokenCount", "thoughtsTokenCount")
_COUNT_FIELDS = (*_PROMPT_FIELDS, *_COMPLETION_FIELDS, "cachedContentTokenCount", "totalTokenCount")


def parse_response(route: Route, body: bytes, stream: bool, headers: Mapping[str, str]) -> u.Usage:
    """Parse a whole response, an SSE stream or a JSON-array stream, recognised by the body.

    The JSON-array stream comes as ``application/json`` like a whole response, so the
    first byte of the body decides, not ``stream``. Gemini's OpenAI-compatible endpoint
    (``/v1beta/openai/chat/completions``) responds in OpenAI's format.
    """
    if route.api == "chat":
        return openai.parse_response(route, body, stream, headers)
    start = body.lstrip()[:1]
    if start == b"[":
        return _parse_array_stream(body)
    if start == b"{":
        return _parse_whole(body)
    return _parse_sse_stream(body)


def usage_from_metadata(metadata: Any, model: str | None) -> u.Usage:
    """Build the normalised record from one ``usageMetadata`` object."""
    if not isinstance(metadata, dict) or not any(name in metadata for name in _COUNT_FIELDS):
        return u.unknown(u.REASON_NO_USAGE, model)

    counts: dict[str, int | None] = {}
    for name in _COUNT_FIELDS:
        if name not in metadata:
            counts[name] = None
            continue
        value = u.token_count(metadata[name])
        if value is None:
            return u.unknown(u.REASON_MALFORMED, model)
        counts[name] = value

    return u.finish(
        sum(counts[name] or 0 for name in _PROMPT_FIELDS),
        sum(counts[name] or 0 for name in _COMPLETION_FIELDS),
        counts["totalTokenCount"],
        cached=counts["cachedContentTokenCount"],
        reasoning=counts["thoughtsTokenCount"],
        response_model=model,
    )


def _parse_whole(body: bytes) -> u.Usage:
    document = loads(body)
    if not isinstance(document, dict):
        raise WireError(u.REASON_MALFORMED, f"expected a JSON object, got {type(document).__name__}")
    model = text_at(document, "modelVersion")
    if document.get("error") is not None:
        return u.unknown(u.REASON_UPSTREAM_ERROR, model)
    return usage_from_metadata(document.get("usageMetadata"), model)


class _StreamState:
    """Usage, model and outcome gathered from a stream's chunks so far."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] | None = None
        self.model: str | None = None
        self.started = False
        self.finished = False
        self.failed = False

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        self.started = True
        if chunk.get("error") is not None:
            # Google ends a stream that fails after the 200 with an error object.
            self.failed = True
            return
        self.model = text_at(chunk, "modelVersion") or self.model
        metadata = chunk.get("usageMetadata")
        if isinstance(metadata, dict) and any(name in metadata for name in _COUNT_FIELDS):
            # Running totals: the latest report replaces the earlier ones.
            self.metadata = metadata
        if _is_final(chunk):
            self.finished = True

    def result(self, cut_off: bool) -> u.Usage:
        record = usage_from_metadata(self.metadata, self.model)
        if self.failed:
            return _prompt_side(record, u.REASON_STREAM_ERROR)
        if not self.finished:
            reason = u.REASON_TRUNCATED if self.started or cut_off else u.REASON_NO_USAGE
            return _prompt_side(record, reason)
        return record


def _is_final(chunk: dict[str, Any]) -> bool:
    if dig(chunk, "promptFeedback", "blockReason"):
        return True
    candidates = chunk.get("candidates")
    if not isinstance(candidates, list):
        return False
    return any(isinstance(candidate, dict) and candidate.get("finishReason") for candidate in candidates)


def _prompt_side(record: u.Usage, reason: str) -> u.Usage:
    """Keep only the prompt counts of an unfinished stream: they are final from the first chunk."""
    return replace(
        record,
        completion_tokens=None,
        total_tokens=None,
        reasoning_tokens=None,
        unknown_reason=reason,
    )


def _parse_sse_stream(body: bytes) -> u.Usage:
    events, incomplete = iter_sse(body)
    state = _StreamState()
    for event in events:
        try:
            chunk = loads(event.data)
        except WireError:
            continue
        state.add(chunk)
    return state.result(cut_off=incomplete)


def _parse_array_stream(body: bytes) -> u.Usage:
    state = _StreamState()

    # A complete array parses in one call, several times faster than scanning it.
    if body.rstrip().endswith(b"]"):
        try:
            document = loads(body)
        except WireError:
            document = None
        if isinstance(document, list):
            for chunk in document:
                state.add(chunk)
            return state.result(cut_off=False)

    cut_off = scan_array(body, state.add)
    return state.result(cut_off=cut_off)


_JSON_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_SEPARATORS = re.compile(r"[ \t\r\n,]*")


def scan_array(body: bytes, add: Callable[[Any], None]) -> bool:
    """Decode a streamed JSON array whose closing bracket may be missing.

    Pass each complete element to ``add`` and return True when the array was cut off.
    No list of elements is built, so memory does not grow with their number, but the
    body is copied: about three times its size at the peak for ASCII text. The standard
    library's decoder reads one complete element per call, which is several times
    faster than ``JSONArrayStreamDecoder`` when the elements are small. From the first
    element that it cannot decode (cut off, malformed, or not valid UTF-8), the stream
    decoder takes over, because it can tell a cut-off element from a malformed one.
    """
    # surrogatepass, as the standard library's json.loads reads bytes: an encoded lone
    # surrogate is valid there, so it must not end the fast path either.
    try:
        text = body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        text = body[: exc.start].decode("utf-8", "surrogatepass")
    rest = body
    position = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    if text.startswith("[", position):
        position += 1
        while True:
            position = _SEPARATORS.match(text, position).end()  # type: ignore[union-attr]
            if not text.startswith(("{", "["), position):
                break
            try:
                element, position = _JSON_DECODER.raw_decode(text, position)
            except (ValueError, RecursionError):
                # NOTE: an element nested about 1,000 deep raises RecursionError here, and
                # the slow decoder then takes the whole rest (about 1 us per byte).
                break
            add(element)
        offset = position if text.isascii() else len(text[:position].encode("utf-8", "surrogatepass"))
        rest = b"[" + body[offset:]
    decoder = JSONArrayStreamDecoder()
    for element in decoder.feed(rest):
        add(element)
    return decoder.flush()


# Inside an element, the tokens that matter: a whole string literal (skipped in one match,
# escapes included, so brackets inside it are never counted), a bracket, or a lone quote
# that opens a string whose end has not arrived yet.
_ELEMENT_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|"', re.DOTALL)
# Between the elements of the top-level array, anything but whitespace and commas.
_ELEMENT_BOUNDARY = re.compile(rb"[^ \t\r\n,]")
# Before the opening bracket, and after the closing one, only whitespace may appear.
_NON_WHITESPACE = re.compile(rb"[^ \t\r\n]")
_QUOTE, _OPEN_BRACE, _OPEN_BRACKET = ord('"'), ord("{"), ord("[")


class JSONArrayStreamDecoder:
    """Decode the elements of a JSON array as each one completes.

    Bytes may be fed in any split. Brackets are counted outside strings only, and a
    backslash escape inside a string is skipped, so ``"}"`` and ``"\\""`` in text do not
    end an element early. Only objects and arrays are accepted as elements, which is
    all a Gemini stream contains. A missing closing ``]`` is tolerated: the elements
    before it are returned, and ``flush`` reports that the array was left open. Any
    other syntax error raises ``WireError``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._depth = 0
        self._element_start = -1
        self.closed = False

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data`` and return every element it completes, decoded."""
        self._buffer += data
        elements: list[Any] = []
        while self._pos < len(self._buffer):
            if self._depth == 0:
                progressed = self._open_array()
            elif self._depth == 1:
                progressed = self._start_element()
            else:
                progressed = self._scan_element(elements)
            if not progressed:
                break
        self._compact()
        return elements

    def flush(self) -> bool:
        """Return True when the input ended inside an element or before the closing ``]``."""
        return self._element_start >= 0 or not self.closed

    def _open_array(self) -> bool:
        match = _NON_WHITESPACE.search(self._buffer, self._pos)
        if match is None:
            self._pos = len(self._buffer)
            return False
        if self.closed or match.group() != b"[":
            raise WireError(u.REASON_MALFORMED, f"unexpected byte {match.group()!r} outside the streamed JSON array")
        self._depth = 1
        self._pos = match.end()
        return True

    def _start_element(self) -> bool:
        match = _ELEMENT_BOUNDARY.search(self._buffer, self._pos)
        if match is None:
            self._pos = len(self._buffer)
            return False
        byte = match.group()
        self._pos = match.end()
        if byte == b"]":
            self._depth = 0
            self.closed = True
        elif byte in (b"{", b"["):
            self._element_start = match.start()
            self._depth = 2
        else:
            raise WireError(u.REASON_MALFORMED, f"streamed JSON array element starts with {byte!r}, not an object")
        return True

    def _scan_element(self, elements: list[Any]) -> bool:
        """Count brackets up to the end of the current element; return False when more input is needed."""
        buffer = self._buffer
        for match in _ELEMENT_TOKEN.finditer(buffer, self._pos):
            start = match.start()
            first = buffer[start]
            if first == _QUOTE:
                if match.end() - start == 1:
                    # A string still open: scan it again from its quote when more bytes arrive.
                    self._pos = start
                    return False
                continue
            if first in (_OPEN_BRACE, _OPEN_BRACKET):
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 1:
                self._pos = match.end()
                elements.append(loads(bytes(buffer[self._element_start : self._pos])))
                self._element_start = -1
                return True
        self._pos = len(buffer)
        return False

    def _compact(self) -> None:
        """Drop the bytes no element needs any more, so the buffer contains one element at most."""
        keep_from = self._element_start if self._element_start >= 0 else self._pos
        if keep_from > 0:
            del self._buffer[:keep_from]
            self._pos -= keep_from
            if self._element_start >= 0:
                self._element_start = 0
