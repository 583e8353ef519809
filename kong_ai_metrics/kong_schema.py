"""Validation of a plugin config against a schema in Kong's schema language, as Kong does it.

Kong itself cannot run here, so the replay command, the Kong emulator and the tests use
this to turn a user's plugin ``config`` into what Kong would send in StartInstance:
defaults applied, unset optional fields as null, unknown fields rejected. It covers the
part of ``kong/db/schema/init.lua`` that this plugin's schema uses (scalar types,
arrays, records, ``required``, ``default``, ``between``, ``one_of``, ``len_min``,
``len_max``); other validators are rejected as unsupported rather than ignored.
"""

from __future__ import annotations

import copy
import math
from typing import Any

_SUPPORTED_ATTRIBUTES = {
    "type",
    "required",
    "default",
    "description",
    "between",
    "one_of",
    "len_min",
    "len_max",
    "elements",
    "fields",
}


class ConfigError(ValueError):
    """The config does not validate; ``errors`` maps field paths to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        details = "; ".join(f"{path}: {message}" for path, message in sorted(errors.items()))
        super().__init__(f"invalid plugin config: {details}")


def validate_config(fields: list[dict[str, Any]], config: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``config`` validated against the record ``fields``, with defaults applied.

    Raises ConfigError naming every invalid field.
    """
    errors: dict[str, str] = {}
    result = _record(fields, config if config is not None else {}, "config", errors)
    if errors or not isinstance(result, dict):
        raise ConfigError(errors or {"config": "expected a record"})
    return result


def _record(fields: list[dict[str, Any]], value: Any, path: str, errors: dict[str, str]) -> Any:
    if not isinstance(value, dict):
        errors[path] = "expected a record"
        return None
    known = set()
    out: dict[str, Any] = {}
    for entry in fields:
        ((name, definition),) = entry.items()
        known.add(name)
        out[name] = _field(definition, value.get(name), f"{path}.{name}", errors)
    for name in value:
        if name not in known:
            errors[f"{path}.{name}"] = "unknown field"
    return out


def _field(definition: dict[str, Any], value: Any, path: str, errors: dict[str, str]) -> Any:
    unsupported = set(definition) - _SUPPORTED_ATTRIBUTES
    if unsupported:
        errors[path] = f"schema uses unsupported attributes {sorted(unsupported)}"
        return None
    kind = definition["type"]
    if value is None:
        if "default" in definition:
            return copy.deepcopy(definition["default"])
        # Inside a plugin config Kong makes record fields required unless they set
        # required = false, and expands an absent one with its own defaults.
        if kind == "record" and definition.get("required", True) is not False:
            value = {}
        elif definition.get("required") is True:
            errors[path] = "required field missing"
            return None
        else:
            return None

    if kind == "boolean":
        if not isinstance(value, bool):
            errors[path] = "expected a boolean"
        return value
    if kind in ("integer", "number"):
        return _number(definition, value, path, errors)
    if kind == "string":
        return _string(definition, value, path, errors)
    if kind in ("array", "set"):
        if not isinstance(value, list):
            errors[path] = "expected an array"
            return None
        return [_field(definition["elements"], item, f"{path}[{index + 1}]", errors) for index, item in enumerate(value)]
    if kind == "record":
        return _record(definition["fields"], value, path, errors)
    errors[path] = f"unsupported type {kind!r}"
    return None


def _number(definition: dict[str, Any], value: Any, path: str, errors: dict[str, str]) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        errors[path] = f"expected a {definition['type']}"
        return value
    if definition["type"] == "integer" and value != int(value):
        errors[path] = "expected an integer"
        return value
    if "between" in definition:
        low, high = definition["between"]
        if not low <= value <= high:
            errors[path] = f"value should be between {low} and {high}"
    if "one_of" in definition and value not in definition["one_of"]:
        errors[path] = f"expected one of: {', '.join(map(str, definition['one_of']))}"
    return value


def _string(definition: dict[str, Any], value: Any, path: str, errors: dict[str, str]) -> Any:
    if not isinstance(value, str):
        errors[path] = "expected a string"
        return value
    # Kong rejects empty strings unless the field allows them with len_min = 0.
    if len(value) < definition.get("len_min", 1):
        errors[path] = "length must be at least " + str(definition.get("len_min", 1))
    elif "len_max" in definition and len(value) > definition["len_max"]:
        errors[path] = f"length must be at most {definition['len_max']}"
    elif "one_of" in definition and value not in definition["one_of"]:
        errors[path] = f"expected one of: {', '.join(definition['one_of'])}"
    return value
