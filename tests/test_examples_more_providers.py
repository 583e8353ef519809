"""Cohere, Mistral, Hugging Face and Ollama example captures through the real plugin server.

Each HAR in examples/ is replayed by the Kong emulator over the plugin server's Unix
socket, and every token, unknown-usage and request series of the scrape is compared
with the numbers in the captured payloads.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import yaml

from kong_ai_metrics.replay import load_har

from .conftest import EXAMPLES, PluginServer

CONFIG = {"ai_metrics": True, "buffer_streaming_responses": True}

# HAR file -> {(provider, model, token_type): tokens}, from the payloads' own counts.
# Zero counts (embeddings' completion, a cached_tokens of 0) create no series.
EXPECTED_TOKENS: dict[str, dict[tuple[str, str, str], float]] = {
    "cohere.har": {
        # v2 chat 21 + 24 and v2 stream 9 + 3, both billed_units (not usage.tokens).
        ("cohere", "command-a-03-2025", "prompt_tokens"): 30,
        ("cohere", "command-a-03-2025", "completion_tokens"): 27,
        ("cohere", "command-a-03-2025", "total_tokens"): 57,
        # v1 JSON-lines stream, stream-end billed_units 8 + 9 (74 processed input tokens).
        ("cohere", "command-r-08-2024", "prompt_tokens"): 8,
        ("cohere", "command-r-08-2024", "completion_tokens"): 9,
        ("cohere", "command-r-08-2024", "total_tokens"): 17,
        ("cohere", "embed-v4.0", "prompt_tokens"): 2,
        ("cohere", "embed-v4.0", "total_tokens"): 2,
    },
    "mistral.har": {
        ("mistral", "mistral-large-latest", "prompt_tokens"): 16,
        ("mistral", "mistral-large-latest", "completion_tokens"): 34,
        ("mistral", "mistral-large-latest", "total_tokens"): 50,
        # Usage on the last content chunk of the stream.
        ("mistral", "mistral-small-latest", "prompt_tokens"): 13,
        ("mistral", "mistral-small-latest", "completion_tokens"): 28,
        ("mistral", "mistral-small-latest", "total_tokens"): 41,
        ("mistral", "mistral-embed", "prompt_tokens"): 6,
        ("mistral", "mistral-embed", "total_tokens"): 6,
    },
    "huggingface.har": {
        # Serverless text generation: x-prompt-tokens 11, x-generated-tokens 20; model from the URL.
        ("huggingface", "mistralai/Mistral-7B-Instruct-v0.3", "prompt_tokens"): 11,
        ("huggingface", "mistralai/Mistral-7B-Instruct-v0.3", "completion_tokens"): 20,
        ("huggingface", "mistralai/Mistral-7B-Instruct-v0.3", "total_tokens"): 31,
        # TGI /generate_stream, details in the last event; TGI names no model.
        ("huggingface", "", "prompt_tokens"): 14,
        ("huggingface", "", "completion_tokens"): 24,
        ("huggingface", "", "total_tokens"): 38,
        ("huggingface", "meta-llama/Llama-3.1-8B-Instruct", "prompt_tokens"): 43,
        ("huggingface", "meta-llama/Llama-3.1-8B-Instruct", "completion_tokens"): 3,
        ("huggingface", "meta-llama/Llama-3.1-8B-Instruct", "total_tokens"): 46,
    },
    "ollama.har": {
        # /api/chat streamed with no stream field (26 + 282), then /api/generate (31 + 12).
        ("ollama", "llama3.2", "prompt_tokens"): 57,
        ("ollama", "llama3.2", "completion_tokens"): 294,
        ("ollama", "llama3.2", "total_tokens"): 351,
        ("ollama", "all-minilm", "prompt_tokens"): 8,
        ("ollama", "all-minilm", "total_tokens"): 8,
    },
}

# HAR file -> {(provider, model, reason): requests}. Each file contains one error.
EXPECTED_UNKNOWN: dict[str, dict[tuple[str, str, str], float]] = {
    "cohere.har": {("cohere", "command-a-03-2025", "upstream_error"): 1},
    "mistral.har": {("mistral", "mistral-large-latest", "upstream_error"): 1},
    "huggingface.har": {("huggingface", "mistralai/Mistral-7B-Instruct-v0.3", "upstream_error"): 1},
    "ollama.har": {("ollama", "llama3.3", "upstream_error"): 1},
}

EXPECTED_REQUESTS: dict[str, dict[tuple[str, str], float]] = {
    "cohere.har": {("cohere", "command-a-03-2025"): 3, ("cohere", "command-r-08-2024"): 1, ("cohere", "embed-v4.0"): 1},
    "mistral.har": {("mistral", "mistral-large-latest"): 2, ("mistral", "mistral-small-latest"): 1, ("mistral", "mistral-embed"): 1},
    "huggingface.har": {
        ("huggingface", "mistralai/Mistral-7B-Instruct-v0.3"): 2,
        ("huggingface", ""): 1,
        ("huggingface", "meta-llama/Llama-3.1-8B-Instruct"): 1,
    },
    "ollama.har": {("ollama", "llama3.2"): 2, ("ollama", "all-minilm"): 1, ("ollama", "llama3.3"): 1},
}


def replay(har: str, make_worker: Any, config: dict[str, Any]) -> None:
    worker = make_worker(config)
    for capture in load_har(str(EXAMPLES / har)):
        outcome = worker.exchange(capture.request, capture.response)
        assert outcome.access.status == "ok", f"{capture.source}: {outcome.access.error}"
        assert outcome.log.status == "ok", f"{capture.source}: {outcome.log.error}"


def series(server: PluginServer, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """Return every sample of ``name`` keyed by the given labels, with zero samples left out."""
    _, samples = server.scrape()
    found: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample_name, labels), value in samples.items():
        if sample_name == name and value:
            found[tuple(dict(labels)[label] for label in label_names)] += value
    return dict(found)


@pytest.mark.parametrize("har", sorted(EXPECTED_TOKENS))
def test_example_token_series(har: str, plugin_server: PluginServer, make_worker: Any) -> None:
    replay(har, make_worker, CONFIG)
    tokens = series(plugin_server, "kong_ai_llm_tokens_total", "ai_provider", "ai_model", "token_type")
    assert tokens == EXPECTED_TOKENS[har]


@pytest.mark.parametrize("har", sorted(EXPECTED_UNKNOWN))
def test_example_unknown_and_request_series(har: str, plugin_server: PluginServer, make_worker: Any) -> None:
    replay(har, make_worker, CONFIG)
    unknown = series(plugin_server, "kong_ai_llm_usage_unknown_total", "ai_provider", "ai_model", "reason")
    requests = series(plugin_server, "kong_ai_llm_requests_total", "ai_provider", "ai_model")
    assert unknown == EXPECTED_UNKNOWN[har]
    assert requests == EXPECTED_REQUESTS[har]


def test_cohere_cost_from_billed_units(plugin_server: PluginServer, make_worker: Any) -> None:
    with open(EXAMPLES / "config.yaml", encoding="utf-8") as handle:
        priced = yaml.safe_load(handle)
    replay("cohere.har", make_worker, priced)
    cost = series(plugin_server, "kong_ai_llm_cost_total", "ai_provider", "ai_model")
    # Per 1M tokens: command-a 30 x 2.50 + 27 x 10.00, command-r 8 x 0.15 + 9 x 0.60, embed 2 x 0.12.
    assert cost[("cohere", "command-a-03-2025")] == pytest.approx(345e-6)
    assert cost[("cohere", "command-r-08-2024")] == pytest.approx(6.6e-6)
    assert cost[("cohere", "embed-v4.0")] == pytest.approx(0.24e-6)
