"""Build AWS event stream messages for tests, as Bedrock frames them on the wire.

Written from the format description (big-endian prelude, typed headers, two CRC-32s), not
from the decoder under test, so a decoder bug does not cancel itself out here.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
import zlib
from typing import Any


def header(name: str, type_code: int, value: bytes = b"") -> bytes:
    """Encode one header: name length, name, type byte, already-encoded value."""
    encoded = name.encode("utf-8")
    return bytes([len(encoded)]) + encoded + bytes([type_code]) + value


def string_header(name: str, value: str) -> bytes:
    data = value.encode("utf-8")
    return header(name, 7, struct.pack(">H", len(data)) + data)


def frame(headers: bytes, payload: bytes) -> bytes:
    """Wrap an encoded header block and a payload into one message with both CRCs."""
    total = 16 + len(headers) + len(payload)
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: dict[str, Any], padding: str = "abcdefghijkl") -> bytes:
    """A Bedrock event message with its JSON payload and the random-length ``p`` padding field."""
    headers = (
        string_header(":event-type", event_type)
        + string_header(":content-type", "application/json")
        + string_header(":message-type", "event")
    )
    document = dict(payload)
    if padding:
        document["p"] = padding
    return frame(headers, json.dumps(document, separators=(",", ":")).encode("utf-8"))


def exception(exception_type: str, message: str) -> bytes:
    """A Bedrock exception message, as sent when a stream fails after the 200."""
    headers = (
        string_header(":exception-type", exception_type)
        + string_header(":content-type", "application/json")
        + string_header(":message-type", "exception")
    )
    return frame(headers, json.dumps({"message": message}).encode("utf-8"))


def chunk(native_event: dict[str, Any], padding: str = "abcdefghij") -> bytes:
    """An InvokeModelWithResponseStream ``chunk`` message carrying one native model event."""
    encoded = base64.b64encode(json.dumps(native_event, separators=(",", ":")).encode("utf-8")).decode("ascii")
    return event("chunk", {"bytes": encoded}, padding)


def all_header_types() -> tuple[bytes, dict[str, Any]]:
    """A header block with one header of every type 0-9, and the values it contains."""
    ident = uuid.UUID("0c2c1b38-3d4e-4a1f-9b27-5f0d0e6a7c11")
    block = (
        header("flag-true", 0)
        + header("flag-false", 1)
        + header("int8", 2, struct.pack(">b", -7))
        + header("int16", 3, struct.pack(">h", -30000))
        + header("int32", 4, struct.pack(">i", 2_000_000_000))
        + header("int64", 5, struct.pack(">q", -9_000_000_000_000))
        + header("bytes", 6, struct.pack(">H", 3) + b"\x00\xff\x10")
        + header("string", 7, struct.pack(">H", 6) + "héllo".encode("utf-8"))
        + header("timestamp", 8, struct.pack(">q", 1_764_850_000_123))
        + header("uuid", 9, ident.bytes)
    )
    values = {
        "flag-true": True,
        "flag-false": False,
        "int8": -7,
        "int16": -30000,
        "int32": 2_000_000_000,
        "int64": -9_000_000_000_000,
        "bytes": b"\x00\xff\x10",
        "string": "héllo",
        "timestamp": 1_764_850_000_123,
        "uuid": ident,
    }
    return block, values
