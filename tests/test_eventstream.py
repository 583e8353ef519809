"""The AWS event stream decoder: framing, every header type, CRCs, and messages split across reads."""

from __future__ import annotations

import json
import random
import struct
import uuid
import zlib

import pytest

from .eventstream_frames import all_header_types, event, exception, frame, string_header
from kong_ai_metrics.eventstream import (
    MAX_MESSAGE_LENGTH,
    ChecksumMismatch,
    EventStreamDecoder,
    InvalidMessage,
    Message,
    Timestamp,
    decode_all,
)

# A messageStop event written out byte by byte, CRCs included, so that the decoder is
# checked against fixed bytes rather than against the test encoder.
MESSAGE_STOP = bytes.fromhex(
    "0000007a" "00000051" "ca2c4665"
    "0b" + b":event-type".hex() + "07" "000b" + b"messageStop".hex()
    + "0d" + b":content-type".hex() + "07" "0010" + b"application/json".hex()
    + "0d" + b":message-type".hex() + "07" "0005" + b"event".hex()
    + b'{"stopReason":"end_turn"}'.hex()
    + "5fbf09fc"
)

# The smallest message: no headers, no payload, only the prelude and the two CRCs.
EMPTY_MESSAGE = bytes.fromhex("00000010" "00000000" "05c248eb" "7d98c8ff")


METADATA = event(
    "metadata",
    {"usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16}, "metrics": {"latencyMs": 412}},
)


def converse_stream() -> bytes:
    return b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bonjour"}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " !"}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": "end_turn"}),
            METADATA,
        ]
    )


def test_fixed_message_stop_bytes_decode() -> None:
    messages, leftover = decode_all(MESSAGE_STOP)

    assert len(MESSAGE_STOP) == 122
    assert leftover == 0
    assert messages == [
        Message(
            headers={":event-type": "messageStop", ":content-type": "application/json", ":message-type": "event"},
            payload=b'{"stopReason":"end_turn"}',
        )
    ]


def test_empty_message_decodes() -> None:
    messages, leftover = decode_all(EMPTY_MESSAGE)

    assert messages == [Message(headers={}, payload=b"")]
    assert leftover == 0


def test_every_header_type_decodes() -> None:
    block, values = all_header_types()
    messages, leftover = decode_all(frame(block, b"payload"))

    assert leftover == 0
    assert len(messages) == 1
    headers = messages[0].headers
    assert headers["flag-true"] is True
    assert headers["flag-false"] is False
    assert headers["int8"] == -7
    assert headers["int16"] == -30000
    assert headers["int32"] == 2_000_000_000
    assert headers["int64"] == -9_000_000_000_000
    assert headers["bytes"] == b"\x00\xff\x10"
    assert headers["string"] == "héllo"
    assert headers["timestamp"] == Timestamp(values["timestamp"])
    assert headers["uuid"] == uuid.UUID("0c2c1b38-3d4e-4a1f-9b27-5f0d0e6a7c11")
    assert messages[0].payload == b"payload"


def test_header_text_ignores_other_types() -> None:
    block, _ = all_header_types()
    (message,), _ = decode_all(frame(block, b""))

    assert message.header_text("string") == "héllo"
    assert message.header_text("int32") is None
    assert message.header_text("missing") is None


def test_consecutive_messages_decode_in_order() -> None:
    messages, leftover = decode_all(converse_stream())

    assert leftover == 0
    assert [m.headers[":event-type"] for m in messages] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert json.loads(messages[5].payload)["usage"] == {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16}


def test_frames_split_byte_by_byte() -> None:
    body = converse_stream()
    expected, _ = decode_all(body)
    decoder = EventStreamDecoder()

    decoded = []
    for index in range(len(body)):
        decoded.extend(decoder.feed(body[index : index + 1]))

    assert decoded == expected
    assert decoder.flush() == 0


@pytest.mark.parametrize("seed", range(25))
def test_frames_split_at_random_points(seed: int) -> None:
    body = converse_stream()
    expected, _ = decode_all(body)
    rng = random.Random(seed)
    decoder = EventStreamDecoder()

    decoded = []
    position = 0
    while position < len(body):
        size = rng.randint(1, 90)
        decoded.extend(decoder.feed(body[position : position + size]))
        position += size

    assert decoded == expected
    assert decoder.flush() == 0


def test_partial_frame_waits_for_rest() -> None:
    decoder = EventStreamDecoder()

    assert decoder.feed(MESSAGE_STOP[:60]) == []
    assert decoder.feed(MESSAGE_STOP[60:121]) == []
    (message,) = decoder.feed(MESSAGE_STOP[121:])
    assert message.header_text(":event-type") == "messageStop"
    assert decoder.flush() == 0


def test_truncated_stream_reports_leftover_bytes() -> None:
    body = converse_stream()
    cut = len(body) - 30
    decoder = EventStreamDecoder()

    messages = decoder.feed(body[:cut])

    assert len(messages) == 5
    assert messages[-1].header_text(":event-type") == "messageStop"
    assert decoder.flush() == len(METADATA) - 30


def test_truncated_prelude_is_not_a_checksum_error() -> None:
    messages, leftover = decode_all(MESSAGE_STOP + MESSAGE_STOP[:7])

    assert len(messages) == 1
    assert leftover == 7


def test_bad_message_crc_is_checksum_mismatch() -> None:
    corrupted = bytearray(MESSAGE_STOP)
    corrupted[100] ^= 0x01  # one bit of the payload

    with pytest.raises(ChecksumMismatch, match="message CRC-32 mismatch at byte 122"):
        decode_all(MESSAGE_STOP + bytes(corrupted))


def test_bad_crc_keeps_messages_before_it() -> None:
    corrupted = bytearray(MESSAGE_STOP)
    corrupted[-1] ^= 0xFF  # the message CRC itself

    with pytest.raises(ChecksumMismatch) as caught:
        decode_all(EMPTY_MESSAGE + MESSAGE_STOP + bytes(corrupted))

    assert [m.header_text(":event-type") for m in caught.value.messages] == [None, "messageStop"]


def test_bad_prelude_crc_detected_before_frame_completes() -> None:
    corrupted = bytearray(MESSAGE_STOP)
    corrupted[3] = 0x7B  # total_length 0x7b instead of 0x7a; the prelude CRC no longer matches
    decoder = EventStreamDecoder()

    with pytest.raises(ChecksumMismatch, match="prelude CRC-32 mismatch at byte 0"):
        decoder.feed(bytes(corrupted[:12]))


def test_decoder_rejects_feed_after_failure() -> None:
    corrupted = bytearray(MESSAGE_STOP)
    corrupted[-2] ^= 0x10
    decoder = EventStreamDecoder()
    with pytest.raises(ChecksumMismatch):
        decoder.feed(bytes(corrupted))

    with pytest.raises(ChecksumMismatch, match="decoder already failed"):
        decoder.feed(MESSAGE_STOP)


def _prelude(total: int, headers_length: int) -> bytes:
    raw = struct.pack(">II", total, headers_length)
    return raw + struct.pack(">I", zlib.crc32(raw))


def test_length_below_minimum_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="less than the minimum of 16"):
        decode_all(_prelude(15, 0) + b"\x00" * 8)


def test_length_above_maximum_is_invalid_without_waiting() -> None:
    decoder = EventStreamDecoder()

    with pytest.raises(InvalidMessage, match="more than the maximum"):
        decoder.feed(_prelude(MAX_MESSAGE_LENGTH + 1, 0))


def test_headers_longer_than_message_are_invalid() -> None:
    with pytest.raises(InvalidMessage, match="do not fit"):
        decode_all(_prelude(20, 5) + b"\x00" * 8)


def test_unknown_header_type_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="unknown value type 10"):
        decode_all(frame(b"\x04kind\x0a", b"{}"))


def test_header_value_past_block_end_is_invalid() -> None:
    # A string header that declares 200 bytes of value inside a 12-byte block.
    with pytest.raises(InvalidMessage, match="runs past the end"):
        decode_all(frame(b"\x04name\x07\x00\xc8abcde", b""))


def test_exception_message_headers_decode() -> None:
    (message,), leftover = decode_all(exception("throttlingException", "Too many tokens, please wait before trying again."))

    assert leftover == 0
    assert message.header_text(":message-type") == "exception"
    assert message.header_text(":exception-type") == "throttlingException"
    assert json.loads(message.payload) == {"message": "Too many tokens, please wait before trying again."}


def test_string_header_helper_matches_fixed_bytes() -> None:
    block = (
        string_header(":event-type", "messageStop")
        + string_header(":content-type", "application/json")
        + string_header(":message-type", "event")
    )

    assert frame(block, b'{"stopReason":"end_turn"}') == MESSAGE_STOP
