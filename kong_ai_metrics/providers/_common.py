"""Helpers shared by the provider parsers: defensive lookups into decoded JSON."""

from __future__ import annotations

from typing import Any

from ..usage import token_count


def dig(value: Any, *keys: str) -> Any:
    """Return ``value[k1][k2]...``, or None as soon as a level is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def count_at(value: Any, *keys: str) -> int | None:
    """Return the token count at ``keys`` inside ``value``, or None when absent or invalid."""
    return token_count(dig(value, *keys))


def text_at(value: Any, *keys: str) -> str | None:
    """Return the non-empty string at ``keys`` inside ``value``, or None."""
    found = dig(value, *keys)
    if isinstance(found, str) and found:
        return found
    return None
