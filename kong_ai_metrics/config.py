"""The plugin's configuration: the schema Kong validates, and its typed form.

``SCHEMA`` is written in Kong's schema language (see ``kong/db/schema/metaschema.lua``):
a list of single-key field definitions that kong-pdk wraps into the ``config`` record.
Kong validates every plugin entity against it and sends the validated values, with
defaults applied, in ``StartInstance``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from .detect import PROVIDERS
from .labels import model_allowed

DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
# msgpack-python refuses messages above 100 MiB by default, so a larger body could
# never arrive from Kong in one piece.
MAX_BODY_SIZE_LIMIT = 100 * 1024 * 1024

_PRICE = {"type": "number", "between": [0, 1_000_000]}

SCHEMA: list[dict[str, Any]] = [
    {
        "ai_metrics": {
            "type": "boolean",
            "default": False,
            "description": (
                "Read LLM request and response payloads to count tokens and cost. When false, "
                "the plugin reads no payloads, turns on no buffering, and only records exchanges "
                "for which Kong's ai-proxy logged its own statistics."
            ),
        }
    },
    {
        "pricing": {
            "type": "array",
            "default": [],
            "description": (
                "Prices per model, in currency units per 1M tokens. The first entry whose model "
                "matches (exact name first, then shell-style glob in list order) prices the exchange."
            ),
            "elements": {
                "type": "record",
                "fields": [
                    {
                        "model": {
                            "type": "string",
                            "required": True,
                            "description": "Model name to price, exactly or as a shell-style glob such as gpt-4o*.",
                        }
                    },
                    {
                        "input_cost": dict(
                            _PRICE,
                            required=True,
                            description="Price of 1M uncached prompt tokens.",
                        )
                    },
                    {
                        "output_cost": dict(
                            _PRICE,
                            required=True,
                            description="Price of 1M completion tokens, reasoning tokens included.",
                        )
                    },
                    {
                        "cached_input_cost": dict(
                            _PRICE,
                            required=False,
                            description="Price of 1M prompt tokens read from the provider's cache; input_cost when unset.",
                        )
                    },
                    {
                        "cache_write_cost": dict(
                            _PRICE,
                            required=False,
                            description="Price of 1M prompt tokens written to the provider's cache; input_cost when unset.",
                        )
                    },
                ],
            },
        }
    },
    {
        "provider": {
            "type": "string",
            "required": False,
            "one_of": list(PROVIDERS),
            "description": (
                "Provider of the upstream, for Services whose host does not identify it. When unset, "
                "the provider is recognised from the Service host and the upstream path."
            ),
        }
    },
    {
        "model": {
            "type": "string",
            "required": False,
            "len_max": 128,
            "description": "Model label to use when neither the request nor the response names a model.",
        }
    },
    {
        "buffer_streaming_responses": {
            "type": "boolean",
            "default": False,
            "description": (
                "Buffer streamed responses so their usage can be read. Buffering keeps the whole stream "
                "back from the client until it ends, so streamed usage is unknown when this is false."
            ),
        }
    },
    {
        "max_body_size": {
            "type": "integer",
            "default": DEFAULT_MAX_BODY_SIZE,
            "between": [1024, MAX_BODY_SIZE_LIMIT],
            "description": (
                "Largest request or response body, in bytes after decompression, that the plugin "
                "parses. Larger bodies count as requests with unknown usage."
            ),
        }
    },
    {
        "allowed_models": {
            "type": "array",
            "default": [],
            "elements": {"type": "string", "len_max": 128},
            "description": (
                "Model names, exact or shell-style globs such as gpt-4o*, that get an ai_model label "
                "value of their own; other models are recorded as ai_model=\"other\". When empty, every "
                "model gets its own value until the plugin server's --max-models limit is reached."
            ),
        }
    },
]


@dataclass(frozen=True)
class Price:
    model: str
    input_cost: float
    output_cost: float
    cached_input_cost: float | None = None
    cache_write_cost: float | None = None


@dataclass(frozen=True)
class PluginConfig:
    ai_metrics: bool = False
    pricing: tuple[Price, ...] = field(default_factory=tuple)
    provider: str | None = None
    model: str | None = None
    buffer_streaming_responses: bool = False
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    allowed_models: tuple[str, ...] = ()

    @classmethod
    def from_kong(cls, conf: dict[str, Any]) -> PluginConfig:
        """Build the config from the dict Kong sends in StartInstance.

        Kong has already validated the values, so this only tolerates what Kong adds
        (``__seq__`` and other internal keys, ``null`` for unset fields).
        """
        prices = []
        for entry in conf.get("pricing") or ():
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
                continue
            prices.append(
                Price(
                    model=entry["model"],
                    input_cost=float(entry.get("input_cost") or 0),
                    output_cost=float(entry.get("output_cost") or 0),
                    cached_input_cost=_optional_float(entry.get("cached_input_cost")),
                    cache_write_cost=_optional_float(entry.get("cache_write_cost")),
                )
            )
        max_body_size = conf.get("max_body_size")
        allowed = conf.get("allowed_models")
        return cls(
            ai_metrics=conf.get("ai_metrics") is True,
            pricing=tuple(prices),
            provider=conf.get("provider") or None,
            model=conf.get("model") or None,
            buffer_streaming_responses=conf.get("buffer_streaming_responses") is True,
            max_body_size=max_body_size if isinstance(max_body_size, int) else DEFAULT_MAX_BODY_SIZE,
            allowed_models=tuple(m for m in allowed if isinstance(m, str) and m) if isinstance(allowed, list) else (),
        )

    def allows_model(self, model: str) -> bool:
        """Return True when ``model`` may be a label value of its own under ``allowed_models``.

        An empty list allows every model, and so does an empty model name (nothing to hide).
        """
        if not self.allowed_models or not model:
            return True
        return model_allowed(model, self.allowed_models)

    def price_for(self, *models: str | None) -> Price | None:
        """Return the price of the first of ``models`` that the pricing list matches."""
        for model in models:
            if not model:
                continue
            for price in self.pricing:
                if price.model == model:
                    return price
            for price in self.pricing:
                if fnmatch.fnmatchcase(model, price.model):
                    return price
        return None


def _optional_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
