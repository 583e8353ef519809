"""Content decoding and the SSE decoder."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kong_ai_metrics.wire import SSEDecoder, SSEEvent, WireError, decode_content, iter_ndjson, iter_sse

TEXT = b'{"usage": {"prompt_tokens": 3}}' * 10


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
        ("br", brotli.compress),
        ("identity", lambda data: data),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "br", "identity"],
)
def test_decode_content_each_coding(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    assert decode_content(encode(TEXT), encoding, 1 << 20) == TEXT


def test_decode_content_stacked_codings() -> None:
    data = brotli.compress(gzip.compress(TEXT))
    assert decode_content(data, "gzip, br", 1 << 20) == TEXT


def test_decode_content_gzip_members_concatenated() -> None:
    assert decode_content(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_decode_content_bomb_stops_at_limit(encoding: str) -> None:
    data = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding](b"\0" * 10_000_000)
    with pytest.raises(WireError) as error:
        decode_content(data, encoding, 64 * 1024)
    assert error.value.reason == "body_too_large"


def test_decode_content_truncated_gzip() -> None:
    with pytest.raises(WireError) as error:
        decode_content(gzip.compress(TEXT)[:-12], "gzip", 1 << 20)
    assert error.value.reason == "decode_failed"


def test_decode_content_unknown_coding() -> None:
    with pytest.raises(WireError) as error:
        decode_content(TEXT, "zstd", 1 << 20)
    assert error.value.reason == "decode_failed"


def test_plain_body_over_limit() -> None:
    with pytest.raises(WireError) as error:
        decode_content(TEXT, None, 10)
    assert error.value.reason == "body_too_large"


STREAM = b"event: a\r\ndata: {\"x\":1}\r\n\r\n: keep-alive comment\ndata:no-space\ndata:  two spaces\n\nevent: b\rdata: c\r\r"
EXPECTED = [SSEEvent("a", '{"x":1}'), SSEEvent("", "no-space\n two spaces"), SSEEvent("b", "c")]


def test_sse_line_endings_comments_and_spaces() -> None:
    events, incomplete = iter_sse(STREAM)
    assert events == EXPECTED
    assert incomplete is False


def test_sse_split_at_every_byte() -> None:
    decoder = SSEDecoder()
    events = []
    for index in range(len(STREAM)):
        events += decoder.feed(STREAM[index : index + 1])
    tail, incomplete = decoder.flush()
    assert events + tail == EXPECTED
    assert incomplete is False


def test_sse_unfinished_event_reported() -> None:
    events, incomplete = iter_sse(b'data: {"a":1}\n\ndata: {"b"')
    assert events == [SSEEvent("", '{"a":1}')]
    assert incomplete is True


def test_sse_multibyte_character_split() -> None:
    data = "data: \u00e9t\u00e9\n\n".encode()
    decoder = SSEDecoder()
    events = decoder.feed(data[:7]) + decoder.feed(data[7:])
    assert events == [SSEEvent("", "\u00e9t\u00e9")]


def test_ndjson_lines() -> None:
    assert list(iter_ndjson(b'{"a":1}\n\n{"b":2}\r\n')) == [{"a": 1}, {"b": 2}]


def test_ndjson_bad_line_raises_wire_error() -> None:
    with pytest.raises(WireError):
        list(iter_ndjson(b'{"a":1}\n{"b":'))


def test_sse_many_cr_only_lines() -> None:
    # 2 MB of bare CRs used to take minutes: each line rescanned the rest for an LF.
    events, incomplete = iter_sse(b"\r" * 2_000_000 + b"data: x\r\r")
    assert events == [SSEEvent("", "x")]
    assert incomplete is False


def reference_sse(body: bytes) -> tuple[list[SSEEvent], bool]:
    """Apply the WHATWG event-stream rules line by line, written for clarity rather than speed."""
    *lines, partial = re.split(rb"\r\n|\r|\n", body)
    events: list[SSEEvent] = []
    name, data, has_field = "", [], False
    for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if line == "":
            if has_field:
                events.append(SSEEvent(name, "\n".join(data)))
            name, data, has_field = "", [], False
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field in ("event", "data"):
                has_field = True
                if field == "event":
                    name = value
                else:
                    data.append(value)
    return events, bool(partial.strip()) or has_field


sse_pieces = st.sampled_from([b"data:", b"data: ", b"data", b"event: x", b"event:", b"id: 1", b":c", b"\n", b"\r", b"\r\n", b"\n\n", b"{}", b"x", b"\xff", b"\xe2\x82", b" "])


@settings(max_examples=1000, deadline=None)
@given(body=st.one_of(st.lists(sse_pieces, max_size=80).map(b"".join), st.binary(max_size=400)))
def test_sse_decoder_matches_reference_rules(body: bytes) -> None:
    assert iter_sse(body) == reference_sse(body)
