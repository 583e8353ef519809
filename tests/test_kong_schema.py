"""Plugin config validation as Kong applies it."""

from __future__ import annotations

import pytest

from kong_ai_metrics.config import SCHEMA
from kong_ai_metrics.kong_schema import ConfigError, validate_config


def test_defaults_applied_and_unset_fields_null() -> None:
    config = validate_config(SCHEMA, {})
    assert config == {
        "ai_metrics": False,
        "pricing": [],
        "provider": None,
        "model": None,
        "buffer_streaming_responses": False,
        "max_body_size": 10 * 1024 * 1024,
        "allowed_models": [],
    }


def test_pricing_entry_optional_prices_null() -> None:
    config = validate_config(SCHEMA, {"pricing": [{"model": "gpt-4o", "input_cost": 2.5, "output_cost": 10}]})
    assert config["pricing"] == [{"model": "gpt-4o", "input_cost": 2.5, "output_cost": 10, "cached_input_cost": None, "cache_write_cost": None}]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"ai_metrics": "yes"}, "config.ai_metrics"),
        ({"provider": "openia"}, "config.provider"),
        ({"max_body_size": 10}, "config.max_body_size"),
        ({"pricing": [{"model": "gpt-4o", "output_cost": 1}]}, "config.pricing[1].input_cost"),
        ({"pricing": [{"model": "", "input_cost": 1, "output_cost": 1}]}, "config.pricing[1].model"),
        ({"unknown_field": 1}, "config.unknown_field"),
    ],
)
def test_invalid_config_names_field(config: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(SCHEMA, config)
    assert path in error.value.errors
