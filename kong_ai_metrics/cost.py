"""Cost of one exchange from its usage and the configured price.

Prices are per 1M tokens, as in Kong's ai-proxy. Each prompt token is billed once:
uncached tokens at ``input_cost``, cache reads at ``cached_input_cost`` and cache
writes at ``cache_write_cost`` (both falling back to ``input_cost``); completion
tokens, reasoning included, at ``output_cost``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Price
from .usage import Usage


@dataclass(frozen=True)
class CostSplit:
    uncached_input: float
    cached_input: float
    cache_write: float
    output: float

    @property
    def total(self) -> float:
        return self.uncached_input + self.cached_input + self.cache_write + self.output


def compute_cost(usage: Usage, price: Price) -> CostSplit:
    """Price a usage record; unknown counts are priced as nothing."""
    prompt = usage.prompt_tokens or 0
    cached = min(usage.cached_tokens or 0, prompt)
    cache_write = min(usage.cache_write_tokens or 0, prompt - cached)
    uncached = prompt - cached - cache_write
    completion = usage.completion_tokens or 0

    cached_price = price.cached_input_cost if price.cached_input_cost is not None else price.input_cost
    write_price = price.cache_write_cost if price.cache_write_cost is not None else price.input_cost
    return CostSplit(
        uncached_input=uncached * price.input_cost / 1e6,
        cached_input=cached * cached_price / 1e6,
        cache_write=cache_write * write_price / 1e6,
        output=completion * price.output_cost / 1e6,
    )
