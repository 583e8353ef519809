"""Cost from usage and prices: every token billed exactly once."""

from __future__ import annotations

import pytest

from kong_ai_metrics.config import PluginConfig, Price
from kong_ai_metrics.cost import compute_cost
from kong_ai_metrics.usage import Usage

PRICE = Price("m", input_cost=2.5, output_cost=10.0, cached_input_cost=1.25, cache_write_cost=3.125)


def test_openai_cached_tokens_billed_once() -> None:
    split = compute_cost(Usage(prompt_tokens=2006, completion_tokens=300, cached_tokens=1920), PRICE)
    assert split.uncached_input == pytest.approx(86 * 2.5 / 1e6)
    assert split.cached_input == pytest.approx(1920 * 1.25 / 1e6)
    assert split.output == pytest.approx(300 * 10.0 / 1e6)
    assert split.total == pytest.approx((86 * 2.5 + 1920 * 1.25 + 300 * 10.0) / 1e6)


def test_anthropic_cache_reads_and_writes_billed_once() -> None:
    usage = Usage(prompt_tokens=2009, completion_tokens=14, cached_tokens=1800, cache_write_tokens=188)
    split = compute_cost(usage, PRICE)
    assert split.uncached_input == pytest.approx(21 * 2.5 / 1e6)
    assert split.cache_write == pytest.approx(188 * 3.125 / 1e6)
    assert split.cached_input == pytest.approx(1800 * 1.25 / 1e6)


def test_unset_cache_prices_fall_back_to_input() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=40, cache_write_tokens=10)
    assert compute_cost(usage, Price("m", 1.0, 2.0)).total == pytest.approx(100 * 1.0 / 1e6)


def test_subsets_larger_than_prompt_are_clamped() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=0, cached_tokens=50)
    assert compute_cost(usage, PRICE).total == pytest.approx(10 * 1.25 / 1e6)


def test_price_lookup_exact_before_glob() -> None:
    config = PluginConfig.from_kong(
        {"pricing": [{"model": "gpt-4o*", "input_cost": 9, "output_cost": 9}, {"model": "gpt-4o-mini", "input_cost": 1, "output_cost": 2}]}
    )
    assert config.price_for("gpt-4o-mini").input_cost == 1  # type: ignore[union-attr]
    assert config.price_for("gpt-4o-2024-08-06").input_cost == 9  # type: ignore[union-attr]
    assert config.price_for("claude-3") is None


def test_price_lookup_falls_back_to_response_model() -> None:
    config = PluginConfig.from_kong({"pricing": [{"model": "gpt-4o-2024-11-20", "input_cost": 2.5, "output_cost": 10}]})
    assert config.price_for("team-chat-01", "gpt-4o-2024-11-20") is not None
