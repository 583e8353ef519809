"""Bounds on label values that clients and upstreams choose.

The model name comes from the request body or from the upstream's response, so one client
can send a new name on every request. Each new name adds a set of series to every
Prometheus server that scrapes the plugin. Label values are therefore cut to
``MAX_LABEL_BYTES`` bytes of UTF-8, and the number of distinct model values per process
is capped: once the cap is reached, new names are recorded as ``OTHER_MODEL``.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterable

MAX_LABEL_BYTES = 128
OTHER_MODEL = "other"
DEFAULT_MAX_MODELS = 100

# Reasons for recording a model as OTHER_MODEL: the `reason` label of the collapse counter.
COLLAPSED_MAX_MODELS = "max_models"
COLLAPSED_NOT_ALLOWED = "not_allowed"


def bound_label(value: str) -> str:
    """Return ``value`` cut to at most ``MAX_LABEL_BYTES`` bytes of UTF-8, never inside a character.

    Characters that UTF-8 cannot encode (lone surrogates) become ``?``: a label value
    that cannot be encoded would make every later scrape fail.
    """
    if len(value) <= MAX_LABEL_BYTES and value.isascii():
        return value
    encoded = value.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_LABEL_BYTES:
        return encoded.decode("utf-8")
    # The encoded text is valid UTF-8, so only the last character can be cut in half;
    # "ignore" drops exactly that partial character.
    return encoded[:MAX_LABEL_BYTES].decode("utf-8", errors="ignore")


def model_allowed(model: str, patterns: Iterable[str]) -> bool:
    """Return True when ``model`` matches one of ``patterns`` (exact names or shell-style globs)."""
    for pattern in patterns:
        if model == pattern or fnmatch.fnmatchcase(model, pattern):
            return True
    return False


class ModelLimit:
    """The set of distinct model label values admitted in this process, at most ``max_models``.

    The empty value (no model known) and ``OTHER_MODEL`` are always admitted and do not
    count towards the limit. Safe to call from several threads.
    """

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, model: str) -> bool:
        """Return True when ``model`` may be a label value of its own; admit it if there is room."""
        if model in self._admitted or model == "" or model == OTHER_MODEL:
            return True
        with self._lock:
            if model in self._admitted:
                return True
            if len(self._admitted) >= self.max_models:
                return False
            self._admitted.add(model)
            return True

    def __len__(self) -> int:
        return len(self._admitted)
