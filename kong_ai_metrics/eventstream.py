"""Incremental decoder for the AWS event stream format (``application/vnd.amazon.eventstream``).

Amazon Bedrock sends ``ConverseStream`` and ``InvokeModelWithResponseStream`` responses
in this binary framing. Each message is laid out big-endian as::

    total_length   u32   the whole message, this field and both CRCs included
    headers_length u32   bytes of the header block
    prelude_crc    u32   CRC-32 of the 8 bytes above
    headers        headers_length bytes
    payload        total_length - headers_length - 16 bytes
    message_crc    u32   CRC-32 of every byte of the message before this field

The CRC is the IEEE polynomial that ``zlib.crc32`` computes. A header is a name length
(u8), the UTF-8 name, a type byte and a value whose encoding depends on the type
(0 true, 1 false, 2 int8, 3 int16, 4 int32, 5 int64, 6 bytes, 7 string, 8 timestamp in
milliseconds, 9 UUID). Format reference:
https://docs.aws.amazon.com/lexv2/latest/dg/event-stream-encoding.html

Network reads split messages anywhere, so ``EventStreamDecoder`` keeps a partial message
until its last byte arrives. A checksum mismatch (``ChecksumMismatch``) is reported
apart from a stream that simply stops early (``flush`` returns the leftover byte count).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

# aws-c-event-stream, the AWS reference implementation, caps a message at 16 MiB (24 MiB
# in later releases) and its headers at 128 KiB; the larger message cap is used here.
# Checking them right after the prelude keeps a corrupt length from making the decoder
# wait for gigabytes.
MAX_MESSAGE_LENGTH = 24 * 1024 * 1024
MAX_HEADERS_LENGTH = 128 * 1024

_PRELUDE_LENGTH = 12
_MIN_MESSAGE_LENGTH = _PRELUDE_LENGTH + 4
_PRELUDE = struct.Struct(">III")
_CRC = struct.Struct(">I")
_LENGTH16 = struct.Struct(">H")
_FIXED_WIDTH = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
}
_TIMESTAMP = struct.Struct(">q")


class EventStreamError(ValueError):
    """The event stream cannot be decoded past some point.

    ``messages`` contains the complete messages that the failing ``feed`` call decoded
    before the bad one, so a caller can still use them. The decoder cannot find the
    next message boundary after an error, so it must be discarded.
    """

    def __init__(self, message: str, messages: list[Message] | None = None) -> None:
        super().__init__(message)
        self.messages: list[Message] = messages if messages is not None else []


class ChecksumMismatch(EventStreamError):
    """A prelude or message CRC-32 does not match the bytes: the stream is corrupt."""


class InvalidMessage(EventStreamError):
    """A message has impossible lengths or an undecodable header."""


@dataclass(frozen=True)
class Timestamp:
    """Value of a timestamp header (type 8): milliseconds since the Unix epoch."""

    milliseconds: int


HeaderValue = bool | int | bytes | str | Timestamp | uuid.UUID


@dataclass(frozen=True)
class Message:
    """One decoded event stream message."""

    headers: dict[str, HeaderValue] = field(default_factory=dict)
    payload: bytes = b""

    def header_text(self, name: str) -> str | None:
        """Return the string header ``name``, or None when it is absent or not a string."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Decode event stream messages from bytes fed in pieces of any size.

    Call ``feed`` with each piece as it arrives and ``flush`` once at the end. Memory is
    bounded: at most one partial message (``MAX_MESSAGE_LENGTH``) plus the last piece
    fed is kept.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failure: EventStreamError | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data`` and return every message it completes, in order.

        Raises ``ChecksumMismatch`` or ``InvalidMessage`` at the first bad message; the
        exception's ``messages`` lists the ones decoded before it in this call.
        """
        if self._failure is not None:
            raise type(self._failure)(f"decoder already failed: {self._failure}")
        self._buffer += data
        messages: list[Message] = []
        offset = 0
        try:
            while True:
                message, size = self._next_message(offset)
                if message is None:
                    break
                messages.append(message)
                offset += size
        except EventStreamError as exc:
            exc.messages = messages
            self._failure = exc
            self._buffer.clear()
            raise
        del self._buffer[:offset]
        return messages

    def flush(self) -> int:
        """Return how many bytes of an unfinished message were left over, and reset.

        Zero means the stream ended on a message boundary. A non-zero count means the
        stream was cut off in the middle of a message.
        """
        leftover = len(self._buffer)
        self._buffer.clear()
        self._failure = None
        return leftover

    def _next_message(self, offset: int) -> tuple[Message | None, int]:
        buffer = self._buffer
        available = len(buffer) - offset
        if available < _PRELUDE_LENGTH:
            return None, 0

        # The view is released before feed() resizes the buffer, as bytearray requires.
        with memoryview(buffer) as view:
            total_length, headers_length, prelude_crc = _PRELUDE.unpack_from(view, offset)
            computed = zlib.crc32(view[offset : offset + 8])
            if computed != prelude_crc:
                raise ChecksumMismatch(
                    f"prelude CRC-32 mismatch at byte {offset}: message has {prelude_crc:#010x}, bytes give {computed:#010x}"
                )
            _check_lengths(total_length, headers_length, offset)
            if available < total_length:
                return None, 0

            end = offset + total_length
            (message_crc,) = _CRC.unpack_from(view, end - 4)
            computed = zlib.crc32(view[offset : end - 4])
            if computed != message_crc:
                raise ChecksumMismatch(
                    f"message CRC-32 mismatch at byte {offset}: message has {message_crc:#010x}, bytes give {computed:#010x}"
                )

            headers_start = offset + _PRELUDE_LENGTH
            headers = _decode_headers(bytes(view[headers_start : headers_start + headers_length]))
            payload = bytes(view[headers_start + headers_length : end - 4])
        return Message(headers, payload), total_length


def decode_all(data: bytes) -> tuple[list[Message], int]:
    """Decode a whole event stream body; return its messages and the leftover byte count.

    Raises ``EventStreamError`` like ``EventStreamDecoder.feed``.
    """
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    return messages, decoder.flush()


def _check_lengths(total_length: int, headers_length: int, offset: int) -> None:
    if total_length < _MIN_MESSAGE_LENGTH:
        raise InvalidMessage(f"message at byte {offset} declares {total_length} bytes, less than the minimum of 16")
    if total_length > MAX_MESSAGE_LENGTH:
        raise InvalidMessage(
            f"message at byte {offset} declares {total_length} bytes, more than the maximum of {MAX_MESSAGE_LENGTH}"
        )
    if headers_length > MAX_HEADERS_LENGTH:
        raise InvalidMessage(
            f"message at byte {offset} declares {headers_length} header bytes, more than the maximum of {MAX_HEADERS_LENGTH}"
        )
    if headers_length > total_length - _MIN_MESSAGE_LENGTH:
        raise InvalidMessage(
            f"message at byte {offset} declares {headers_length} header bytes, which do not fit in its {total_length} bytes"
        )


def _decode_headers(block: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    size = len(block)
    while pos < size:
        name_length = block[pos]
        pos += 1
        if name_length == 0 or pos + name_length + 1 > size:
            raise InvalidMessage(f"header name at byte {pos - 1} of the header block is empty or cut off")
        try:
            name = block[pos : pos + name_length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"header name at byte {pos} of the header block is not UTF-8") from exc
        pos += name_length
        value_type = block[pos]
        pos += 1
        value, pos = _decode_value(block, pos, value_type, name)
        # A repeated name is not valid, but the later value is the one a sender meant last.
        headers[name] = value
    return headers


def _decode_value(block: bytes, pos: int, value_type: int, name: str) -> tuple[HeaderValue, int]:
    if value_type == 0:
        return True, pos
    if value_type == 1:
        return False, pos

    fixed = _FIXED_WIDTH.get(value_type)
    if fixed is not None:
        _need(block, pos, fixed.size, name)
        return fixed.unpack_from(block, pos)[0], pos + fixed.size

    if value_type in (6, 7):
        _need(block, pos, 2, name)
        (length,) = _LENGTH16.unpack_from(block, pos)
        pos += 2
        _need(block, pos, length, name)
        raw = block[pos : pos + length]
        if value_type == 6:
            return raw, pos + length
        try:
            return raw.decode("utf-8"), pos + length
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"string header {name!r} is not UTF-8") from exc

    if value_type == 8:
        _need(block, pos, 8, name)
        return Timestamp(_TIMESTAMP.unpack_from(block, pos)[0]), pos + 8
    if value_type == 9:
        _need(block, pos, 16, name)
        return uuid.UUID(bytes=block[pos : pos + 16]), pos + 16
    raise InvalidMessage(f"header {name!r} has unknown value type {value_type}")


def _need(block: bytes, pos: int, length: int, name: str) -> None:
    if pos + length > len(block):
        raise InvalidMessage(f"value of header {name!r} runs past the end of the header block")
